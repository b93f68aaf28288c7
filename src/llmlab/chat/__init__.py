"""Talking to an instruction-tuned model: a conversation kept within the context window."""
