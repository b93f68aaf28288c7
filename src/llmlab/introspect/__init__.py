"""Look inside a model: fill-mask, embeddings, attention maps, next-token probabilities."""
