"""A new recipe is a short file on the training core: this one (the next-token loss, reporting its token
accuracy too, with the embeddings frozen) is ~20 lines, and gets budgets, validation, metrics.jsonl,
checkpoints and exact resume from `training.run`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from llmlab.config import ModelConfig
from llmlab.data.objectives import causal_lm_batch
from llmlab.generation.config import GenerationConfig
from llmlab.load import load_checkpoint
from llmlab.model import build_model
from llmlab.tokenizer import train_tokenizer
from llmlab.training.checkpointing import Checkpointer
from llmlab.training.config import TrainerConfig
from llmlab.training.loop import Job
from llmlab.training.run import run
from tests.helpers import SAMPLE_TEXT

TOKENIZER = train_tokenizer([SAMPLE_TEXT], kind="char")
IDS = np.array(TOKENIZER.encode(SAMPLE_TEXT * 4), dtype=np.int64)


@dataclass
class ToyConfig(TrainerConfig):
    freeze_embeddings: bool = True


def toy_model(cfg: ToyConfig):
    torch.manual_seed(cfg.seed)
    config = ModelConfig.from_preset("llama-nano", vocab_size=TOKENIZER.vocab_size, n_layer=1, n_embd=32, block_size=32)
    return build_model(config)


def loss_with_accuracy(model, batch, normalizer):
    logits = model(batch.inputs).float()
    loss = F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten())
    return loss, {"accuracy": (logits.argmax(-1) == batch.labels).float().mean()}


def prepare(cfg: ToyConfig, session, saved) -> Job:
    model = toy_model(cfg).to(session.device)
    model.embed.weight.requires_grad_(not cfg.freeze_embeddings)
    batches = lambda val, step, micro: causal_lm_batch(IDS, cfg.batch_size, 32, cfg.seed, step, micro)  # noqa: E731
    checkpointer = Checkpointer(Path(cfg.out), TOKENIZER, GenerationConfig(), session.ctx, session.log)
    return Job(model, session.wrap(model), batches, loss_with_accuracy, checkpointer, cfg.to_dict())


def options(folder: Path, **overrides) -> ToyConfig:
    fields = dict(out=str(folder), batch_size=8, lr=3e-3, warmup_steps=2, max_steps=30, eval_interval=10,
                  eval_iters=2, log_interval=5, dtype="fp32", device="cpu")  # fmt: skip
    return ToyConfig(**{**fields, **overrides})


def test_a_recipe_on_the_core_logs_its_metrics_and_leaves_frozen_weights_alone(tmp_path):
    result = run(options(tmp_path / "run"), prepare, log=lambda line: None)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracies = [r["train_accuracy"] for r in records if "train_accuracy" in r]
    assert len(accuracies) == 6 and accuracies[-1] > accuracies[0] + 0.2  # it learns, and says so
    assert [r["step"] for r in records if "val_accuracy" in r] == [10, 20, 30]
    assert result.train_losses[30] < result.train_losses[1]
    trained, fresh = load_checkpoint(tmp_path / "run").model, toy_model(options(tmp_path))
    assert torch.equal(trained.embed.weight, fresh.embed.weight)  # frozen: left out of the optimizer
    block = "decoder.blocks.0.mlp.up.weight"
    assert not torch.equal(trained.state_dict()[block], fresh.state_dict()[block])


def test_the_recipe_resumes_exactly(tmp_path):
    whole = run(options(tmp_path / "a", max_steps=12), prepare, log=lambda line: None)

    def stop_at_6(step: int, loss: float) -> None:
        if step == 6:
            raise KeyboardInterrupt

    first = run(options(tmp_path / "b", max_steps=12), prepare, on_step=stop_at_6, log=lambda line: None)
    assert first.interrupted and first.step == 6
    resumed = run(options(tmp_path / "b", max_steps=12, resume=True), prepare, log=lambda line: None)
    assert sorted(resumed.train_losses) == list(range(7, 13))  # it went on from step 6, not from scratch
    assert [resumed.train_losses[s] for s in range(7, 13)] == [whole.train_losses[s] for s in range(7, 13)]
