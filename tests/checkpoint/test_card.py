"""Model cards: every command that writes a checkpoint leaves a README.md that huggingface_hub parses, whose
recipe carries the whole history (pre-training -> fine-tuning -> merge -> quantization -> export) with the
budgets the runs really spent, and whose evaluation results are the numbers `llmlab evaluate` printed."""

import json
import shutil

import huggingface_hub
import pytest

from llmlab.checkpoint.lineage import read_lineage
from llmlab.cli import main
from llmlab.plan.flops import step_flops
from llmlab.training.card import estimated_flops
from tests.helpers import assert_one_line_error, run_cli, tiny_model

TINY = ["--preset", "llama-nano", "--n-layer", "1", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-iters", "1", "--tokenizer", "char", "--dtype", "fp32", "--device", "cpu"]  # fmt: skip


@pytest.fixture(scope="module")
def chain(tmp_path_factory):
    """pretrain -> finetune (LoRA) -> merge -> quantize, through the CLI, on a tiny model."""
    root = tmp_path_factory.mktemp("card")
    corpus = root / "corpus.txt"
    corpus.write_text("hello world, hello llmlab.\n" * 300)
    assert main(["pretrain", "--data", str(corpus), "--out", str(root / "base"), "--max-steps", "6", *TINY]) == 0
    records = [{"prompt": "hello ", "completion": "world"}, {"prompt": "hello w", "completion": "orld"}] * 10
    (root / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["finetune", str(root / "base"), "--data", str(root / "sft.jsonl"), "--out", str(root / "lora"),
                 "--max-steps", "3", "--batch-size", "2", "--eval-iters", "1", "--device", "cpu", "--dtype", "fp32",
                 "--lora-r", "2"]) == 0  # fmt: skip
    assert main(["merge", str(root / "lora"), str(root / "merged")]) == 0
    assert main(["quantize", str(root / "merged"), str(root / "int8"), "--to", "int8"]) == 0
    return root


def _card(folder):
    return huggingface_hub.ModelCard.load(folder / "README.md")


def test_a_pretrained_checkpoint_has_a_card_with_what_the_run_spent(chain):
    base = chain / "base"
    card = _card(base)
    assert card.data.pipeline_tag == "text-generation"
    assert card.data.datasets is None and card.data.base_model is None  # local paths stay out of the front matter
    assert f"| pre-training | {chain / 'corpus.txt'} | 1 |" in (base / "README.md").read_text()
    assert "pre-training" in card.data.tags
    state = json.loads((base / "trainer_state.json").read_text())
    (stage,) = read_lineage(base)
    assert (stage.kind, stage.method, stage.steps, stage.tokens) == ("pre-training", "clm", 6, state["tokens_seen"])
    config = json.loads((base / "config.json").read_text())["model"]
    from llmlab.config import ModelConfig

    per_token = sum(step_flops(ModelConfig.from_dict(config), 4, 32).values()) / (4 * 32)
    assert stage.flops == pytest.approx(per_token * state["tokens_seen"])
    assert stage.validation_loss == pytest.approx(state["best_val_loss"])
    # a character each, and the end-of-text token that closes the document
    assert stage.data[0].documents == 1 and stage.data[0].tokens == len("hello world, hello llmlab.\n" * 300) + 1
    text = (base / "README.md").read_text()
    params = sum(p.numel() for p in _model(base).parameters())
    assert f"{params:,}" in text and "## Intended use and limitations" in text and "32 tokens" in text


def _model(folder):
    from llmlab.load import load_checkpoint

    return load_checkpoint(folder).model


def test_each_later_stage_carries_the_history_before_it(chain):
    kinds = {name: [s.kind for s in read_lineage(chain / name)] for name in ("lora", "merged", "int8")}
    assert kinds == {"lora": ["pre-training", "fine-tuning"], "merged": ["pre-training", "fine-tuning", "merge"],
                     "int8": ["pre-training", "fine-tuning", "merge", "quantization"]}  # fmt: skip
    assert read_lineage(chain / "int8")[0] == read_lineage(chain / "base")[0]
    lora = read_lineage(chain / "lora")[1]
    assert lora.method == "lora r=2, alpha=16" and lora.base == str(chain / "base") and lora.steps == 3
    assert lora.data[0].name == str(chain / "sft.jsonl") and lora.data[0].documents == 20
    adapter = _card(chain / "lora")
    assert adapter.data.base_model is None  # a local base: named in the body, not as a hub id
    assert adapter.data.library_name == "peft" and "lora" in adapter.data.tags
    assert "int8" in _card(chain / "int8").data.tags
    assert "int8 (absmax)" in (chain / "int8" / "README.md").read_text()


def test_a_frozen_base_is_counted_at_four_flops_per_weight_and_token():
    model = tiny_model("llama", vocab_size=32)
    total = sum(p.numel() for p in model.parameters())
    assert estimated_flops(model, 10) == 6 * total * 10
    model.requires_grad_(False)
    model.lm_head.weight.requires_grad_(True)  # tied: the embedding, trainable again
    trainable = model.lm_head.weight.numel()
    assert estimated_flops(model, 10) == (4 * total + 2 * trainable) * 10


def test_evaluation_results_land_in_the_card_and_its_model_index(chain, capsys):
    text = chain / "held_out.txt"
    text.write_text("hello llmlab, hello world.\n" * 20)
    code, out, _ = run_cli(capsys, "evaluate", chain / "merged", "--perplexity", text, "--json")
    assert code == 0
    perplexity = json.loads(out)["perplexity"]
    (result,) = _card(chain / "merged").data.eval_results
    assert (result.metric_type, result.dataset_name) == ("perplexity", "held_out.txt")
    assert result.metric_value == pytest.approx(perplexity)
    run_cli(capsys, "evaluate", chain / "merged", "--perplexity", text, "--json")  # a rerun replaces, never adds
    assert len(json.loads((chain / "merged" / "evaluations.json").read_text())["results"]) == 1
    assert "| perplexity on held_out.txt | held_out.txt |" in (chain / "merged" / "README.md").read_text()


def test_export_keeps_the_card_and_import_starts_a_new_history(chain, capsys, tmp_path):
    hf = tmp_path / "hf"
    assert run_cli(capsys, "export", chain / "merged", hf)[0] == 0
    card = (hf / "README.md").read_text()
    assert "| 4 | export | Hugging Face transformers folder" in card and "| 1 | pre-training | clm |" in card
    back = tmp_path / "back"
    assert run_cli(capsys, "import", hf, back)[0] == 0
    assert [(s.kind, s.base) for s in read_lineage(back)] == [("imported", str(hf))]
    assert _card(back).data.base_model is None  # a local folder, not a hub id


def test_only_hub_ids_reach_the_front_matter(tmp_path):
    from llmlab.checkpoint.card import hub_id

    assert hub_id("hf:knkarthick/dialogsum") == "knkarthick/dialogsum" and hub_id("gpt2/x-1.5") == "gpt2/x-1.5"
    (tmp_path / "org").mkdir()
    (tmp_path / "org" / "name").mkdir()
    for local in ("/data/corpus.txt", "./runs/base", "~/x/y", "corpus.txt", "task:sentiment", "a/b/c", "python-stdlib"):
        assert hub_id(local) is None, local


def test_results_of_earlier_weights_leave_the_card(chain, capsys, tmp_path):
    copy = tmp_path / "merged"
    shutil.copytree(chain / "merged", copy)
    text = chain / "held_out.txt"
    text.write_text("hello llmlab, hello world.\n" * 20)
    assert run_cli(capsys, "evaluate", copy, "--perplexity", text)[0] == 0
    assert len(_card(copy).data.eval_results) == 1
    assert run_cli(capsys, "quantize", chain / "merged", copy, "--to", "int8")[0] == 0  # new weights, same folder
    assert _card(copy).data.eval_results is None and "No evaluation is recorded yet" in (copy / "README.md").read_text()


def test_an_adapter_exported_to_transformers_is_carded_as_the_merged_model(chain, capsys, tmp_path):
    hf = tmp_path / "hf"
    assert run_cli(capsys, "export", chain / "base", hf, "--adapter", chain / "lora")[0] == 0
    card = huggingface_hub.ModelCard.load(hf / "README.md")
    assert card.data.library_name is None and "An adapter" not in card.text and "--adapter" not in card.text
    assert "| 3 | merge | the adapter added into its base's weights |" in card.text
    assert "| 4 | export | Hugging Face transformers folder" in card.text


def test_card_sets_what_only_a_person_can_say(chain, capsys):
    code, out, _ = run_cli(capsys, "card", chain / "base", "--license", "apache-2.0", "--language", "en")
    assert code == 0 and out.startswith("---\nlicense: apache-2.0\nlanguage:\n- en\n")
    assert _card(chain / "base").data.license == "apache-2.0"
    code, out, _ = run_cli(capsys, "card", chain / "base")  # kept on a plain refresh
    assert "license: apache-2.0" in out


def test_card_refuses_what_llmlab_did_not_write(chain, capsys, tmp_path):
    assert_one_line_error(
        *run_cli(capsys, "card", tmp_path)[::2], "not a checkpoint or adapter folder written by llmlab"
    )
    copy = tmp_path / "copy"
    shutil.copytree(chain / "base", copy)
    (copy / "card.json").write_text("{not json")
    assert_one_line_error(*run_cli(capsys, "card", copy, "--license", "mit")[::2], "card.json is not valid JSON")


def test_a_resumed_run_keeps_its_history_when_its_base_has_moved(chain, tmp_path):
    base = tmp_path / "base"
    shutil.copytree(chain / "base", base)
    corpus = str(chain / "corpus.txt")
    out = tmp_path / "continued"
    args = ["pretrain", "--data", corpus, "--init", str(base), "--out", str(out), *TINY[:2], *TINY[6:]]
    assert main([*args, "--max-steps", "2"]) == 0
    base.rename(tmp_path / "moved")
    assert main([*args, "--max-steps", "4", "--resume"]) == 0
    stages = read_lineage(out)
    assert [s.kind for s in stages] == ["pre-training", "pre-training"] and stages[1].steps == 4
    assert stages[0] == read_lineage(chain / "base")[0]


def test_a_quantized_base_counts_its_weights_held_in_buffers():
    from torch import nn

    from llmlab.model.quantize import Int8Linear

    model = nn.Sequential(nn.Linear(8, 4), Int8Linear.from_linear(nn.Linear(6, 5), "absmax"))  # no parameters
    assert estimated_flops(model, 10) == (4 * (36 + 30) + 2 * 36) * 10
