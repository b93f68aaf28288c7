"""What makes each model family different, in one place: its objectives, whether it generates, and how
its input is built (special tokens around a text, the prompt's prefix or suffix, pad and start tokens).

Code asks `family_spec(config).generates` instead of comparing family names, so a family's behaviour
is read here, not pieced together from `family == ...` tests across the package.
"""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.config import FAMILIES, ModelConfig
from llmlab.errors import LlmlabError
from llmlab.tokenizer import TextTokenizer, special_tokens_for


@dataclass(frozen=True)
class FamilySpec:
    """One family's properties. `objectives[0]` is its default objective."""

    name: str
    default_preset: str  # the preset trained when neither --preset nor --init is given
    objectives: tuple[str, ...]  # objectives that train it, the default first
    generates: bool  # writes text token by token (decoder, encoder-decoder)
    seq2seq: bool  # an encoder and a decoder with cross-attention
    causal: bool  # the whole model is causal: each token sees only earlier ones (decoder-only)
    masked_lm: bool  # bidirectional with a masked-LM head: fill-mask, [CLS] text [SEP] inputs

    @property
    def default_objective(self) -> str:
        return self.objectives[0]

    @property
    def special_tokens(self) -> tuple[list[str], int]:
        """(special tokens placed first in a trained tokenizer's vocabulary, number of T5 sentinels last)."""
        return special_tokens_for(self.name)

    @property
    def attention_kinds(self) -> tuple[str, ...]:
        """The attention maps the model has: self-attention per stack, plus cross-attention."""
        if self.seq2seq:
            return ("encoder", "decoder", "cross")
        return ("decoder",) if self.causal else ("encoder",)

    def text_ids(self, tokenizer: TextTokenizer, ids: list[int]) -> list[int]:
        """A whole text as the model was trained to read it: [CLS] text [SEP] (masked LM), text </s>
        (encoder-decoder) or the text itself (decoder)."""
        if self.masked_lm:
            return [tokenizer.require("cls", "to read text"), *ids, tokenizer.require("sep", "to read text")]
        if self.seq2seq:
            return [*ids, tokenizer.require("eos", "to read text")]
        return list(ids)

    def prompt_prefix(self, tokenizer: TextTokenizer) -> list[int]:
        """Tokens before a prompt: a decoder's tokenizer prefix (Llama's <s>), as its users get it."""
        self.require_generates()
        return [] if self.seq2seq else list(tokenizer.prefix_ids)

    def prompt_suffix(self, tokenizer: TextTokenizer) -> list[int]:
        """Tokens after a prompt: an encoder-decoder's input ends with end-of-sequence, as in training."""
        self.require_generates()
        return [tokenizer.require("eos", "to end the input")] if self.seq2seq else []

    def prompt_ids(self, tokenizer: TextTokenizer, ids: list[int]) -> list[int]:
        """What the model reads before it continues or answers: prefix + prompt + suffix."""
        return self.prompt_prefix(tokenizer) + list(ids) + self.prompt_suffix(tokenizer)

    def require_generates(
        self,
        what: str = "encoder-only models cannot be prompted",
        fix: str = "use llmlab fill-mask or embed, or a decoder or encoder-decoder model",
    ) -> None:
        """A clear error (the caller's words) for a family that cannot be prompted (encoder-only)."""
        if not self.generates:
            raise LlmlabError(what, fix)

    @staticmethod
    def pad_id(tokenizer: TextTokenizer) -> int:
        """The token written into padding (masked away, so any id works): [PAD]/<pad>, else the separator."""
        return tokenizer.pad_id if tokenizer.pad_id is not None else tokenizer.separator_id

    def start_id(self, config: ModelConfig, tokenizer: TextTokenizer) -> int | None:
        """An encoder-decoder's first decoder input: the config's decoder_start_token_id, else the pad
        token (T5); None for families without a separate decoder."""
        if not self.seq2seq:
            return None
        start = config.decoder_start_token_id
        return start if start is not None else self.pad_id(tokenizer)


SPECS: dict[str, FamilySpec] = {
    "decoder": FamilySpec(
        "decoder", "llama-micro", ("clm",), generates=True, seq2seq=False, causal=True, masked_lm=False
    ),
    "encoder": FamilySpec(
        "encoder", "bert-micro", ("mlm",), generates=False, seq2seq=False, causal=False, masked_lm=True
    ),
    "encoder-decoder": FamilySpec(
        "encoder-decoder", "t5-micro", ("span", "seq2seq"), generates=True, seq2seq=True, causal=False, masked_lm=False
    ),
}
assert tuple(SPECS) == FAMILIES


def family_spec(name_or_config: str | ModelConfig) -> FamilySpec:
    """The spec of a family, given its name or a model config; an unknown name is a clear error."""
    name = name_or_config if isinstance(name_or_config, str) else name_or_config.family
    spec = SPECS.get(name)
    if spec is None:
        raise LlmlabError(f"unknown family {name!r}", f"choose one of: {', '.join(FAMILIES)}")
    return spec
