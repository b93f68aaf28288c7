"""Planning before spending: parameter counts, number formats (and, to come, memory and compute)."""
