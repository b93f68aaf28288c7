"""Decoding: settings (`config`), the offline batched generator (`generator`)."""
