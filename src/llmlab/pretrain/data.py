"""Pre-training data: the token stream (or JSONL pairs for seq2seq) and the objective's batches,
each batch a pure function of (seed, step, micro-step) so a resumed run sees the same data."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from llmlab.config import ModelConfig
from llmlab.data.objectives import Batch, causal_lm_batch, mlm_batch, seq2seq_batch, span_batch, span_lengths
from llmlab.data.pairs import PairData, prepare_pairs
from llmlab.data.tokens import TokenData, prepare_data
from llmlab.errors import LlmlabError
from llmlab.pretrain.config import PretrainConfig
from llmlab.tokenizer import TextTokenizer
from llmlab.training.step import BatchSource


def load_training_data(
    cfg: PretrainConfig, objective: str, family: str, tokenizer: TextTokenizer | None, log: Callable[[str], None]
) -> TokenData | PairData:
    """JSONL pairs for seq2seq, else the cached token stream; the tokenizer is trained if not given."""
    if objective == "seq2seq":
        if cfg.data is None:
            raise LlmlabError("seq2seq training needs pairs", "pass --data FILE.jsonl with input and target fields")
        return prepare_pairs(
            cfg.data, cfg.input_field, cfg.target_field, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction,
            tokenizer, log, family,
        )  # fmt: skip
    data, glob, text_field = cfg.data, cfg.glob, cfg.text_field
    if cfg.curate:
        data, glob, text_field = str(curated_copy(cfg, log)), "**/*", "text"
    return prepare_data(data, glob, text_field, cfg.tokenizer, cfg.vocab_size, cfg.val_fraction, tokenizer, log, family)


def curated_copy(cfg: PretrainConfig, log: Callable[[str], None]) -> Path:
    """`--data` through the curation pipeline, into a cache folder named by the run's identity: a second
    run with the same data and config reuses it, an interrupted one resumes."""
    import hashlib
    import json

    from llmlab.curate.config import load_config
    from llmlab.curate.pipeline import CurateJob, curate
    from llmlab.data.tokens import cache_root

    job = CurateJob(cfg.data, Path(), load_config(None if cfg.curate == "default" else cfg.curate), cfg.glob,
                    cfg.text_field)  # fmt: skip
    key = hashlib.sha256(json.dumps(job.identity(), sort_keys=True).encode()).hexdigest()[:16]
    job.out = cache_root() / "curated" / key
    report = curate(job, log)
    read, kept = report["stages"]["read"]["docs_in"], report["stages"]["boilerplate"]["docs_out"]
    log(f"curated {read:,} documents to {kept:,} in {job.out} (report.md there)")
    return job.out


def window_length(objective: str, cfg: PretrainConfig, block: int) -> int:
    """Raw tokens one training row reads from the token stream."""
    if objective == "clm":
        return block + 1
    if objective == "mlm":
        return block - 2
    return span_lengths(block, cfg.noise_density, cfg.mean_span_length)[0]


def require_windows(objective: str, cfg: PretrainConfig, data: TokenData | PairData, block: int) -> None:
    """Both splits must hold at least one training window."""
    if objective == "seq2seq":
        return
    window = window_length(objective, cfg, block)
    for split, ids in (("training", data.train), ("validation", data.val)):
        if len(ids) <= window:
            raise LlmlabError(
                f"the {split} split has {len(ids)} tokens, fewer than one window of {window}",
                "use more data or a smaller --block-size",
            )


def batch_source(
    objective: str, cfg: PretrainConfig, data: TokenData | PairData, config: ModelConfig, rows: slice | None = None
) -> BatchSource:
    """The objective's batches for training and validation, each a pure function of (seed, step, micro).
    `rows` picks one rank's share of each batch of `cfg.batch_size` rows; only those rows are read."""
    B, block, tok, seed = cfg.batch_size, config.block_size, data.tokenizer, cfg.seed
    start = config.decoder_start_token_id
    if objective == "seq2seq":
        assert isinstance(data, PairData)
        pad = tok.require("pad", "to pad sequence-to-sequence batches")
        eos = tok.require("eos", "to end sequence-to-sequence inputs and targets")

        def pairs(val: bool, step: int, micro: int) -> Batch:
            src, tgt = (data.val_sources, data.val_targets) if val else (data.train_sources, data.train_targets)
            return seq2seq_batch(src, tgt, B, block, pad, eos, start, seed, step, micro, rows)

        return pairs
    split = lambda val: data.val if val else data.train  # noqa: E731
    if objective == "clm":
        return lambda val, step, micro: causal_lm_batch(split(val), B, block, seed, step, micro, rows)
    if objective == "mlm":
        p = cfg.mask_probability
        return lambda val, step, micro: mlm_batch(split(val), tok, B, block, seed, step, micro, p, rows)
    density, mean = cfg.noise_density, cfg.mean_span_length
    return lambda val, step, micro: span_batch(split(val), tok, B, block, start, seed, step, micro, density, mean, rows)
