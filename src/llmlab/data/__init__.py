"""Data: sources of text, cleaning, token caches and batches."""
