"""Pruning: zeroing the least important weights of the linear layers inside the blocks."""
