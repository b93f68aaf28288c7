"""Does curation matter? (issue 23, "It matters"): the same model, the same time, raw vs curated text.

1. The default corpus (the Python standard library's source) is split by a hash of each file's path into
   training files and a clean held-out tenth.
2. A *raw* web-like corpus is made from the training files plus what a scrape brings (seeded): copies of
   a sixth of the files, each 2-7 times, half of them exact and half with a few words changed; and junk:
   base64 blobs on one long line, minified one-line code, generated tables under a "do not edit" header,
   keyword spam, lorem ipsum, random-symbol noise and number tables.
3. `llmlab data clean` (the default pipeline, 2 workers) curates the raw corpus; its report says what went.
4. Three `llama-micro` models (3.9M parameters, `make run`'s settings) are pre-trained for the same wall
   time each, on raw, on curated, and on the training files alone (the clean ceiling), each with its own
   BPE tokenizer trained on its corpus, as a user would.
5. Each is scored on the held-out files in bits per byte (sliding-window negative log-likelihood over the
   UTF-8 bytes), which does not depend on the tokenizer, so the three numbers compare.

    .venv/bin/python bench/curate_matters.py              # ~14 minutes on 2 cores (3 x 240 s training)
    .venv/bin/python bench/curate_matters.py --seconds 60 # a quick look
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import math
import random
import string
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.curate.config import CurateConfig  # noqa: E402
from llmlab.curate.pipeline import CurateJob, curate  # noqa: E402
from llmlab.data.sources import default_corpus_dir, read_documents  # noqa: E402
from llmlab.evaluation.perplexity import text_nll  # noqa: E402
from llmlab.load import load_checkpoint  # noqa: E402
from llmlab.pretrain.config import PretrainConfig  # noqa: E402
from llmlab.pretrain.recipe import train  # noqa: E402

TRAINING = dict(preset="llama-micro", optimizer="muon", lr=2e-3, warmup_steps=30, batch_size=32, block_size=128,
                eval_interval=100, eval_iters=5, seed=0)  # fmt: skip
SPAM = "Best cheap replica watches online buy now free shipping discount code"


def split_corpus() -> tuple[list[str], list[str]]:
    """Training and held-out texts of the default corpus, split by a hash of the file path (stable)."""
    root = default_corpus_dir()
    files = sorted(p for p in root.rglob("*.py") if "site-packages" not in p.relative_to(root).parts)
    train_texts, held_out = [], []
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        bucket = int(hashlib.sha256(str(path.relative_to(root)).encode()).hexdigest(), 16) % 10
        (held_out if bucket == 0 else train_texts).append(text)
    return train_texts, held_out


def near_copy(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    for i in rng.sample(range(len(words)), max(1, len(words) // 100)):
        words[i] = rng.choice(["tmp", "value", "item", "x"])
    return " ".join(words)


def junk(rng: random.Random) -> str:
    """One junk document of a random kind (what filters are for)."""
    kind = rng.randrange(7)
    if kind == 0:
        blob = base64.b64encode(rng.randbytes(rng.randrange(6000, 30000))).decode()
        return f'DATA = "{blob}"\n'
    if kind == 1:
        parts = [f"function f{i}(a,b){{return a*{i}+b;}}" for i in range(rng.randrange(300, 1500))]
        return "var x=1;" + "".join(parts) + "\n"
    if kind == 2:
        count = rng.randrange(500, 3000)
        rows = [f"    0x{rng.randrange(65536):04x}: 0x{rng.randrange(65536):04x}," for _ in range(count)]
        return "# This file was automatically generated. Do not edit.\nTABLE = {\n" + "\n".join(rows) + "\n}\n"
    if kind == 3:
        return "\n".join(f"{SPAM} {rng.randrange(100)}" for _ in range(rng.randrange(50, 400))) + "\n"
    if kind == 4:
        lorem = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"
        return "\n".join(" ".join(rng.sample(lorem.split(), 12)) + "." for _ in range(rng.randrange(50, 300))) + "\n"
    if kind == 5:
        alphabet = string.punctuation + string.ascii_letters + " "
        return "\n".join("".join(rng.choices(alphabet, k=80)) for _ in range(rng.randrange(50, 400))) + "\n"
    return "\n".join(" | ".join(str(rng.randrange(10**6)) for _ in range(8)) for _ in range(rng.randrange(100, 800)))


def raw_corpus(train_texts: list[str], seed: int = 0) -> tuple[list[str], dict[str, int]]:
    """The training files with copies and junk mixed in, shuffled; characters by origin."""
    rng = random.Random(seed)
    docs = [(t, "original") for t in train_texts]
    for text in rng.sample(train_texts, len(train_texts) // 6):
        exact = rng.random() < 0.5
        docs += [(text if exact else near_copy(rng, text), "copy") for _ in range(rng.randrange(2, 8))]
    clean_chars = sum(len(t) for t, _ in docs)
    while sum(len(t) for t, o in docs if o == "junk") < 0.35 * clean_chars:
        docs.append((junk(rng), "junk"))
    rng.shuffle(docs)
    chars: dict[str, int] = {}
    for text, origin in docs:
        chars[origin] = chars.get(origin, 0) + len(text)
    return [t for t, _ in docs], chars


def write_jsonl(path: Path, texts: list[str]) -> Path:
    with path.open("w") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return path


def bits_per_byte(run: Path, held_out: list[str], max_chars: int) -> float:
    ckpt = load_checkpoint(run)
    nats, size, used = 0.0, 0, 0
    for text in held_out:
        if used >= max_chars:
            break
        text = text[: max_chars - used]
        used += len(text)
        if len(ckpt.tokenizer.encode(text)) < 2:
            continue
        nats += text_nll(ckpt.model, ckpt.tokenizer, text).total
        size += len(text.encode("utf-8"))
    return nats / math.log(2) / size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=240, help="training time of each model")
    parser.add_argument("--eval-chars", type=int, default=200_000, help="held-out characters scored")
    parser.add_argument("--work", help="keep the corpora and runs here (default: a temporary folder)")
    args = parser.parse_args()
    print(describe())
    train_texts, held_out = split_corpus()
    raw, origins = raw_corpus(train_texts)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        work.mkdir(parents=True, exist_ok=True)
        raw_path = write_jsonl(work / "raw.jsonl", raw)
        clean_path = write_jsonl(work / "clean.jsonl", train_texts)
        started = time.perf_counter()
        report = curate(CurateJob(str(raw_path), work / "curated", CurateConfig(), overwrite=True))
        curate_seconds = time.perf_counter() - started
        print_curation(report, origins, curate_seconds)
        rows = []
        for name, data in (("raw", raw_path), ("curated", work / "curated"), ("clean ceiling", clean_path)):
            cfg = PretrainConfig(out=str(work / f"run-{name.split()[0]}"), data=str(data), max_time=args.seconds,
                                 overwrite=True, **TRAINING)  # fmt: skip
            result = train(cfg, log=lambda line: None)
            size = sum(len(d) for d in read_documents(str(data)))
            bpb = bits_per_byte(result.out, held_out, args.eval_chars)
            rows.append((name, size, result.step, bpb))
            print(f"{name}: {size / 1e6:.1f} M chars, {result.step} steps, held-out {bpb:.4f} bits/byte", flush=True)
    print_table(rows, args.seconds, args.eval_chars)


def print_curation(report: dict, origins: dict[str, int], seconds: float) -> None:
    total = sum(origins.values())
    shares = ", ".join(f"{k} {v / 1e6:.1f} M ({v / total:.0%})" for k, v in origins.items())
    print(f"raw corpus: {total / 1e6:.1f} M characters: {shares}")
    stages = report["stages"]
    print(f"curation: {stages['read']['docs_in']:,} -> {stages['boilerplate']['docs_out']:,} documents, "
          f"{stages['read']['chars_in'] / 1e6:.1f} -> {stages['boilerplate']['chars_out'] / 1e6:.1f} M characters "
          f"in {seconds:.0f} s")  # fmt: skip
    for name, counts in stages.items():
        for reason, n in counts["removed"].items():
            print(f"  {name:14s} {reason:40s} {n:6,}")


def print_table(rows: list, seconds: float, eval_chars: int) -> None:
    print(f"\n| training text ({seconds:.0f} s each) | characters | steps | held-out bits/byte |")
    print("|---|---|---|---|")
    for name, size, steps, bpb in rows:
        print(f"| {name} | {size / 1e6:.1f} M | {steps:,} | {bpb:.4f} |")
    raw, curated = rows[0][3], rows[1][3]
    print(f"\ncurated vs raw: {raw - curated:+.4f} bits/byte ({(raw - curated) / raw:+.1%}); "
          f"{eval_chars:,} held-out characters scored")  # fmt: skip


if __name__ == "__main__":
    main()
