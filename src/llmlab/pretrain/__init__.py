"""The pre-training recipe: every family and objective on the training core (`training/`).

`config.py` its options, `data.py` the corpus and the objective's batches, `recipe.py` `train()`.
"""
