"""`llmlab finetune --task`: an encoder with a classification or tagging head learns, its folder (full,
linear probe, or a LoRA adapter with the head) loads for `classify`/`tag`/`evaluate`, the entity metrics
equal seqeval's, and bad data is one line with nothing written."""

from __future__ import annotations

import json
import random

import pytest
import torch
from seqeval.metrics import classification_report

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.evaluation.head_metrics import entity_scores, macro_f1
from llmlab.finetune.config import FinetuneConfig
from llmlab.finetune.recipe import finetune
from llmlab.load import load_checkpoint
from llmlab.model.task_model import with_task_head
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT, assert_one_line_error, run_cli, tiny_model

PEOPLE = [["john"], ["mary"], ["peter", "smith"], ["ann", "lee"]]
PLACES = [["paris"], ["london"], ["new", "york"], ["rome"]]


def _conll(rng: random.Random, n: int) -> str:
    """Sentences like "peter smith lives in new york" tagged B-PER I-PER O O B-LOC I-LOC."""
    lines = []
    for _ in range(n):
        person, place = rng.choice(PEOPLE), rng.choice(PLACES)
        tagged = [(w, ("B-" if i == 0 else "I-") + "PER") for i, w in enumerate(person)] + [("lives", "O"),
                  ("in", "O")] + [(w, ("B-" if i == 0 else "I-") + "LOC") for i, w in enumerate(place)]  # fmt: skip
        lines += [f"{w} X X {t}" for w, t in tagged] + [""]
    return "\n".join(lines)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("tasks")
    words = "good great fine bad awful dull movie john mary peter smith ann lee lives in paris london new york rome"
    tok = train_tokenizer([SAMPLE_TEXT, words], kind="char", family="encoder")
    save_checkpoint(root / "bert", tiny_model("bert", vocab_size=tok.vocab_size, block_size=64), tok)
    rng = random.Random(0)
    records = [{"text": f"{rng.choice(['good', 'great', 'fine'])} movie", "label": "pos"} for _ in range(60)]
    records += [{"text": f"{rng.choice(['bad', 'awful', 'dull'])} movie", "label": "neg"} for _ in range(60)]
    (root / "reviews.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    (root / "train.conll").write_text(_conll(rng, 120))
    (root / "test.conll").write_text(_conll(rng, 30))
    return root


def options(folders, out, **overrides) -> FinetuneConfig:
    fields = dict(base=str(folders / "bert"), data=[str(folders / "reviews.jsonl")], out=str(out), task="classify",
                  method="full", batch_size=8, max_steps=60, eval_interval=30, eval_iters=2, log_interval=30,
                  lr=3e-3, device="cpu", dtype="fp32", lora_targets=["all-linear"])  # fmt: skip
    return FinetuneConfig(**{**fields, **overrides})


def _quiet(line: str) -> None:
    pass


def test_a_classifier_learns_and_classify_and_evaluate_read_it(folders, tmp_path, capsys):
    finetune(options(folders, tmp_path / "cls"), log=_quiet)
    model = load_checkpoint(tmp_path / "cls").model
    assert model.config.task == "classify" and model.config.labels == ["neg", "pos"] and model.mlm_head is None
    code, out, _ = run_cli(capsys, "classify", tmp_path / "cls", "--text", "great movie", "--text", "dull movie",
                           "--json")  # fmt: skip
    assert code == 0
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["labels"] for a in answers] == [["pos"], ["neg"]]
    assert all(abs(sum(a["scores"].values()) - 1) < 1e-5 for a in answers)
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "cls", "--task", folders / "reviews.jsonl", "--json")
    report = json.loads(out)
    assert code == 0 and report["metrics"]["accuracy"] == 1.0 and report["metrics"]["macro_f1"] == 1.0
    assert sum(map(sum, report["confusion"])) == 120 and (tmp_path / "cls" / "eval-reviews" / "confusion.png").exists()


def test_a_linear_probe_trains_the_head_alone(folders, tmp_path):
    finetune(options(folders, tmp_path / "probe", method="linear-probe"), log=_quiet)
    base, probe = load_checkpoint(folders / "bert").model, load_checkpoint(tmp_path / "probe").model
    for name, tensor in base.state_dict().items():
        if not name.startswith("mlm_head."):
            assert torch.equal(probe.state_dict()[name], tensor), name
    torch.manual_seed(options(folders, tmp_path).seed)  # the head as the run initialised it
    initial = with_task_head(base, "classify", ["neg", "pos"]).task_head
    for name, tensor in initial.state_dict().items():
        assert not torch.equal(probe.task_head.state_dict()[name], tensor), name  # trained


def test_a_lora_adapter_carries_its_head_and_loads_on_its_base(folders, tmp_path, capsys):
    finetune(options(folders, tmp_path / "lora", method="lora", lr=1e-2, max_steps=80), log=_quiet)
    config = json.loads((tmp_path / "lora" / "adapter_config.json").read_text())
    assert config["settings"]["task"] == "classify" and config["settings"]["labels"] == ["neg", "pos"]
    code, out, _ = run_cli(capsys, "classify", folders / "bert", "--adapter", tmp_path / "lora", "--text",
                           "awful movie", "--json")  # fmt: skip
    assert code == 0 and json.loads(out)["labels"] == ["neg"]
    assert load_checkpoint(folders / "bert").model.config.task is None  # the base is untouched


def test_a_tagger_learns_entities_and_tag_prints_them(folders, tmp_path, capsys):
    finetune(options(folders, tmp_path / "ner", task="tag", data=[str(folders / "train.conll")], max_steps=150,
                     eval_interval=150), log=_quiet)  # fmt: skip
    model = load_checkpoint(tmp_path / "ner").model
    assert model.config.labels == ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
    code, out, _ = run_cli(capsys, "tag", tmp_path / "ner", "--text", "ann lee lives in new york", "--json")
    entities = [(e["type"], e["text"]) for e in json.loads(out)["entities"]]
    assert code == 0 and entities == [("PER", "ann lee"), ("LOC", "new york")]
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "ner", "--task", folders / "test.conll", "--json")
    report = json.loads(out)
    assert code == 0 and report["metrics"]["entity_f1"] >= 0.95 and set(report["per_label"]) == {"LOC", "PER",
                                                                                              "micro avg"}  # fmt: skip


def test_entity_scores_equal_seqeval():
    rng = random.Random(1)
    tags = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC", "B-ORG", "I-ORG"]  # I- after O and type switches included
    gold = [[rng.choice(tags) for _ in range(rng.randint(1, 12))] for _ in range(300)]
    guess = [[t if rng.random() < 0.7 else rng.choice(tags) for t in sentence] for sentence in gold]
    ours = entity_scores(gold, guess)
    theirs = classification_report(gold, guess, output_dict=True, zero_division=0)
    assert set(ours) == {k for k in theirs if k not in ("macro avg", "weighted avg")}
    for kind, score in ours.items():
        expected = theirs[kind]
        assert (score.precision, score.recall, score.f1, score.support) == pytest.approx(
            (expected["precision"], expected["recall"], expected["f1-score"], expected["support"])
        ), kind


def test_macro_f1_averages_every_label():
    # label 0: p 2/3 r 1 f1 .8; label 1: p 1 r 1/2 f1 2/3; label 2: never true nor predicted: 0
    assert macro_f1([0, 0, 1, 1], [0, 0, 0, 1], 3) == pytest.approx((0.8 + 2 / 3 + 0.0) / 3)


def _write(path, text: str):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case,fragment",
    [
        ("unseen", "'meh' is not one of the head's"),
        ("one-class", "one label only"),
        ("bad-conll", "bad.conll:2"),
        ("not-bio", "which is not BIO"),
        ("no-field", "has no 'review' field"),
        ("qlora", "--method qlora is not for --task"),
        ("decoder", "puts a head on an encoder"),
        ("weights", "is not 2 positive numbers"),
        ("template", "--template is for instruction tuning"),
        ("field-without-task", "--text-field is for --task"),
    ],
)
def test_bad_task_data_is_one_line_and_writes_nothing(folders, tmp_path, capsys, case, fragment):
    reviews = str(folders / "reviews.jsonl")
    args = {
        "unseen": ["--data", reviews, "--val-data", _write(tmp_path / "v.jsonl", '{"text": "ok", "label": "meh"}\n')],
        "one-class": ["--data", _write(tmp_path / "one.jsonl", '{"text": "a", "label": "x"}\n' * 5)],
        "bad-conll": ["--task", "tag", "--data", _write(tmp_path / "bad.conll", "EU B-ORG\nrejects\n")],
        "not-bio": ["--task", "tag", "--data", _write(tmp_path / "t.conll", "EU ORG\n\nx O\n")],
        "no-field": ["--data", reviews, "--text-field", "review"],
        "qlora": ["--data", reviews, "--method", "qlora"],
        "decoder": ["--task", "tag", "--data", str(folders / "train.conll"), "--base-override"],
        "weights": ["--data", reviews, "--class-weights", "1,2,3"],
        "template": ["--data", reviews, "--template", "sentiment"],
        "field-without-task": ["--data", reviews, "--text-field", "review", "--method", "lora"],
    }[case]
    base = folders / "bert"
    if case == "decoder":
        tok = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
        save_checkpoint(tmp_path / "gpt", tiny_model("gpt2", vocab_size=tok.vocab_size), tok)
        base, args = tmp_path / "gpt", args[:-1]
    task = [] if "--task" in args or case == "field-without-task" else ["--task", "classify"]
    method = [] if "--method" in args else ["--method", "full"]
    code, _, err = run_cli(capsys, "finetune", base, *task, *method, *args, "--out", tmp_path / "out", "--max-steps",
                           "2", "--device", "cpu")  # fmt: skip
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "out").exists()


def test_a_hugging_face_berts_pretrained_pooler_starts_the_head(folders, tmp_path):
    """As `BertForSequenceClassification.from_pretrained` does: the checkpoint's pooler, a new classifier."""
    import transformers

    from llmlab.hf.exporter import export_hf

    export_hf(load_checkpoint(folders / "bert"), tmp_path / "mlm")  # the tokenizer files, and the config
    config = transformers.AutoConfig.from_pretrained(tmp_path / "mlm")
    torch.manual_seed(0)
    bare = transformers.BertModel(config)  # with its pooler, as sentence encoders ship
    bare.save_pretrained(tmp_path / "hf")
    for file in (tmp_path / "mlm").glob("tokenizer*"):
        (tmp_path / "hf" / file.name).write_bytes(file.read_bytes())
    lines = []
    finetune(options(folders, tmp_path / "out", base=str(tmp_path / "hf"), max_steps=1, lr=1e-12), log=lines.append)
    assert "head: the checkpoint pooler, a new classifier over 2 output(s)" in lines
    pooler = load_checkpoint(tmp_path / "out").model.task_head.pooler
    assert torch.allclose(pooler.weight, bare.pooler.dense.weight, atol=1e-6)


def test_a_decoder_classifies_with_its_last_token(folders, tmp_path, capsys):
    tok = train_tokenizer([SAMPLE_TEXT, "good great fine bad awful dull movie"], kind="char", family="decoder")
    save_checkpoint(tmp_path / "gpt", tiny_model("gpt2", vocab_size=tok.vocab_size, block_size=64), tok)
    finetune(options(folders, tmp_path / "cls", base=str(tmp_path / "gpt")), log=_quiet)
    model = load_checkpoint(tmp_path / "cls").model
    assert model.config.family == "decoder" and model.config.task == "classify"
    code, out, _ = run_cli(capsys, "classify", tmp_path / "cls", "--text", "fine movie", "--text", "awful movie",
                           "--json")  # fmt: skip
    assert code == 0 and [json.loads(line)["labels"] for line in out.splitlines()] == [["pos"], ["neg"]]


@pytest.mark.long
def test_multilabel_and_regression_heads_learn_and_are_scored(folders, tmp_path, capsys):
    rng = random.Random(2)
    tags = [[], ["red"], ["blue"], ["red", "blue"]]
    multi = [{"text": " ".join(["a", *t, "b"]), "label": t} for t in (rng.choice(tags) for _ in range(120))]
    (tmp_path / "multi.jsonl").write_text("".join(json.dumps(r) + "\n" for r in multi))
    finetune(options(folders, tmp_path / "multi", task="multilabel", data=[str(tmp_path / "multi.jsonl")],
                     max_steps=300, eval_interval=300), log=_quiet)  # fmt: skip
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "multi", "--task", tmp_path / "multi.jsonl", "--json")
    report = json.loads(out)
    assert code == 0 and report["metrics"]["exact_match"] >= 0.95 and report["metrics"]["micro_f1"] >= 0.95
    assert set(report["per_label"]) == {"blue", "red"}
    scores = [{"text": "a " * n, "label": float(n)} for n in rng.choices(range(1, 6), k=120)]
    (tmp_path / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in scores))
    finetune(options(folders, tmp_path / "reg", task="regress", data=[str(tmp_path / "scores.jsonl")],
                     max_steps=300, eval_interval=300), log=_quiet)  # fmt: skip
    code, out, _ = run_cli(capsys, "evaluate", tmp_path / "reg", "--task", tmp_path / "scores.jsonl", "--json")
    report = json.loads(out)
    assert code == 0 and report["metrics"]["pearson"] >= 0.9 and report["metrics"]["mse"] < 0.5
