"""TEMPORARY shim while the CLI package lands: the names moved to llmlab.pretrain and llmlab.training."""

from llmlab.pretrain.config import TrainConfig
from llmlab.pretrain.recipe import train
from llmlab.training.loop import TrainResult
from llmlab.training.losses import lm_loss as batch_loss
from llmlab.training.optim import make_optimizers, optimizer_step
from llmlab.training.schedule import learning_rate

__all__ = ["TrainConfig", "TrainResult", "batch_loss", "learning_rate", "make_optimizers", "optimizer_step", "train"]
