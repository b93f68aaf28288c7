"""Retrieval-augmented generation: retrieve passages, fit them into the context, answer, cite."""
