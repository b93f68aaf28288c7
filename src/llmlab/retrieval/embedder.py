"""The model that turns chunks and queries into vectors, named by its weights.

Any encoder `load_checkpoint` reads (an llmlab folder, a Hugging Face folder or hub id) through the
existing `embed` (mean pooling, unit length). Its fingerprint, a sha256 over its weights, goes into
the index: vectors from two different models are not comparable, so a query or an `add` with another
model is refused rather than silently returning nonsense.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.checkpoint.adapter import weights_fingerprint
from llmlab.checkpoint.folder import Checkpoint
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.progress import ProgressLine, format_duration


@dataclass
class Embedder:
    """A loaded checkpoint with where it came from and the fingerprint of its weights."""

    checkpoint: Checkpoint
    source: str
    fingerprint: str

    @property
    def context(self) -> int:
        """Text tokens it reads at once: the context window less the tokens the family adds ([CLS], [SEP])."""
        spec = family_spec(self.checkpoint.model.config)
        return self.checkpoint.model.config.block_size - len(spec.text_ids(self.checkpoint.tokenizer, []))

    @property
    def dims(self) -> int:
        return self.checkpoint.model.config.n_embd

    def describe(self) -> dict[str, object]:
        """What index.json records of the embedder."""
        return {"source": self.source, "fingerprint": self.fingerprint, "dims": self.dims, "context": self.context}

    def require(self, fingerprint: str, index: str | Path) -> None:
        """Refuse to mix vectors of two models: this one's weights must be the index's."""
        if fingerprint != self.fingerprint:
            raise LlmlabError(
                f"embedder {self.source} (weights {self.fingerprint[:12]}) is not the model index {index} was "
                f"built with (weights {fingerprint[:12]})",
                "use the index's own embedder (leave out --embedder) or build a new index",
            )

    def embed(self, texts: list[str], batch_size: int = 32, progress: ProgressLine | None = None) -> torch.Tensor:
        """(len(texts), dims) float32 unit vectors, in batches of similar lengths (little padding), with a
        progress line (at most one a second; every 15 s into a file) when `progress` is given."""
        from llmlab.introspect.encode import embed

        tokenizer = self.checkpoint.tokenizer
        lengths = [len(ids) for ids in tokenizer.encode_batch(texts)]
        order = sorted(range(len(texts)), key=lambda i: -lengths[i])  # the longest first: an honest ETA
        out = torch.empty(len(texts), self.dims)
        started = shown = time.monotonic()
        for first in range(0, len(order), batch_size):
            rows = order[first : first + batch_size]
            out[rows] = embed(self.checkpoint.model, tokenizer, [texts[i] for i in rows]).cpu()
            done, now = first + len(rows), time.monotonic()
            if progress is not None and (now - shown >= (1 if progress.live else 15) or done == len(texts)):
                shown, rate = now, done / max(now - started, 1e-9)
                eta = format_duration((len(texts) - done) / rate)
                progress.update(f"embedding {done:,}/{len(texts):,} chunks · {rate:,.1f} chunks/s · ETA {eta}")
        return out


def load_embedder(source: str | Path, device: str = "cpu") -> Embedder:
    """The encoder at `source` in fp32 (the vectors an index stores must not depend on a cast); a local
    folder is recorded by its absolute path, so the index finds it from any directory."""
    from llmlab.device import resolve_device
    from llmlab.load import load_checkpoint

    name = str(Path(source).resolve()) if Path(source).exists() else str(source)
    checkpoint = load_checkpoint(source, device=resolve_device(device), dtype=torch.float32)
    return Embedder(checkpoint, name, weights_fingerprint(checkpoint.model))
