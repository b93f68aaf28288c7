"""`llmlab report DIR` in a real headless browser (Debian's chromium through Playwright): the page loads with
no console error, every figure decodes, the numbers shown are the runs' own, a hostile file name stays
text, and a screenshot is kept beside the test's files."""

import json
import os
import shutil
from pathlib import Path

import pytest

from llmlab.cli import main
from tests.helpers import assert_one_line_error, run_cli

TINY = ["--preset", "llama-nano", "--n-layer", "1", "--n-embd", "32", "--block-size", "32", "--batch-size", "4",
        "--eval-iters", "1", "--tokenizer", "char", "--dtype", "fp32", "--device", "cpu", "--log-interval", "2",
        "--eval-interval", "2"]  # fmt: skip
HOSTILE = "<img src=x onerror=alert(1)>.txt"


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is missing: the Makefile's install step puts Debian's chromium on the machine")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A lifecycle's folder: pre-training, LoRA fine-tuning, a shots evaluation, a perplexity under a hostile
    file name, and an alignment run's metrics (reward and KL by step)."""
    root = tmp_path_factory.mktemp("report")
    corpus = root / "corpus.txt"
    corpus.write_text("hello world, hello llmlab.\n" * 300)
    assert main(["pretrain", "--data", str(corpus), "--out", str(root / "base"), "--max-steps", "6", *TINY]) == 0
    records = [{"prompt": "hello ", "completion": "world"}] * 20
    (root / "sft.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n")
    assert main(["finetune", str(root / "base"), "--data", str(root / "sft.jsonl"), "--out", str(root / "lora"),
                 "--max-steps", "4", "--batch-size", "2", "--eval-iters", "1", "--eval-interval", "2",
                 "--log-interval", "2", "--device", "cpu", "--dtype", "fp32"]) == 0  # fmt: skip
    task = root / "greet.jsonl"
    task.write_text(
        "".join(json.dumps({"text": "hello", "label": ["world", "llmlab"][i % 2]}) + "\n" for i in range(8))
    )
    assert main(["evaluate", str(root / "base"), "--task", str(task), "--input-field", "text", "--template",
                 "{text} {label}", "--shots", "0,1"]) == 0  # fmt: skip
    hostile = root / HOSTILE
    hostile.write_text("hello world.\n" * 5)
    assert main(["evaluate", str(root / "lora"), "--perplexity", str(hostile)]) == 0
    # a card whose text a person set, with a link that would run script if it were kept
    assert main(["card", str(root / "lora"), "--intended-use", "Demo only. [details](javascript:alert(2))"]) == 0
    aligned = root / "aligned"
    aligned.mkdir()
    steps = [{"step": s, "train_loss": 1.0 / s, "train_kl": 0.1 * s, "train_score": 0.2 + 0.05 * s} for s in (1, 2, 3)]
    (aligned / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in steps))
    return root


def test_the_report_renders_in_chromium_with_every_figure(runs, capsys):
    code, out, _ = run_cli(capsys, "report", runs)
    assert code == 0 and "report.html" in out
    page_file = runs / "report.html"
    html = page_file.read_text()
    assert "http://" not in html and "https://" not in html and "<script" not in html  # nothing fetched or run
    shown = _open_in_chromium(page_file, runs / "report.png")
    assert shown["errors"] == [] and shown["dialogs"] == []
    alts = [alt for alt, complete, width in shown["images"] if complete and width > 0]
    assert len(alts) == len(shown["images"])  # every figure decoded
    assert set(alts) == {"base: loss curves", "lora: loss curves", "aligned: loss curves",
                         "aligned: reward against KL", "greet: results"}  # fmt: skip
    assert (runs / "report.png").read_bytes()[:4] == b"\x89PNG"
    print(f"screenshot: {runs / 'report.png'}")


def test_the_numbers_are_the_runs_own(runs, capsys):
    run_cli(capsys, "report", runs)
    text = _open_in_chromium(runs / "report.html", None)["text"]
    results = json.loads((runs / "base" / "eval-greet" / "results.json").read_text())["results"]
    for r in results:  # each shots row of the table, cell by cell
        value, (low, high) = r["metrics"]["accuracy (rank)"], r["intervals"]["accuracy (rank)"]
        assert f"{r['shots']}\taccuracy (rank)\t{value:.4g}\t[{low:.4g}, {high:.4g}]\t{r['examples']}" in text
    card = json.loads((runs / "lora" / "evaluations.json").read_text())["results"][0]
    assert f"{card['value']:.4g}" in text and HOSTILE in text  # the file name shown as text, not markup
    state = json.loads((runs / "lora" / "trainer_state.json").read_text())
    assert f"{state['best_val_loss']:.4g}" in text
    order = [text.index(f"{i}. {name}") for i, name in enumerate(["aligned", "base", "lora"], 1)]
    assert order == sorted(order)  # the lifecycle's order: by the stages behind each folder
    assert "Model card: lora" in text and "Intended use and limitations" in text  # the most stages: lora's
    assert "Demo only. details" in text  # the link's text kept, its javascript: address dropped


def _open_in_chromium(page_file: Path, screenshot: Path | None) -> dict:
    from playwright.sync_api import sync_playwright

    errors, dialogs = [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=_chromium(), args=["--no-sandbox"])
        try:
            page = browser.new_page()
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
            page.goto(page_file.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.alt, i.complete, i.naturalWidth])")
            unsafe = page.evaluate("Array.from(document.querySelectorAll('[href],[src]')).map(e => e.href || e.src)"
                                   ".filter(a => !/^(https?:|mailto:|data:image\\/png|file:.*#)/.test(a))")  # fmt: skip
            assert unsafe == [], unsafe
            text = page.inner_text("body")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "dialogs": dialogs, "images": images, "text": text}


def test_a_folder_without_runs_is_one_line(tmp_path, capsys):
    code, _, err = run_cli(capsys, "report", tmp_path)
    assert_one_line_error(code, err, "holds no run folder")
    code, _, err = run_cli(capsys, "report", tmp_path / "absent")
    assert_one_line_error(code, err, "is not a folder")
