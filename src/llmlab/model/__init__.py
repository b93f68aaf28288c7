"""Model code: layers shared by every family, the families, and the KV cache."""

from llmlab.model.cache import KVCache
from llmlab.model.transformer import DecoderLM, EncoderDecoderLM, EncoderLM, LanguageModel, build_model

__all__ = ["DecoderLM", "EncoderDecoderLM", "EncoderLM", "KVCache", "LanguageModel", "build_model"]
