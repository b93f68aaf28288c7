"""What fine-tuning cost the base: its perplexity on pre-training-style text (a decoder's sliding-window
perplexity, an encoder-decoder's on span corruption) and its score on a task the fine-tuning did not
train, measured before and after with the same text, examples and seed."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llmlab.checkpoint.folder import Checkpoint
from llmlab.errors import LlmlabError
from llmlab.evaluation.evaluate import evaluate_task
from llmlab.evaluation.perplexity import span_perplexity, text_perplexity
from llmlab.evaluation.tasks import load_task
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig

MAX_CHARS = 100_000  # of the text: enough for a stable perplexity, seconds on a CPU


@dataclass
class ForgettingProbe:
    text_file: str | None
    task: str | None
    limit: int = 200

    def read_text(self) -> str | None:
        if self.text_file is None:
            return None
        path = Path(self.text_file)
        if not path.is_file():
            raise LlmlabError(f"--eval-forgetting {path} is not a file", "pass the pre-training validation text")
        return path.read_text(encoding="utf-8", errors="replace")[:MAX_CHARS]

    def measure(self, ckpt: Checkpoint, text: str | None) -> dict[str, float]:
        """{"perplexity": ..., "<task> <metric>": ...} for what the probe asks."""
        model, tok = ckpt.model.eval(), ckpt.tokenizer
        found: dict[str, float] = {}
        if text is not None:
            seq2seq = family_spec(model.config).seq2seq
            found["perplexity"] = span_perplexity(model, tok, text) if seq2seq else text_perplexity(model, tok, text)[0]
        if self.task is not None:
            generation = GenerationConfig(greedy=True, max_new_tokens=48)
            result = evaluate_task(model, tok, load_task(self.task), [0], self.limit, 0, generation=generation)[0]
            headline = "accuracy (rank)" if "accuracy (rank)" in result.metrics else "rougeL"
            found[f"{self.task} {headline}"] = result.metrics[headline]
        return found


def forgetting_table(before: dict[str, float], after: dict[str, float]) -> list[str]:
    lines = ["forgetting: | measure | base | fine-tuned | change |"]
    for name, value in before.items():
        lines.append(f"forgetting: | {name} | {value:.4f} | {after[name]:.4f} | {after[name] - value:+.4f} |")
    return lines


def measure_forgetting(
    probe: ForgettingProbe, base: Callable[[], Checkpoint], tuned: Callable[[], Checkpoint]
) -> tuple[dict[str, float], dict[str, float]]:
    text = probe.read_text()
    return probe.measure(base(), text), probe.measure(tuned(), text)
