"""Continuous batching: one decoding loop serves every running sequence. New sequences join between steps
(their prompt is prefilled into a free slot of the KV cache, then they decode with the others) and finished
ones leave at once, so a short request never waits for a long one to end.

Written here rather than taken from vLLM because the scheduler is the subject being taught: a bounded
queue, a fixed number of slots (`SlotCache`: one length per sequence), a step that feeds every running
sequence its last token at its own position behind a per-row mask, and per-sequence sampling with the
generator's own `process_logits` / `next_tokens`, so offline and served decoding sample alike.
The loop runs in one thread; callers talk to it through `submit` / `cancel` and the `emit` callback."""

from __future__ import annotations

import itertools
import sys
import threading
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.generation.constraints import Grammar, RowConstraints, TokenGrammar
from llmlab.generation.decode_step import DecodeStep
from llmlab.generation.generator import next_tokens
from llmlab.generation.text_stream import TextStream
from llmlab.model import LanguageModel
from llmlab.model.cache import SlotCache
from llmlab.model.cpu_packing import can_pack, packed_for_inference
from llmlab.model.huge_pages import into_huge_pages
from llmlab.model.lora import MultiLoRALinear, select_adapters
from llmlab.tokenizer import TextTokenizer


def _common_prefix(a: list[int], b: list[int], limit: int) -> int:
    """The length of the longest common prefix of a and b, at most `limit`."""
    n = 0
    for x, y in zip(a[:limit], b[:limit]):
        if x != y:
            break
        n += 1
    return n


class _SlotDecoder(torch.nn.Module):
    """An encoder-decoder's decoder, called as the decoding step calls a decoder-only model."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor, positions: torch.Tensor, cache: SlotCache, mask: torch.Tensor,
                last_only: bool = False) -> torch.Tensor:  # fmt: skip
        return self.model.decode_slots(tokens, positions, cache, mask, last_only)


class QueueFull(Exception):
    """The queue is at its bound: the caller answers 429."""


@dataclass
class Sampling:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    logprobs: int | None = None  # the top alternatives to report per token (0: the sampled token's only)
    grammar: TokenGrammar | None = None  # structured output: what the completion must match (Engine.bind)

    def config(self) -> GenerationConfig:
        return GenerationConfig(max_new_tokens=self.max_tokens, temperature=self.temperature, top_k=self.top_k,
                                top_p=self.top_p, stop=self.stop)  # fmt: skip


@dataclass
class Event:
    """What a sequence sends its caller: text (and its token's log-probability), then the end."""

    text: str = ""
    token_id: int | None = None
    logprob: float | None = None
    top_logprobs: dict[str, float] | None = None
    finish_reason: str | None = None  # set on the last event: stop, length, cancelled or error (a bug, logged)
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class Sequence:
    id: int
    prompt_ids: list[int]
    sampling: Sampling
    emit: Callable[[Event], None]
    stream: TextStream
    generator: torch.Generator | None
    adapter: int = -1
    slot: int = -1
    generated: int = 0
    last: int = 0
    submitted: float = field(default_factory=time.perf_counter)
    first_token: float | None = None
    last_time: float = 0.0
    cancelled: bool = False
    constraint: RowConstraints | None = None  # the grammar's state for this sequence


@dataclass
class EngineStats:
    running: int = 0
    queued: int = 0
    steps: int = 0
    prefix_tokens: int = 0  # prompt tokens whose keys were reused from a slot instead of computed
    on_first_token: Callable[[float], None] | None = None  # seconds from submission (metrics)
    on_token: Callable[[float], None] | None = None  # seconds between a sequence's tokens


class Engine:
    def __init__(self, model: LanguageModel, tokenizer: TextTokenizer, max_running: int = 16, max_queue: int = 64,
                 context: int | None = None, compile: bool = False, prefix_cache: int = 16) -> None:  # fmt: skip
        """prefix_cache: reuse a prompt's first tokens from any slot that holds them, when they are at least
        this many (0: never)."""
        self.model, self.tokenizer = model.eval(), tokenizer
        # several adapters on one base (MultiLoRALinear): each step tells the layers every row's adapter
        self.adapters = any(isinstance(m, MultiLoRALinear) for m in model.modules())
        self.runner = packed_for_inference(model) if can_pack(model) and not self.adapters else model
        if self.runner is model:  # packing moves the weights into 2 MiB pages; unpacked, every step reads them too
            into_huge_pages(model)
        c = model.config
        family = family_spec(c)
        family.require_generates("an encoder-only model does not generate text", "serve a decoder or encoder-decoder")
        # an encoder-decoder: the prompt is the encoder's, encoded once at admission; the decoder decodes in slots
        self.seq2seq, self.start_id = family.seq2seq, family.start_id(c, tokenizer)
        # the step generate runs too; compiled unless adapters are served (their per-row choice is eager state)
        # or the model is an encoder-decoder (its step reads per-row source lengths: eager, for now)
        step_runner = _SlotDecoder(self.runner) if self.seq2seq else self.runner
        self.decode = DecodeStep(step_runner, compile=compile and not self.adapters and not self.seq2seq)
        self.context = min(context or c.block_size, c.block_size)  # the decoder's positions
        self.eos_id = tokenizer.require("eos", "to end completions")
        n_layer = c.n_decoder_layer if self.seq2seq else c.n_layer
        self.cache = SlotCache(n_layer, max_running, c.n_kv_head, self.context, c.head_dim, model.compute_dtype,
                               model.device)  # fmt: skip
        if self.seq2seq:
            self.cache.with_cross(n_layer, c.block_size)
        self.lengths = [0] * max_running
        # prefix sharing: the tokens whose keys each slot holds (from position 0), and under which adapter;
        # a slot keeps them after its sequence ends, until another prompt is written over them
        self.prefix_cache = 0 if self.seq2seq else prefix_cache
        self.held: list[tuple[int, list[int]]] = [(-2, []) for _ in range(max_running)]
        self.slots: list[Sequence | None] = [None] * max_running
        self.max_queue = max_queue
        self.queue: deque[Sequence] = deque()
        self.stats = EngineStats()
        self._ids = itertools.count()
        self._grammars: dict[Grammar, TokenGrammar] = {}
        self._wake = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="llmlab-engine", daemon=True)

    # -- the caller's side -------------------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def warm_up(self) -> None:
        """Compile the decoding step before the first request (one row, then several), so no client waits
        for it. Call it before `start()`: it writes into free slots (a prefill overwrites them), which only
        holds while the loop is not yet running."""
        if self._thread.is_alive():
            raise RuntimeError("Engine.warm_up() runs before start(): the loop would share the cache with it")
        if not self.decode.compiled:
            return
        device = self.model.device
        for rows in (1, min(2, len(self.slots))):
            zeros = torch.zeros(rows, dtype=torch.long, device=device)
            mask = torch.ones(rows, 1, 1, 2, dtype=torch.bool, device=device)
            self.decode(zeros[:, None], zeros[:, None], zeros, mask, self.cache)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel what is queued and running, end the loop."""
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join(timeout)

    def submit(self, prompt_ids: list[int], sampling: Sampling, emit: Callable[[Event], None],
               adapter: int = -1) -> Sequence:  # fmt: skip
        """Queue a sequence (for `adapter`, an index into the model's MultiLoRALinear adapters, or -1: the base);
        raises QueueFull when the queue is at its bound and LlmlabError when it cannot fit."""
        self._check_fits(prompt_ids, sampling.max_tokens)
        generator = None
        if sampling.seed is not None:
            generator = torch.Generator(device=self.model.device).manual_seed(sampling.seed)
        stream = TextStream(self.tokenizer, sampling.stop)
        seq = Sequence(next(self._ids), prompt_ids, sampling, emit, stream, generator, adapter=adapter)
        if sampling.grammar is not None:
            seq.constraint = RowConstraints(sampling.grammar, 1)
        with self._wake:
            if len(self.queue) >= self.max_queue:
                raise QueueFull(f"{len(self.queue)} requests are waiting")
            self.queue.append(seq)
            self.stats.queued = len(self.queue)
            self._wake.notify()
        return seq

    def room(self, prompt_tokens: int) -> int:
        """The most tokens a completion of a prompt this long can have (the default of max_tokens)."""
        return self.context if self.seq2seq else max(self.context - prompt_tokens, 1)

    def prompt_room(self, max_tokens: int) -> int:
        """The most prompt tokens that leave room for `max_tokens` new ones."""
        return self.cache.cross.max_source if self.seq2seq else self.context - max_tokens

    def _check_fits(self, prompt_ids: list[int], max_tokens: int) -> None:
        """A prompt and a completion that fit the context, or an error that says by how much they do not."""
        if not prompt_ids:
            raise LlmlabError("the prompt is empty", "send at least one token of prompt")
        if self.seq2seq:  # encoder and decoder each have their own positions
            source = self.cache.cross.max_source
            if len(prompt_ids) > source:
                raise LlmlabError(f"the prompt has {len(prompt_ids)} tokens: {len(prompt_ids) - source} more than "
                                  f"the encoder's context of {source}", "shorten the prompt")  # fmt: skip
            if max_tokens > self.context:
                raise LlmlabError(f"max_tokens is {max_tokens}: {max_tokens - self.context} more than the decoder's "
                                  f"context of {self.context}", "lower max_tokens")  # fmt: skip
        elif max_tokens > self.context - len(prompt_ids):
            raise LlmlabError(f"the prompt has {len(prompt_ids)} tokens and max_tokens is {max_tokens}: "
                              f"{len(prompt_ids) + max_tokens - self.context} more than the context of "
                              f"{self.context}", "shorten the prompt or lower max_tokens")  # fmt: skip

    def bind(self, grammar: Grammar) -> TokenGrammar:
        """The grammar checked against the tokenizer, kept for the next requests that send it (~20 ms each)."""
        with self._wake:
            bound = self._grammars.pop(grammar, None)
        bound = bound or TokenGrammar(grammar, self.tokenizer, self.eos_id)
        with self._wake:
            self._grammars[grammar] = bound  # the most recent last
            while len(self._grammars) > 32:
                self._grammars.pop(next(iter(self._grammars)))
        return bound

    def cancel(self, seq: Sequence) -> None:
        """Stop a sequence (its client went away): its slot is freed before the next step."""
        seq.cancelled = True
        with self._wake:
            self._wake.notify()

    # -- the loop --------------------------------------------------------------------------------

    def _run(self) -> None:
        while True:
            with self._wake:
                while not self._stopping and not self.queue and not any(self.slots):
                    self._wake.wait()
                if self._stopping:
                    break
            self._drop_cancelled()
            try:
                self._admit()
                if any(self.slots):
                    self._step()
            except Exception:  # a bug must not stop the server: end the running sequences with an error, go on
                traceback.print_exc(file=sys.stderr)
                for seq in filter(None, self.slots):
                    self._finish(seq, "error")
        for seq in [*self.queue, *filter(None, self.slots)]:
            seq.emit(Event(finish_reason="cancelled", prompt_tokens=len(seq.prompt_ids),
                           completion_tokens=seq.generated))  # fmt: skip
        self.queue.clear()
        self.slots = [None] * len(self.slots)
        self.stats.running = self.stats.queued = 0

    def _drop_cancelled(self) -> None:
        for seq in self.slots:
            if seq is not None and seq.cancelled:
                self._finish(seq, "cancelled")
        with self._wake:
            kept = [s for s in self.queue if not s.cancelled]
            for seq in self.queue:
                if seq.cancelled:
                    seq.emit(Event(finish_reason="cancelled", prompt_tokens=len(seq.prompt_ids)))
            self.queue = deque(kept)
            self.stats.queued = len(self.queue)

    def _admit(self) -> None:
        """Prefill queued sequences into free slots (the lowest first, so decoding steps stay short)."""
        while None in self.slots:
            with self._wake:
                if not self.queue:
                    return
                seq = self.queue.popleft()
                self.stats.queued = len(self.queue)
            seq.slot = self.slots.index(None)
            self.slots[seq.slot] = seq
            self.stats.running = sum(s is not None for s in self.slots)
            try:
                logits = self._prefill(seq)
            except Exception:  # this prompt's failure ends this sequence alone
                traceback.print_exc(file=sys.stderr)
                self._finish(seq, "error")
                continue
            self._take_or_fail(seq, logits)

    @torch.inference_mode()
    def _prefill(self, seq: Sequence) -> torch.Tensor:
        """The sequence's prompt read into its slot: the next token's logits (V,). A decoder reads the prompt;
        an encoder-decoder encodes it, stores each layer's cross-attention keys in the slot, and reads its
        decoder's start token."""
        ids = torch.tensor([seq.prompt_ids], device=self.model.device)
        if self.adapters:
            select_adapters(self.runner, torch.tensor([seq.adapter], device=ids.device))
        if self.seq2seq:
            self.cache.prefill(seq.slot)
            start = torch.full((1, 1), self.start_id, dtype=torch.long, device=ids.device)
            logits = self.runner.decode(start, self.runner.encode(ids), None, self.cache, last_only=True)
            self.lengths[seq.slot] = 1
        else:
            start = self._shared_prefix(seq)
            self.held[seq.slot] = (seq.adapter, seq.prompt_ids[:start])  # all it holds until the prefill ends
            self.cache.prefill(seq.slot, start)
            P = len(seq.prompt_ids)
            positions = torch.arange(start, P, device=ids.device)
            # after a shared prefix the new queries see it all, and each other causally
            mask = (torch.arange(P, device=ids.device) <= positions[:, None])[None, None] if start else None
            logits = self.runner(ids[:, start:], positions, self.cache, mask, last_only=True)
            self.lengths[seq.slot] = P
            self.held[seq.slot] = (seq.adapter, list(seq.prompt_ids))
        return logits[0, -1].float()

    def _shared_prefix(self, seq: Sequence) -> int:
        """How many of the prompt's first tokens already have their keys in the sequence's slot: the longest
        prefix any slot holds under the same adapter (copied over from another slot), if long enough. Like
        vLLM's automatic prefix caching, at the granularity of a slot: a system prompt that every request
        repeats is read once, not once per request. At least the last prompt token is always computed."""
        if not self.prefix_cache:
            return 0
        best, source = 0, -1
        for slot, (adapter, tokens) in enumerate(self.held):
            if adapter == seq.adapter:
                n = _common_prefix(tokens, seq.prompt_ids, len(seq.prompt_ids) - 1)
                best, source = (n, slot) if n > best else (best, source)
        if best < self.prefix_cache:
            return 0
        if source != seq.slot:
            self.cache.copy_prefix(source, seq.slot, best)
        self.stats.prefix_tokens += best
        return best

    def _step(self) -> None:
        """One token for every running sequence, each at its own position. A free slot below the last running
        one rides along: its token is written past the prefix the slot still holds, so nothing shared is lost."""
        rows = max(i for i, s in enumerate(self.slots) if s is not None) + 1
        device = self.model.device
        at = [self.lengths[i] if s is not None else self._free_position(i) for i, s in enumerate(self.slots[:rows])]
        lengths = torch.tensor(at, device=device)
        tokens = torch.tensor([[s.last if s is not None else 0] for s in self.slots[:rows]], device=device)
        read = max(self.lengths[i] for i, s in enumerate(self.slots[:rows]) if s is not None) + 1
        mask = torch.arange(read, device=device)[None, :] <= lengths[:, None]  # its own keys and the new one
        if self.adapters:
            select_adapters(
                self.runner, torch.tensor([s.adapter if s else -1 for s in self.slots[:rows]], device=device)
            )
        logits = self.decode(tokens, lengths[:, None], lengths, mask[:, None, None, :], self.cache)
        self.stats.steps += 1
        for slot in range(rows):
            seq = self.slots[slot]
            if seq is not None:
                self.lengths[slot] += 1
                if self.prefix_cache:
                    self.held[slot][1].append(seq.last)  # its keys are in the slot now
                self._take_or_fail(seq, logits[slot])

    def _free_position(self, slot: int) -> int:
        """Where a free slot's ride-along token is written: right after the prefix it holds (`_finish` keeps
        that prefix shorter than the context, so this position is never one of its tokens)."""
        return min(len(self.held[slot][1]), self.context - 1)

    def _take_or_fail(self, seq: Sequence, logits: torch.Tensor) -> None:
        """`_take`, where one sequence's failure (its grammar, its sampling) ends that sequence alone."""
        try:
            self._take(seq, logits)
        except Exception:
            traceback.print_exc(file=sys.stderr)
            self._finish(seq, "error")

    def _take(self, seq: Sequence, logits: torch.Tensor) -> None:
        """Sample the sequence's next token from its logits, send its text, and end it if it is done."""
        config = seq.sampling.config()
        raw = logits
        if seq.constraint is not None:  # -inf on every token the grammar forbids next (logprobs stay the model's)
            logits = logits.clone()
            seq.constraint.mask_(logits[None], [True])
        token = int(next_tokens(logits[None], config, seq.generator)[0])
        if seq.constraint is not None:
            seq.constraint.advance([token], [True])
        now = time.perf_counter()
        if seq.first_token is None:
            seq.first_token = now
            if self.stats.on_first_token:
                self.stats.on_first_token(now - seq.submitted)
        elif self.stats.on_token:
            self.stats.on_token(now - seq.last_time)
        seq.last_time = now
        seq.generated += 1
        seq.last = token
        event = Event(token_id=token)
        if seq.sampling.logprobs is not None:
            self._logprobs(event, raw, token, seq.sampling.logprobs)
        if token == self.eos_id:
            event.text = seq.stream.finish()
            return self._finish(seq, "stop", event)
        event.text = seq.stream.push(token)
        if seq.stream.stopped:
            return self._finish(seq, "stop", event)
        if seq.generated >= seq.sampling.max_tokens or self.lengths[seq.slot] >= self.context:
            event.text += seq.stream.finish()
            return self._finish(seq, "length", event)
        seq.emit(event)

    def _logprobs(self, event: Event, logits: torch.Tensor, token: int, top: int) -> None:
        logps = torch.log_softmax(logits, dim=-1)
        event.logprob = float(logps[token])
        if top:
            values, ids = logps.topk(top)
            event.top_logprobs = {self.tokenizer.decode([int(i)]): float(v) for v, i in zip(values, ids)}

    def _finish(self, seq: Sequence, reason: str, last: Event | None = None) -> None:
        event = last or Event()
        event.finish_reason = reason
        event.prompt_tokens, event.completion_tokens = len(seq.prompt_ids), seq.generated
        if seq.slot >= 0 and self.slots[seq.slot] is seq:
            self.slots[seq.slot] = None
            self.lengths[seq.slot] = 0
            adapter, tokens = self.held[seq.slot]
            self.held[seq.slot] = (adapter, tokens[: self.context - 1])  # room for ride-along tokens after it
        self.stats.running = sum(s is not None for s in self.slots)
        seq.emit(event)
