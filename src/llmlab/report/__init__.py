"""Reports that measure a checkpoint: the quantization report."""
