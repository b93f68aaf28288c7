"""Pruning: the masks keep what each criterion ranks highest (by hand on small matrices), 2:4 leaves two of
every four, wanda weighs by the input norms it measures, `llmlab prune` writes a checkpoint with the stated
sparsity inside the blocks only, and bad settings are one line."""

from __future__ import annotations

import copy

import pytest
import torch

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.errors import LlmlabError
from llmlab.load import load_checkpoint
from llmlab.model.surgery import find_linears, linears_in_blocks
from llmlab.prune.masks import keep_mask, scores
from llmlab.prune.prune import input_norms, prune_model
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model


def test_masks_keep_what_each_criterion_ranks_highest():
    weight = torch.tensor([[0.1, -4.0, 0.3, 2.0], [5.0, 0.2, -0.05, 1.0]])
    magnitude = keep_mask(scores(weight, "magnitude", None), 0.5, "magnitude", "unstructured")
    assert magnitude.tolist() == [[False, True, False, True], [True, False, False, True]]  # the 4 largest |w|
    norms = torch.tensor([10.0, 0.01, 10.0, 1.0])  # a small weight on a large input matters
    wanda = keep_mask(scores(weight, "wanda", norms), 0.5, "wanda", "unstructured")
    assert wanda.tolist() == [[False, False, True, True], [True, False, False, True]]  # 2 per row: 1.0 0.04 3 2
    two_four = keep_mask(scores(weight, "magnitude", None), 0.5, "magnitude", "2:4")
    assert two_four.tolist() == [[False, True, False, True], [True, False, False, True]]  # the 2 largest of 4
    with pytest.raises(LlmlabError, match="multiple of 4"):
        keep_mask(torch.ones(2, 6), 0.5, "magnitude", "2:4", "blocks.0.mlp")


def test_pruning_touches_only_the_blocks_and_wanda_reads_its_inputs():
    model = tiny_model("llama", vocab_size=64, block_size=32)
    outside = {k: v.clone() for k, v in model.state_dict().items() if ".blocks." not in f".{k}" or "norm" in k}
    assert "embed.weight" in outside
    batches = [torch.randint(0, 64, (2, 16))]
    norms = input_norms(model, batches)
    assert norms and all(n.ndim == 1 and (n > 0).all() for n in norms.values())
    report = prune_model(model, 0.6, "wanda", "unstructured", norms)
    assert abs(report.sparsity - 0.6) < 0.01
    for _, _, _, linear in find_linears(model, linears_in_blocks):
        assert abs(float((linear.weight == 0).float().mean()) - 0.6) < 0.02
    for key, value in outside.items():  # embeddings, head and norms as they were
        assert torch.equal(model.state_dict()[key], value), key
    with pytest.raises(LlmlabError, match="outside"):
        prune_model(model, 1.0)


def test_prune_command_and_its_report(tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    save_checkpoint(tmp_path / "ckpt", tiny_model("llama", vocab_size=tok.vocab_size, block_size=32), tok)
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT * 3)
    code, out, err = run_cli(capsys, "prune", tmp_path / "ckpt", tmp_path / "pruned", "--sparsity", 0.5, "--method",
                             "wanda", "--structure", "2:4", "--calibration", text)  # fmt: skip
    assert code == 0, err
    assert "(50.0%)" in out
    pruned = load_checkpoint(str(tmp_path / "pruned")).model
    for _, _, _, linear in find_linears(pruned, linears_in_blocks):
        groups = (linear.weight != 0).reshape(linear.weight.shape[0], -1, 4).sum(-1)
        assert (groups <= 2).all()
    code, out, err = run_cli(capsys, "prune", tmp_path / "ckpt", tmp_path / "rep", "--report", "--data", text,
                             "--calibration", text)  # fmt: skip
    assert code == 0, err
    assert "magnitude" in out and "wanda" in out and (tmp_path / "rep" / "report.json").exists()
    code, _, err = run_cli(capsys, "prune", tmp_path / "ckpt", tmp_path / "x", "--sparsity", 1.5)
    assert_one_line_error(code, err, "outside [0, 1)")
    code, _, err = run_cli(capsys, "prune", tmp_path / "ckpt", tmp_path / "x", "--method", "wanda")
    assert_one_line_error(code, err, "needs calibration text")
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("style", ["llama", "gpt2"])
def test_channel_pruning_equals_zeroing_those_channels_and_shrinks_the_model(style):
    """The smaller model computes exactly what the original computes with the dropped channels' down-weights zeroed."""
    from llmlab.model.layers import FeedForward
    from llmlab.prune.channels import channel_scores, prune_channels

    model = tiny_model(style, vocab_size=64, block_size=32)
    reference = copy.deepcopy(model)
    width = model.config.intermediate_size
    keep = width - int(width * 0.5)
    with torch.no_grad():
        for mlp in [m for m in reference.modules() if isinstance(m, FeedForward)]:
            dropped = channel_scores(mlp, "magnitude", None).topk(width - keep, largest=False).indices
            mlp.down.weight[:, dropped] = 0
    before = sum(p.numel() for p in model.parameters())
    assert prune_channels(model, 0.5, "magnitude") == (width, keep)
    assert model.config.intermediate_size == keep and sum(p.numel() for p in model.parameters()) < before
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-5, atol=1e-5)


def test_a_channel_pruned_checkpoint_loads_with_its_new_width(tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    save_checkpoint(tmp_path / "ckpt", tiny_model("llama", vocab_size=tok.vocab_size, block_size=32), tok)
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT * 3)
    code, out, err = run_cli(capsys, "prune", tmp_path / "ckpt", tmp_path / "small", "--structure", "channels",
                             "--method", "wanda", "--calibration", text, "--sparsity", 0.25)  # fmt: skip
    assert code == 0, err
    original = load_checkpoint(str(tmp_path / "ckpt")).model.config.intermediate_size
    small = load_checkpoint(str(tmp_path / "small")).model
    assert small.config.intermediate_size == original - int(original * 0.25) and "feed-forward width" in out
    code, out, _ = run_cli(capsys, "generate", tmp_path / "small", "--prompt", "def", "--max-new-tokens", 4, "--greedy")
    assert code == 0


@pytest.mark.parametrize(("style", "kv_heads"), [("gpt2", 4), ("llama", 2), ("bert", 4)])
def test_head_pruning_equals_silencing_those_heads_and_shrinks_the_model(style, kv_heads):
    """The smaller model computes exactly what the original computes with the dropped heads' outputs zeroed
    (their columns of `proj`); under grouped-query attention whole key/value groups go."""
    from llmlab.model.layers import SelfAttention
    from llmlab.prune.heads import _group_rows, group_scores, prune_heads

    model = tiny_model(style, vocab_size=64, block_size=32, n_kv_head=kv_heads)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for attn in [m for m in reference.modules() if isinstance(m, SelfAttention)]:
            dropped = group_scores(attn, "magnitude", None).topk(kv_heads // 2, largest=False).indices
            attn.proj.weight[:, _group_rows(attn, dropped)[1]] = 0
    before = sum(p.numel() for p in model.parameters())
    assert prune_heads(model, 0.5, "magnitude") == (4, 2)
    assert (model.config.n_head, model.config.n_kv_head, model.config.head_dim) == (2, kv_heads // 2, 8)
    assert sum(p.numel() for p in model.parameters()) < before
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(ids), reference(ids), rtol=1e-5, atol=1e-5)


def test_wanda_heads_follow_the_attention_outputs(tmp_path, capsys):
    """Wanda ranks a group by |proj| x its outputs' norms: a head whose output is scaled up is kept."""
    from llmlab.model.layers import SelfAttention
    from llmlab.prune.heads import _group_rows, group_scores

    model = tiny_model("gpt2", vocab_size=64, block_size=32)
    attn = next(m for m in model.modules() if isinstance(m, SelfAttention))
    weak = group_scores(attn, "magnitude", None).argmin()
    norms = torch.ones(attn.n_head * attn.head_dim)
    norms[_group_rows(attn, weak.view(1))[1]] = 1000.0
    assert group_scores(attn, "wanda", norms).argmax() == weak
    with pytest.raises(LlmlabError, match="needs the attention outputs"):
        group_scores(attn, "wanda", None)


def test_a_head_pruned_checkpoint_loads_and_generates(tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT], kind="bpe", vocab_size=300, family="decoder")
    save_checkpoint(tmp_path / "ckpt", tiny_model("llama", vocab_size=tok.vocab_size, block_size=32), tok)
    text = tmp_path / "text.txt"
    text.write_text(SAMPLE_TEXT * 3)
    code, out, err = run_cli(capsys, "prune", tmp_path / "ckpt", tmp_path / "small", "--structure", "heads",
                             "--method", "wanda", "--calibration", text, "--sparsity", 0.5)  # fmt: skip
    assert code == 0, err
    small = load_checkpoint(str(tmp_path / "small")).model
    assert (small.config.n_head, small.config.head_dim) == (2, 8) and "2 attention heads" in out
    code, _, err = run_cli(capsys, "generate", tmp_path / "small", "--prompt", "def", "--max-new-tokens", 4, "--greedy")
    assert code == 0, err
    save_checkpoint(tmp_path / "t5", tiny_model("t5", vocab_size=tok.vocab_size, block_size=32), tok)
    code, _, err = run_cli(capsys, "prune", tmp_path / "t5", tmp_path / "t5-small", "--structure", "heads")
    assert_one_line_error(code, err, "decoder and encoder models without relative positions")


def test_recovery_fine_tuning_keeps_the_pruned_zeros_only_when_asked(tmp_path, capsys):
    import json

    texts = [SAMPLE_TEXT, "Below is an instruction that describes a task. Write a response #:0123456789+"]
    tok = train_tokenizer(texts, kind="char", family="decoder")
    save_checkpoint(tmp_path / "base", tiny_model("llama", vocab_size=tok.vocab_size, block_size=128), tok)
    records = [{"instruction": "Add.", "input": f"{a} + {b}", "output": str(a + b)} for a in range(4) for b in range(4)]
    data = tmp_path / "add.jsonl"
    data.write_text("\n".join(json.dumps(r) for r in records) + "\n")
    code, _, err = run_cli(capsys, "prune", tmp_path / "base", tmp_path / "pruned", "--structure", "2:4")
    assert code == 0, err
    common = ["--data", data, "--method", "full", "--max-steps", "3", "--batch-size", "4", "--lr", "1e-2",
              "--eval-interval", "100", "--device", "cpu"]  # fmt: skip

    def block_weights(folder):
        model = load_checkpoint(str(folder)).model
        return {name: linear.weight.detach().clone() for _, _, name, linear in find_linears(model, linears_in_blocks)}

    pruned = block_weights(tmp_path / "pruned")
    code, _, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--out", tmp_path / "kept", "--keep-sparsity",
                           *common)  # fmt: skip
    assert code == 0, err
    assert "zero weights in" in err
    kept = block_weights(tmp_path / "kept")
    for name, before in pruned.items():
        assert torch.equal(kept[name] == 0, before == 0), name  # the 2:4 pattern exactly
        assert not torch.equal(kept[name], before), name  # and the kept weights trained
    code, _, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--out", tmp_path / "dense", *common)
    assert code == 0, err
    dense = block_weights(tmp_path / "dense")
    assert all(int((w == 0).sum()) == 0 for w in dense.values())  # a plain full fine-tune refills every zero

    code, _, err = run_cli(capsys, "finetune", tmp_path / "pruned", "--out", tmp_path / "x", "--keep-sparsity",
                           *common[:2], "--method", "lora")  # fmt: skip
    assert_one_line_error(code, err, "--keep-sparsity is for --method full, not lora")
    code, _, err = run_cli(capsys, "finetune", tmp_path / "base", "--out", tmp_path / "y", "--keep-sparsity", *common)
    assert_one_line_error(code, err, "found no zero weights")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "model.safetensors").exists()


def test_recovery_pre_training_from_a_pruned_init_keeps_its_zeros(tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    save_checkpoint(tmp_path / "base", tiny_model("llama", vocab_size=tok.vocab_size, block_size=32), tok)
    assert run_cli(capsys, "prune", tmp_path / "base", tmp_path / "pruned", "--sparsity", "0.6")[0] == 0
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(SAMPLE_TEXT * 4)
    args = ["pretrain", "--init", tmp_path / "pruned", "--data", corpus, "--max-steps", "3", "--batch-size", "4",
            "--block-size", "32", "--lr", "1e-2", "--eval-interval", "100", "--device", "cpu"]  # fmt: skip
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "kept", "--keep-sparsity")
    assert code == 0, err
    before = load_checkpoint(str(tmp_path / "pruned")).model
    after = load_checkpoint(str(tmp_path / "kept")).model
    pairs = zip(find_linears(before, linears_in_blocks), find_linears(after, linears_in_blocks))
    for (_, _, name, old), (_, _, _, new) in pairs:
        assert torch.equal(new.weight == 0, old.weight == 0) and not torch.equal(new.weight, old.weight), name
    code, _, err = run_cli(capsys, "pretrain", "--data", corpus, "--out", tmp_path / "x", "--keep-sparsity")
    assert_one_line_error(code, err, "--keep-sparsity keeps the zeros of the --init checkpoint")
    # interrupted after 1 step and resumed (the model is rebuilt, then its sparse weights restored): still kept
    split = [*args[: args.index("--max-steps") + 1], "1", *args[args.index("--max-steps") + 2 :]]
    assert run_cli(capsys, *split, "--out", tmp_path / "split", "--keep-sparsity")[0] == 0
    code, _, err = run_cli(capsys, *args, "--out", tmp_path / "split", "--keep-sparsity", "--resume")
    assert code == 0, err
    resumed = load_checkpoint(str(tmp_path / "split")).model
    for (_, _, name, old), (_, _, _, new) in zip(find_linears(before, linears_in_blocks),
                                                 find_linears(resumed, linears_in_blocks)):  # fmt: skip
        assert torch.equal(new.weight == 0, old.weight == 0), name
