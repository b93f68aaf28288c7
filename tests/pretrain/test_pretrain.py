import json

import pytest

from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Generator
from llmlab.load import load_checkpoint
from llmlab.pretrain.config import TrainConfig
from llmlab.pretrain.recipe import train
from llmlab.training.schedule import learning_rate

TEXT = "To be, or not to be, that is the question.\n"


def tiny_run(tmp_path, name="run", **overrides) -> TrainConfig:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        corpus.write_text(TEXT * 200)
    fields = dict(
        out=str(tmp_path / name),
        data=str(corpus),
        tokenizer="char",
        preset="llama-nano",
        n_layer=2,
        n_embd=64,
        n_head=4,
        n_kv_head=2,
        block_size=32,
        batch_size=8,
        lr=3e-3,
        warmup_steps=10,
        max_steps=20,
        eval_interval=10,
        eval_iters=2,
        log_interval=5,
        dtype="fp32",
        device="cpu",
    )
    fields.update(overrides)
    return TrainConfig(**fields)


def test_training_drives_the_loss_near_zero_and_the_model_recites(tmp_path):
    result = train(tiny_run(tmp_path, max_steps=150, block_size=64), log=lambda s: None)
    assert result.train_losses[1] > 2.5  # ~ln(vocabulary) at the start
    # Near zero: only the first characters of a window are uncertain (which of the line's "t"s is it?)
    assert sum(result.train_losses[s] for s in range(141, 151)) / 10 < 0.05
    assert result.best_val_loss < 0.05
    ckpt = load_checkpoint(result.out)
    out = Generator(ckpt.model, ckpt.tokenizer).generate(
        ["To be, or "], GenerationConfig(greedy=True, max_new_tokens=20)
    )
    assert out[0][0].text == "not to be, that is t"
    records = [json.loads(line) for line in (result.out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "val_loss" in r] == list(range(10, 151, 10))
    assert (result.out / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    "optimizer,preset", [("adamw", "llama-nano"), ("muon", "llama-nano"), ("adamw", "bert-nano"), ("adamw", "t5-nano")]
)
def test_interrupted_and_resumed_run_reproduces_the_uninterrupted_losses(tmp_path, optimizer, preset):
    # dropout and accumulation exercise RNG and data order; Muon adds a second optimizer's state;
    # BERT's masking and T5's span corruption draw their own random numbers
    config = dict(dropout=0.1, grad_accum=2, optimizer=optimizer, preset=preset)
    full = train(tiny_run(tmp_path, "full", **config), log=lambda s: None)

    def interrupt(step, loss):
        if step == 9:
            raise KeyboardInterrupt

    first = train(tiny_run(tmp_path, "split", **config), on_step=interrupt, log=lambda s: None)
    assert first.interrupted and first.step == 9
    second = train(tiny_run(tmp_path, "split", resume=True, **config), log=lambda s: None)
    assert second.step == 20
    assert sorted(second.train_losses) == list(range(10, 21))  # it went on from step 9, not from scratch
    resumed = {**first.train_losses, **second.train_losses}
    assert resumed == full.train_losses  # exactly equal, not approximately
    steps = [json.loads(line)["step"] for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)


def test_resume_with_a_changed_model_is_refused(tmp_path):
    train(tiny_run(tmp_path, max_steps=2), log=lambda s: None)
    with pytest.raises(LlmlabError, match="changed model config.*n_embd: 64 -> 32"):
        train(tiny_run(tmp_path, max_steps=4, resume=True, n_embd=32), log=lambda s: None)


def test_an_existing_checkpoint_is_not_overwritten_by_accident(tmp_path):
    train(tiny_run(tmp_path, max_steps=2), log=lambda s: None)
    with pytest.raises(LlmlabError, match="already holds a checkpoint"):
        train(tiny_run(tmp_path, max_steps=2), log=lambda s: None)
    train(tiny_run(tmp_path, max_steps=2, overwrite=True), log=lambda s: None)


def test_bf16_autocast_trains(tmp_path):
    result = train(tiny_run(tmp_path, max_steps=30, dtype="bf16"), log=lambda s: None)
    assert result.train_losses[30] < result.train_losses[1] - 1.0


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_min_lr():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, max_steps=110)
    assert learning_rate(cfg, 0, 0) == pytest.approx(1e-4)
    assert learning_rate(cfg, 9, 0) == pytest.approx(1e-3)
    assert learning_rate(cfg, 60, 0) == pytest.approx(5.5e-4)
    assert learning_rate(cfg, 110, 0) == pytest.approx(1e-4)
    timed = TrainConfig(lr=1e-3, min_lr=0.0, warmup_steps=0, max_time=100)
    assert learning_rate(timed, 5, 50.0) == pytest.approx(5e-4)


def test_too_little_data_for_one_window_is_refused(tmp_path):
    (tmp_path / "corpus.txt").write_text("tiny")
    with pytest.raises(LlmlabError, match="fewer than one window"):
        train(tiny_run(tmp_path), log=lambda s: None)


def test_muon_takes_the_blocks_matrices_and_adamw_the_rest():
    import torch

    from llmlab.training.optim import make_optimizers
    from tests.helpers import tiny_model

    model = tiny_model("llama")
    adamw, muon = make_optimizers(model, TrainConfig(optimizer="muon"), torch.device("cpu"))
    muon_ids = {id(p) for g in muon.param_groups for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in muon_ids}
    assert names == {n for n, p in model.named_parameters() if ".blocks." in f".{n}" and p.dim() == 2}
    adamw_ids = {id(p) for g in adamw.param_groups for p in g["params"]}
    assert id(model.embed.weight) in adamw_ids and not muon_ids & adamw_ids
    assert len(make_optimizers(model, TrainConfig(), torch.device("cpu"))) == 1


def test_bf16_autocast_follows_the_fp32_loss_curve(tmp_path):
    fp32 = train(tiny_run(tmp_path, "fp32", max_steps=40, dtype="fp32"), log=lambda s: None)
    bf16 = train(tiny_run(tmp_path, "bf16", max_steps=40, dtype="bf16"), log=lambda s: None)
    gaps = [abs(fp32.train_losses[s] - bf16.train_losses[s]) for s in range(1, 41)]
    assert max(gaps) < 0.1, gaps
    assert bf16.train_losses[40] < fp32.train_losses[1] - 1.5  # and it learned


def test_seq2seq_training_can_start_from_a_span_pretrained_checkpoint(tmp_path):
    import torch

    pretrained = train(tiny_run(tmp_path, "span", preset="t5-nano", max_steps=5), log=lambda s: None)
    pairs = tmp_path / "pairs.jsonl"
    pairs.write_text("".join(json.dumps({"q": w, "a": w.upper()}) + "\n" for w in TEXT.split() * 10))
    tuned = train(
        tiny_run(
            tmp_path,
            "tuned",
            preset=None,
            family="encoder-decoder",
            objective="seq2seq",
            init=str(pretrained.out),
            data=str(pairs),
            input_field="q",
            target_field="a",
            lr=1e-12,
            warmup_steps=0,
            max_steps=1,
        ),
        log=lambda s: None,
    )
    before, after = load_checkpoint(pretrained.out), load_checkpoint(tuned.out)
    assert after.tokenizer.to_json() == before.tokenizer.to_json()  # the checkpoint's tokenizer, not a new one
    for (name, a), b in zip(before.model.state_dict().items(), after.model.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), name  # started from the pre-trained weights
    with pytest.raises(LlmlabError, match="of family encoder-decoder, not encoder"):
        train(tiny_run(tmp_path, "bad", preset=None, family="encoder", init=str(pretrained.out)), log=lambda s: None)


def test_overflowing_fp16_gradients_skip_the_step_and_are_counted():
    """What fp16 training on a GPU relies on, exercised with the CPU's GradScaler."""
    import torch

    from llmlab.training.optim import optimizer_step

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    before = model.weight.detach().clone()
    scaler.scale(model(torch.ones(1, 4)).sum()).backward()
    model.weight.grad[0, 0] = float("inf")  # an fp16 overflow
    assert optimizer_step(model, [optimizer], scaler, grad_clip=1.0) is True
    assert torch.equal(model.weight, before) and scaler.get_scale() == 512.0  # untouched, scale halved
    scaler.scale(model(torch.ones(1, 4)).sum()).backward()
    assert optimizer_step(model, [optimizer], scaler, grad_clip=1.0) is False
    assert not torch.equal(model.weight, before) and model.weight.grad is None
    disabled = torch.amp.GradScaler("cpu", enabled=False)  # fp32/bf16 runs never count a skip
    model(torch.ones(1, 4)).sum().backward()
    assert optimizer_step(model, [optimizer], disabled, grad_clip=1.0) is False


def test_a_second_run_on_the_same_folder_is_refused_until_the_first_dies(tmp_path, capsys):
    """Two runs writing one --out would interleave checkpoints: the second is refused while the first
    holds the folder, and a killed first run (kill -9) does not leave the folder locked."""
    import signal

    from tests.helpers import assert_one_line_error, run_cli, start_llmlab

    config = tiny_run(tmp_path, max_steps=100000, log_interval=1)
    options = [f"--{k.replace('_', '-')}={v}" for k, v in config.to_dict().items() if v not in (None, False, [])]
    with start_llmlab("pretrain", *options, until="step 2") as first:
        code, _, err = run_cli(capsys, "pretrain", *options, "--overwrite")
        assert_one_line_error(code, err, "in use by another run", f"pid {first.pid}")
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=60)
    code, _, err = run_cli(capsys, "pretrain", *[o for o in options if "max-steps" not in o], "--max-steps=2",
                           "--overwrite")  # fmt: skip
    assert code == 0, err


def test_a_second_ctrl_c_aborts_without_saving(tmp_path):
    """The first Ctrl-C asks for a save after the step; a second one stops at once and saves nothing
    (it may land inside optimizer.step(), with the weights half-updated)."""
    import os
    import signal

    from llmlab.training.stop import AbortRequested

    def press_twice(step: int, loss: float) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(AbortRequested):
        train(tiny_run(tmp_path, checkpoint_interval=1000), on_step=press_twice, log=lambda s: None)
    assert not (tmp_path / "run" / "config.json").exists()


def test_one_ctrl_c_saves_at_the_end_of_the_step(tmp_path):
    import os
    import signal

    def press_once(step: int, loss: float) -> None:
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    result = train(tiny_run(tmp_path), on_step=press_once, log=lambda s: None)
    assert result.interrupted and result.step == 3
    assert json.loads((tmp_path / "run" / "trainer_state.json").read_text())["step"] == 3


def test_n_layer_sizes_both_stacks_of_an_encoder_decoder_unless_the_decoder_is_given():
    from llmlab.pretrain.config import PretrainConfig
    from llmlab.pretrain.recipe import build_model_config
    from llmlab.tokenizer import train_tokenizer

    tok = train_tokenizer(["span corruption " * 20], kind="char", family="encoder-decoder")
    both = build_model_config(PretrainConfig(family="encoder-decoder", preset="t5-nano", n_layer=2), tok)
    assert (both.n_layer, both.n_decoder_layer) == (2, 2)
    apart = build_model_config(PretrainConfig(family="encoder-decoder", n_layer=2, n_decoder_layer=1), tok)
    assert (apart.n_layer, apart.n_decoder_layer) == (2, 1)
    preset = build_model_config(PretrainConfig(family="encoder-decoder", preset="t5-nano"), tok)
    assert (preset.n_layer, preset.n_decoder_layer) == (3, 3)
