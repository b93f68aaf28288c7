"""`llmlab lifecycle`: a recipe's stages end to end on a tiny model (pre-train, evaluate, LoRA fine-tune,
evaluate, int8, a served smoke test with the openai client, the report); a rerun skips what is unchanged
and reruns from the first changed stage on; kill -9 in the middle of pre-training resumes from its last
checkpoint; a bad recipe is one line that points at the key."""

import json
import os
import signal

import pytest
import yaml

from llmlab.checkpoint.lineage import read_lineage
from llmlab.errors import LlmlabError
from llmlab.lifecycle.recipe import builtin_recipes
from tests.helpers import assert_one_line_error, run_cli, start_llmlab

TINY = {"preset": "llama-nano", "n_layer": 1, "n_embd": 32, "block_size": 32, "batch_size": 4, "eval_iters": 1,
        "tokenizer": "char", "dtype": "fp32", "device": "cpu"}  # fmt: skip


def _write(root, stages, scope=None):
    recipe = root / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "tiny", "scope": scope or {}, "stages": stages}, sort_keys=False))
    return recipe


@pytest.fixture(scope="module")
def lifecycle(tmp_path_factory):
    root = tmp_path_factory.mktemp("lifecycle")
    (root / "corpus.txt").write_text("hello world, hello llmlab.\n" * 300)
    (root / "sft.jsonl").write_text("".join(json.dumps({"prompt": "hello ", "completion": "world"}) + "\n"
                                            for _ in range(20)))  # fmt: skip
    labels = ["world", "llmlab"]
    (root / "greet.jsonl").write_text("".join(json.dumps({"text": "hello", "label": labels[i % 2]}) + "\n"
                                              for i in range(8)))  # fmt: skip
    evaluate = {"input_field": "text", "template": "{text} {label}", "shots": "0"}
    stages = [
        {"pretrain": {**TINY, "max_steps": 6}},
        {"evaluate": evaluate},
        {"finetune": {"data": str(root / "sft.jsonl"), "max_steps": 3, "batch_size": 2, "eval_iters": 1,
                      "dtype": "fp32", "device": "cpu", "lora_r": 2}},
        {"evaluate": evaluate},
        {"quantize": {"to": "int8", "report": True}},
        {"serve": {"prompts": ["hello"], "max_tokens": 4, "dtype": "fp32"}},
    ]  # fmt: skip
    scope = {"task": str(root / "greet.jsonl"), "data": str(root / "corpus.txt"), "metric": "accuracy (rank)"}
    return root, stages, scope


def _run(capsys, recipe, out):
    code, stdout, err = run_cli(capsys, "lifecycle", recipe, "--out", out)
    assert code == 0, err
    return stdout, err


def test_a_recipe_runs_every_stage_into_its_folder(lifecycle, capsys):
    root, stages, scope = lifecycle
    out = root / "run"
    stdout, err = _run(capsys, _write(root, stages, scope), out)
    assert f"report: {out / 'report.html'}" in stdout and (out / "report.html").is_file()
    page = (out / "report.html").read_text()
    assert "Model card: 05-quantize" in page and "Serving smoke test" in page  # the result, and its serving
    after = json.loads((out / "04-evaluate" / "results.json").read_text())["results"][0]["metrics"]["accuracy (rank)"]
    assert f"04-evaluate on 03-finetune/merged, 0 shots: accuracy (rank) {after:.4f}" in err  # the summary
    state = json.loads((out / "lifecycle.json").read_text())
    names = ["01-pretrain", "02-evaluate", "03-finetune", "04-evaluate", "05-quantize", "06-serve"]
    assert list(state["stages"]) == names and {s["status"] for s in state["stages"].values()} == {"done"}
    kinds = [s.kind for s in read_lineage(out / "05-quantize")]
    assert kinds == ["pre-training", "fine-tuning", "merge", "quantization"]  # the model flowed stage to stage
    assert read_lineage(out / "03-finetune" / "merged")[0].data[0].name == str(root / "corpus.txt")  # scope's data
    served = json.loads((out / "06-serve" / "serve.json").read_text())
    assert served["same_as_generate"] and served["model"] == str(out / "05-quantize")
    final = (out / "05-quantize" / "README.md").read_text()  # the final card holds what the report shows of it
    assert all(f"| {t:.3f} |" in final for t in served["latency_s"]) and "greedy answers equal" in final
    formats = json.loads((out / "05-quantize" / "quantization" / "report.json").read_text())
    assert [r["variant"] for r in formats][:2] == ["fp32", "bf16"] and "int8" in [r["variant"] for r in formats]
    assert all(f"| {r['variant']} | {r['disk_mb']:.1f} |" in final and f"| {r['perplexity']:.3f} |" in final
               for r in formats)  # fmt: skip
    before = json.loads((out / "02-evaluate" / "results.json").read_text())
    after = json.loads((out / "04-evaluate" / "results.json").read_text())
    assert before["task"] == after["task"] == "greet"
    card = json.loads((out / "03-finetune" / "merged" / "evaluations.json").read_text())["results"]
    assert [r["value"] for r in card] == [after["results"][0]["metrics"][r["metric"]] for r in card]


def test_a_rerun_skips_what_is_unchanged_and_reruns_from_the_first_change(lifecycle, capsys):
    root, stages, scope = lifecycle
    out = root / "run"
    weights = (out / "01-pretrain" / "model.safetensors").stat().st_mtime_ns
    _, err = _run(capsys, _write(root, stages, scope), out)
    assert err.count("unchanged since it finished, skipped") == 6 and "running" not in err
    assert (out / "01-pretrain" / "model.safetensors").stat().st_mtime_ns == weights
    changed = [*stages[:2], {"finetune": {**stages[2]["finetune"], "max_steps": 4}}, *stages[3:]]
    _, err = _run(capsys, _write(root, changed, scope), out)
    assert err.count("skipped") == 2 and "[3/6] finetune: running" in err and "[6/6] serve: running" in err
    assert json.loads((out / "03-finetune" / "trainer_state.json").read_text())["step"] == 4


def test_a_stage_key_changes_with_the_files_its_options_or_the_scope_name(tmp_path):
    from llmlab.lifecycle.recipe import Stage
    from llmlab.lifecycle.run import Flow, stage_key

    corpus, extra = tmp_path / "corpus.txt", tmp_path / "extra.jsonl"
    corpus.write_text("a\n")
    extra.write_text("{}\n")
    stage = Stage("finetune", {"data": f"{extra}:2", "max_steps": 3}, 2)
    flow = Flow(scope={"data": str(corpus)})
    key = stage_key(stage, "previous", flow)
    assert key == stage_key(stage, "previous", Flow(scope={"data": str(corpus)}))  # the same inputs, the same key
    corpus.write_text("a\nb\n")  # the scope's file
    assert stage_key(stage, "previous", flow) != key
    key = stage_key(stage, "previous", flow)
    extra.write_text('{"x": 1}\n')  # a file an option names (with a mixing weight)
    assert stage_key(stage, "previous", flow) != key
    key = stage_key(stage, "previous", flow)
    assert (
        stage_key(stage, "other", flow) != key
        and stage_key(Stage("finetune", {"max_steps": 4}, 2), "previous", flow) != key
    )


def test_kill_9_in_pre_training_resumes_from_its_checkpoint(lifecycle, tmp_path, capsys):
    root, _, scope = lifecycle
    stages = [{"pretrain": {**TINY, "max_steps": 300, "checkpoint_interval": 5, "log_interval": 1}}]
    recipe, out = _write(tmp_path, stages, scope), tmp_path / "run"
    with start_llmlab("lifecycle", str(recipe), "--out", str(out), until="checkpoint:", timeout=120) as proc:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    saved = json.loads((out / "01-pretrain" / "trainer_state.json").read_text())["step"]
    assert 5 <= saved < 300
    assert json.loads((out / "lifecycle.json").read_text())["stages"]["01-pretrain"]["status"] == "started"
    _, err = _run(capsys, recipe, out)
    assert "[1/1] pretrain: resuming" in err
    assert json.loads((out / "01-pretrain" / "trainer_state.json").read_text())["step"] == 300
    steps = [json.loads(line)["step"] for line in (out / "01-pretrain" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps.count(saved + 1) == 1  # continued after the checkpoint, once


@pytest.mark.parametrize(
    ("recipe", "fragments"),
    [
        ({"name": "x", "stagez": []}, ["stagez: unknown key", "allowed: name, description, scope, stages"]),
        (
            {"stages": [{"pretrian": {}}]},
            ["stages[0]: unknown stage 'pretrian'", "one of select, curate, pretrain"],
        ),
        (
            {"stages": [{"select": {"candidates": ["bert-nano"]}}, {"pretrain": {}}]},
            ["stages[0].select.candidates: ['bert-nano'] is not a list of decoder presets", "llama-nano"],
        ),
        (
            {"stages": [{"select": {"seconds": -1}}, {"pretrain": {}}]},
            ["select.seconds: -1 is not a positive"],
        ),
        (
            {"stages": [{"select": {"budget": 3}}, {"pretrain": {}}]},
            ["select.budget: unknown key", "seconds"],
        ),
        ({"stages": [{"select": {}}]}, ["stages[0].select chooses what a pretrain stage trains, and none follows it"]),
        (
            {"stages": [{"select": {}}, {"pretrain": {"preset": "llama-nano", "max_time": 9}}]},
            ["sets preset", "nothing"],
        ),
        ({"stages": [{"select": {}}, {"pretrain": {}}]}, ["select has no time to plan for", "max_time"]),
        ({"stages": [{"pretrain": {"max_tme": 5}}]}, ["stages[0].pretrain.max_tme: unknown key", "max_time"]),
        ({"stages": [{"finetune": {"out": "x"}}]}, ["stages[0].finetune.out: unknown key"]),
        ({"scope": {"taks": "x"}, "stages": [{"pretrain": {}}]}, ["scope.taks: unknown key", "task, metric"]),
        ({"stages": []}, ["stages must be a non-empty list"]),
        (
            {"stages": [{"pretrain": {"max_time": "soon"}}]},
            ["stages[0].pretrain: argument --max-time: invalid float value: 'soon'"],
        ),
        ({"stages": [{"evaluate": {}}]}, ["stages[0].evaluate has no model to work on", "scope: {base: CKPT}"]),
        (
            {"scope": {"base": "./no-such-run"}, "stages": [{"evaluate": {}}]},
            ["base: ./no-such-run does not exist"],
        ),
        (
            {"stages": [{"pretrain": {"data": "no-such.txt:2"}}]},
            ["pretrain.data: no-such.txt:2 does not exist"],
        ),
    ],
)
def test_a_bad_recipe_is_one_line_that_points_at_the_key(tmp_path, capsys, recipe, fragments):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(recipe))
    code, _, err = run_cli(capsys, "lifecycle", path, "--out", tmp_path / "out")
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "out").exists()  # checked whole before anything runs


def test_select_measures_each_candidate_and_hands_the_lowest_predicted_loss_to_pretraining(tmp_path):
    from llmlab.lifecycle.select import select_preset
    from llmlab.plan.compute import CHINCHILLA_FITS

    pretrain = {"n_layer": 1, "n_embd": 32, "block_size": 32, "batch_size": 4, "dtype": "fp32", "device": "cpu",
                "tokenizer": "char", "max_time": 30}  # fmt: skip
    result = select_preset({"candidates": ["llama-nano", "gpt2-nano"]}, pretrain, tmp_path, log=lambda _: None)
    assert json.loads((tmp_path / "select.json").read_text()) == result
    rows = {r["preset"]: r for r in result["candidates"]}
    fit = CHINCHILLA_FITS["hoffmann2022"]
    for row in rows.values():  # the published fit at the tokens the measured speed buys in 30 s
        assert row["tokens"] == row["steps"] * 4 * 32 and row["steps"] >= 20
        assert row["predicted_loss"] == pytest.approx(fit.loss(row["parameters"], row["tokens"]), abs=1e-4)
    assert result["chosen"] == min(rows.values(), key=lambda r: r["predicted_loss"])["preset"]
    with pytest.raises(LlmlabError, match="0.001 s of pre-training buys no candidate 20 steps"):
        select_preset({"candidates": ["llama-nano"], "seconds": 0.001}, pretrain, tmp_path / "x", log=lambda _: None)


def test_select_hands_its_choice_to_the_pretrain_stage_and_reruns_when_that_stage_changes(lifecycle, capsys):
    root, _, scope = lifecycle
    tiny = {k: v for k, v in TINY.items() if k != "preset"}
    stages = [
        {"select": {"candidates": ["gpt2-nano", "llama-nano"], "seconds": 5}},
        {"pretrain": {**tiny, "max_steps": 2}},
    ]
    out = root / "selected"
    _, err = _run(capsys, _write(root, stages, {"data": scope["data"]}), out)
    chosen = json.loads((out / "01-select" / "select.json").read_text())["chosen"]
    norm = json.loads((out / "02-pretrain" / "config.json").read_text())["model"]["norm"]
    assert norm == {"gpt2-nano": "layernorm", "llama-nano": "rmsnorm"}[chosen]  # the preset select chose
    assert f"01-select: {chosen}, predicted loss" in err
    _, err = _run(capsys, _write(root, stages, {"data": scope["data"]}), out)
    assert err.count("unchanged since it finished, skipped") == 2
    longer = [stages[0], {"pretrain": {**tiny, "max_steps": 3}}]  # select plans for this stage: both run again
    _, err = _run(capsys, _write(root, longer, {"data": scope["data"]}), out)
    assert "[1/2] select: running" in err and "[2/2] pretrain: running" in err


def test_serve_prompts_are_text_not_paths():
    from llmlab.cli import build_parser
    from llmlab.lifecycle.recipe import parse_recipe

    data = {"stages": [{"pretrain": {"max_steps": 1}}, {"serve": {"prompts": ["~nobody/x y", "read notes.txt"]}}]}
    assert parse_recipe(data, "r.yaml", build_parser()).stages[1].options["prompts"][1] == "read notes.txt"
    with pytest.raises(LlmlabError, match="~nobody/x.txt does not exist"):
        parse_recipe({"stages": [{"pretrain": {"data": "~nobody/x.txt"}}]}, "r.yaml", build_parser())


def test_the_built_in_recipes_are_listed_and_valid(capsys):
    code, out, _ = run_cli(capsys, "lifecycle", "--list")
    assert code == 0 and out.startswith("default: ") and "\nquick: " in out
    assert "select -> curate -> pretrain -> evaluate -> finetune -> evaluate -> align -> evaluate -> quantize" in out


def test_the_quick_recipe_is_the_default_with_smaller_budgets():
    """`make run`'s recipe and its 3-minute first look run the same stages on the same task."""
    default, quick = (yaml.safe_load(builtin_recipes()[name].read_text()) for name in ("default", "quick"))
    assert [next(iter(s)) for s in default["stages"]] == [next(iter(s)) for s in quick["stages"]]
    assert {k: v for k, v in default["scope"].items() if k != "budget_minutes"} == {
        k: v for k, v in quick["scope"].items() if k != "budget_minutes"
    }
    for big, small in zip(default["stages"], quick["stages"]):
        (options,) = big.values()
        (small_options,) = small.values()
        assert small_options.get("max_time", 0) <= options.get("max_time", 0)
