"""The data side of `llmlab finetune`: each --data source read, rendered into examples, mixed by its
weight, split into training and validation, tokenised, cut or dropped to the context, packed, and
turned into the trainer's batch source; what happened to the examples is logged."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from llmlab.checkpoint.folder import Checkpoint
from llmlab.checkpoint.lineage import DataSource
from llmlab.data.chat import ChatTemplate, find_chat_template
from llmlab.data.records import read_records
from llmlab.data.tokens import digest
from llmlab.errors import LlmlabError
from llmlab.evaluation.tasks import dialogsum_task, sentiment_task
from llmlab.family import family_spec
from llmlab.finetune.config import FinetuneConfig
from llmlab.finetune.data import Row, SftBatch, batch_source, pack, padding_tokens, tokenize
from llmlab.finetune.examples import TASK_TEMPLATES, Pieces, ResponseTemplate, load_template, to_pieces

TASKS = {"dialogsum": dialogsum_task, "sentiment": sentiment_task}
WEIGHT = re.compile(r"^(.*):(\d+(?:\.\d+)?)$")


@dataclass
class TrainingRows:
    batches: Callable[[bool, int, int], SftBatch]
    block_size: int
    train_rows: int
    val_rows: int
    sources: list[DataSource]  # each --data source as the model card names it (examples, text hash)


def split_weight(spec: str) -> tuple[str, float]:
    """`file.jsonl:2` -> ("file.jsonl", 2.0); a source without a weight counts once."""
    match = WEIGHT.match(spec)
    if match and not Path(spec).exists():
        weight = float(match.group(2))
        if weight <= 0:
            raise LlmlabError(f"--data {spec}: the weight must be positive", "use e.g. --data a.jsonl:2")
        return match.group(1), weight
    return spec, 1.0


def source_examples(source: str, cfg: FinetuneConfig, chat: ChatTemplate) -> list[Pieces]:
    """One --data source's examples: a shared-data task with its evaluation prompt, or records."""
    if source.startswith("task:"):
        name = source[len("task:") :]
        if name not in TASKS:
            raise LlmlabError(f"unknown task {name!r}", f"use task:{' or task:'.join(TASKS)}")
        task = TASKS[name]()
        template = load_template(cfg.template) if cfg.template else ResponseTemplate(TASK_TEMPLATES[name])
        return to_pieces(task.demonstrations, source, "template", template, chat)
    template = load_template(cfg.template) if cfg.template else None
    return to_pieces(read_records(source, cfg.split), source, cfg.format, template, chat)


def mixed(examples: list[list[Pieces]], weights: list[float], seed: int) -> list[Pieces]:
    """Each source's examples taken `weight` times (a fraction takes a fixed random share), in one list."""
    out: list[Pieces] = []
    for k, (items, weight) in enumerate(zip(examples, weights)):
        whole, part = int(weight), weight - int(weight)
        order = np.random.default_rng([seed, k, 5]).permutation(len(items))
        out += items * whole + [items[i] for i in order[: math.ceil(part * len(items))]]
    return out


def training_rows(
    cfg: FinetuneConfig, base: Checkpoint, world: int, share: slice | None, log: Callable[[str], None]
) -> TrainingRows:
    """Rows of the training and validation examples and the batch source over them."""
    config, tok = base.model.config, base.tokenizer
    spec = family_spec(config)
    block = _block_size(cfg, config.block_size)
    if cfg.method == "prompt-tuning":
        block = min(block, config.block_size - cfg.prompt_tokens)  # the soft prompt takes the first positions
        if cfg.packing:
            raise LlmlabError("--packing with prompt tuning would give each row one prompt for several examples",
                              "leave out --packing")  # fmt: skip
    if spec.seq2seq and (cfg.packing or cfg.train_on_prompt):
        raise LlmlabError("--packing and --train-on-prompt are for decoders: an encoder-decoder reads the prompt "
                          "with its encoder", "leave them out")  # fmt: skip
    eos = tok.decode([tok.require("eos", "to end responses")])
    chat = find_chat_template(base.path if base.path.is_dir() else None, eos, tok.decode(tok.prefix_ids))
    sources = [split_weight(s) for s in cfg.data]
    examples = [source_examples(name, cfg, chat) for name, _ in sources]
    read = [DataSource(name, len(items), hash=_text_hash(items)) for (name, _), items in zip(sources, examples)]
    val: list[Pieces] = []
    if cfg.val_data:
        val = source_examples(cfg.val_data, cfg, chat)
    else:  # held out per source before the weights repeat anything, so no validation example is trained on
        for k, items in enumerate(examples):
            order = np.random.default_rng([cfg.seed, k, 3]).permutation(len(items))
            n_val = max(1, int(len(items) * cfg.val_fraction)) if len(items) > 1 else 0
            val += [items[i] for i in order[:n_val]]
            examples[k] = [items[i] for i in order[n_val:]]
    train = mixed(examples, [w for _, w in sources], cfg.seed)
    if any(fmt == "chat" for fmt in [cfg.format]) or chat.origin != "llmlab default":
        log(f"chat template: {chat.origin}")
    train_rows, report = tokenize(train, tok, spec, block, cfg.train_on_prompt, cfg.drop_long)
    val_rows, val_report = tokenize(val, tok, spec, block, cfg.train_on_prompt, cfg.drop_long)
    log(f"data: {report.line('training')}; {val_report.line('validation')}")
    if cfg.packing:
        train_rows, val_rows = _packed(train_rows, val_rows, block + 1, cfg, log)
    pad = spec.pad_id(tok)
    batches = batch_source(train_rows, val_rows, cfg.batch_size * world, cfg.grad_accum, cfg.seed, pad,
                           spec.start_id(config, tok), cfg.packing, share)  # fmt: skip
    return TrainingRows(batches, block, len(train_rows), len(val_rows), read)


def _text_hash(examples: list[Pieces]) -> str:
    """A hash of the examples' text and which parts train: the same hash, the same fine-tuning data."""
    return digest(*(f"{int(trained)}{text}" for pieces in examples for text, trained in pieces))


def _block_size(cfg: FinetuneConfig, model_block: int) -> int:
    if cfg.block_size is None:
        return model_block
    if not 0 < cfg.block_size <= model_block:
        raise LlmlabError(f"--block-size {cfg.block_size} is outside the model's 1..{model_block} positions",
                          f"use at most {model_block}")  # fmt: skip
    return cfg.block_size


def _packed(train: list[Row], val: list[Row], limit: int, cfg: FinetuneConfig, log: Callable[[str], None]):
    before = padding_tokens(train, cfg.batch_size)
    packed_train = pack(train, limit, cfg.seed)
    after = padding_tokens(packed_train, cfg.batch_size)
    real = sum(len(r.ids) for r in train)
    log(
        f"packing: {len(train):,} examples in {len(packed_train):,} rows; padding per epoch {before:,} -> "
        f"{after:,} tokens ({100 * before / max(1, before + real):.1f}% -> {100 * after / max(1, after + real):.1f}%)"
    )
    return packed_train, pack(val, limit, cfg.seed)
