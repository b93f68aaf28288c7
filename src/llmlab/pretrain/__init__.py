"""The pre-training recipe: every family and objective on the training core."""
