"""Scaling laws from your own runs: an IsoFLOP grid of pre-training runs and the law fitted to them."""
