"""The training core every recipe shares: configs, state, optimizers, step, loop, checkpoints, distributed."""
