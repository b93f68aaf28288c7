"""Model code: layers shared by every family, the families, and the KV cache."""

from llmlab.model.cache import KVCache
from llmlab.model.transformer import DecoderLM

__all__ = ["DecoderLM", "KVCache"]
