"""`llmlab pretrain`'s options: the training core's (optimizer, schedule, budgets, run, distributed)
plus what to train on (data and objective) and which model (a preset and its overrides)."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.config import PRESETS
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.options import option
from llmlab.training.config import TrainerConfig, Validated, require_positive

MODEL_OVERRIDES = (
    "block_size", "n_layer", "n_decoder_layer", "n_head", "n_kv_head", "n_embd", "dropout", "positions", "norm", "mlp",
)  # fmt: skip


@dataclass
class PretrainData(Validated):
    """The corpus, its tokenizer, and the objective that turns it into batches."""

    family: str | None = option(None, "decoder (GPT), encoder (BERT) or encoder-decoder (T5); default: the preset's")
    objective: str | None = option(
        None, "clm (decoder), mlm (encoder), span or seq2seq (encoder-decoder); default: the family's first"
    )
    init: str | None = option(
        None, "start from this checkpoint's weights and tokenizer (e.g. seq2seq on a span-pre-trained model)"
    )
    keep_sparsity: bool = option(
        False, "with --init: keep the zeros of a pruned checkpoint (recovery training after `llmlab prune`)"
    )
    data: str | None = option(
        None, "text file, folder (see --glob) or .jsonl file; default: the Python standard library's source"
    )
    glob: str = option("**/*", "files to read under a --data folder")
    curate: str | None = option(
        None, "curate --data first (`llmlab data clean`): 'default' or a curate.yaml; the result is cached"
    )
    text_field: str = option("text", "JSONL field holding the text")
    input_field: str = option("input", "seq2seq JSONL field holding the input")
    target_field: str = option("target", "seq2seq JSONL field holding the target")
    mask_probability: float = option(0.15, "mlm: fraction of ordinary tokens selected for prediction")
    noise_density: float = option(0.15, "span: fraction of tokens dropped into spans")
    mean_span_length: float = option(3.0, "span: mean length of a noise span")
    tokenizer: str = option("bpe", "bpe (byte-level) or char")
    vocab_size: int = option(8192, "BPE vocabulary size")
    val_fraction: float = option(0.1, "fraction of tokens held out for validation (the end of the corpus)")

    def validate(self) -> None:
        super().validate()
        require_positive(self, "vocab_size")
        for name in ("mask_probability", "noise_density"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise LlmlabError(
                    f"--{name.replace('_', '-')} must be in (0, 1), got {getattr(self, name)}", "use e.g. 0.15"
                )
        if self.mean_span_length < 1:
            raise LlmlabError(f"--mean-span-length must be >= 1, got {self.mean_span_length}", "use e.g. 3")
        if self.keep_sparsity and self.init is None:
            raise LlmlabError("--keep-sparsity keeps the zeros of the --init checkpoint", "add --init PRUNED_CKPT")


@dataclass
class ModelOptions(Validated):
    """A preset and the fields that override it. Fields left at None come from the preset."""

    preset: str | None = option(
        None, "model preset (see `llmlab presets`); default llama-micro, bert-micro or t5-micro by family"
    )
    block_size: int | None = option(None, "context length in tokens (overrides the preset)")
    n_layer: int | None = option(
        None,
        "number of transformer blocks (overrides the preset; both stacks of an "
        "encoder-decoder unless --n-decoder-layer is given)",
    )
    n_decoder_layer: int | None = option(None, "decoder blocks of an encoder-decoder model (overrides the preset)")
    n_head: int | None = option(None, "attention heads (overrides the preset)")
    n_kv_head: int | None = option(None, "key/value heads for grouped-query attention (overrides the preset)")
    n_embd: int | None = option(None, "model width (overrides the preset)")
    dropout: float | None = option(None, "dropout probability (overrides the preset's 0)")
    positions: str | None = option(None, "learned, rope, sinusoidal or relative (T5 bias) (overrides the preset)")
    norm: str | None = option(None, "layernorm or rmsnorm (overrides the preset)")
    mlp: str | None = option(None, "gelu, relu, swiglu or geglu (overrides the preset)")

    def validate(self) -> None:
        super().validate()
        if self.preset is not None and self.preset not in PRESETS:  # before the corpus is read and tokenised
            raise LlmlabError(f"unknown preset {self.preset!r}", f"choose one of: {', '.join(PRESETS)}")


@dataclass
class PretrainConfig(TrainerConfig, ModelOptions, PretrainData):
    """Everything `llmlab pretrain` takes."""

    def resolved_family(self) -> str:
        """The family to train: --family, else the preset's, else decoder; a mismatch is an error."""
        if self.family is not None:
            family_spec(self.family)  # an unknown family is one clear error
        preset_family = PRESETS.get(self.preset, {}).get("family", "decoder") if self.preset else None
        if self.family and preset_family and self.family != preset_family:
            raise LlmlabError(
                f"preset {self.preset} is of family {preset_family}, not {self.family}",
                f"leave out --family or pick a preset of that family "
                f"(default {family_spec(self.family).default_preset})",
            )
        return self.family or preset_family or "decoder"


TrainConfig = PretrainConfig  # the name of the Python API before the recipes shared a core
