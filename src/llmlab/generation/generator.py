"""Decoding for decoder-only and encoder-decoder models: KV cache (and cross-attention cache),
batches, greedy and sampling, stop rules. One loop serves both families; only how a step's logits
are computed differs (`_decoder_steps`, `_seq2seq_steps`).

Sampling follows the semantics of `transformers`: temperature, then top-k (ties at the k-th value
kept), then top-p (the smallest set whose probability reaches p, never fewer than one token).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from llmlab.data.collate import pad_rows
from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.generation.config import AUTO_COMPILE_TOKENS, GenerationConfig, compile_choice
from llmlab.generation.constraints import Grammar, RowConstraints, TokenGrammar
from llmlab.generation.decode_step import DecodeStep
from llmlab.generation.text_stream import TextStream
from llmlab.model import LanguageModel
from llmlab.model.cache import SlotCache
from llmlab.model.cpu_packing import can_pack, packed_for_inference, repack
from llmlab.model.soft_prompt import prompt_length
from llmlab.tokenizer import TextTokenizer


@dataclass
class Completion:
    prompt: str
    text: str
    token_ids: list[int]
    finish_reason: str  # "eos", "stop" or "length"


def process_logits(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """Scale by temperature, then mask (to -inf) everything outside top-k and top-p. logits: (B, V)."""
    if temperature != 1.0:
        logits = logits / temperature
    if 0 < top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # probability of the tokens ranked above each one
        remove_sorted = mass_before >= top_p
        remove_sorted[..., 0] = False  # never fewer than one token
        remove = remove_sorted.scatter(-1, order, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def next_tokens(logits: torch.Tensor, config: GenerationConfig, generator: torch.Generator | None) -> torch.Tensor:
    """Pick one token per row from (B, V) logits."""
    if not config.do_sample:
        return logits.argmax(dim=-1)
    probs = process_logits(logits.float(), config.temperature, config.top_k, config.top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _forbid_end(logits: torch.Tensor, eos_id: int, constrained: bool) -> None:
    """min_new_tokens: no end-of-sequence yet, except in a row where a grammar allows nothing else (without
    a grammar every other token is allowed: one write, no per-step search)."""
    if not constrained:
        logits[:, eos_id] = float("-inf")
        return
    others = logits.clone()
    others[:, eos_id] = float("-inf")
    rows = torch.isfinite(others).any(dim=-1)
    logits[rows, eos_id] = float("-inf")


def _identity(params: list[torch.nn.Parameter]) -> list[tuple]:
    return [(p, p.data_ptr(), p.dtype) for p in params]


def _same_tensors(now: list[tuple], then: list[tuple]) -> bool:
    """Whether (parameter, data pointer, dtype) triples name the same tensors (`is`: no ids reused)."""
    return len(now) == len(then) and all(a[0] is b[0] and a[1:] == b[1:] for a, b in zip(now, then))


class Generator:
    """Generates text from a model with the tokenizer it was trained with.

    compile: "on" compiles the decoder's one-token step (generation/decode_step.py), "off" never does,
    "auto" (or $LLMLAB_COMPILE) does once the generator has decoded AUTO_COMPILE_TOKENS tokens."""

    def __init__(self, model: LanguageModel, tokenizer: TextTokenizer, compile: str = "auto") -> None:
        if tokenizer.vocab_size > model.config.vocab_size:  # imported models may pad their vocabulary
            raise LlmlabError(
                f"tokenizer has {tokenizer.vocab_size} tokens but the model's vocabulary is {model.config.vocab_size}",
                "use the tokenizer.json saved with this checkpoint",
            )
        self.family = family_spec(model.config)
        self.family.require_generates(
            "encoder-only models do not generate text", "use llmlab fill-mask or embed with this checkpoint"
        )
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.eos_id = tokenizer.require("eos", "to generate text")
        self.seq2seq = self.family.seq2seq
        self._packed: torch.nn.Module | None = None
        self._packed_version = -1
        self._packed_identity: list[tuple] = []
        self.compile = compile_choice(compile)
        self._decoded = 0  # tokens decoded so far (rows x steps), for compile="auto"
        self._step: DecodeStep | None = None
        self._bound: TokenGrammar | None = None

    @property
    def runner(self) -> torch.nn.Module:
        """The module that decodes: on CPUs, a copy with oneDNN pre-packed weights (bf16 ~1.8x, fp32 ~2x
        faster), re-packed in place whenever the model's weights have changed since (so a compiled step
        that holds the copy stays valid)."""
        if not can_pack(self.model) or torch.is_autocast_enabled("cpu"):  # oneDNN's packed fp32 refuses bf16 input
            return self.model
        params = list(self.model.parameters())
        # a parameter replaced, moved or cast (load_state_dict(assign=True), .to()) needs a new copy
        if self._packed is None or not _same_tensors(_identity(params), self._packed_identity):
            self._packed = packed_for_inference(self.model)
            self._packed_identity = _identity(params)  # after packing: it moves weights into huge pages
        elif sum(p._version for p in params) != self._packed_version:
            repack(self._packed)
        self._packed_version = sum(p._version for p in params)  # bumped by every in-place update
        return self._packed

    def refresh(self) -> None:
        """Re-pack the weights: for callers that update them in place between calls (an RLHF run), since
        PyTorch's fused optimizers write parameters without bumping the version counter read above."""
        if self._packed is not None:
            repack(self._packed)

    def decode_step(self, tokens: int) -> DecodeStep:
        """The one-token step for a call that decodes `tokens` (rows x steps): compiled per `compile`."""
        self._decoded += tokens
        wanted = self.compile == "on" or (self.compile == "auto" and self._decoded >= AUTO_COMPILE_TOKENS)
        runner = self.runner
        stale = self._step is not None and self._step.runner is not runner  # moved, cast, or under autocast
        if self._step is None or stale or (wanted and not self._step.compiled and not self._step.failed):
            self._step = DecodeStep(runner, compile=wanted)
        return self._step

    @property
    def device(self) -> torch.device:
        return self.model.device

    def generate(
        self, prompts: list[str], config: GenerationConfig, grammar: Grammar | None = None
    ) -> list[list[Completion]]:
        """All prompts (x num_samples) decoded together as one batch; returns num_samples per prompt.
        With a grammar every completion that ends before max_new_tokens matches it (constraints.py)."""
        config.validate()
        rows = [p for p in prompts for _ in range(config.num_samples)]
        prompt_ids = []
        for p in rows:  # not a comprehension: Python 3.11 gives one a frame, and the truncation warning counts frames
            prompt_ids.append(self.encode_prompt(p, config))
        outputs = [[] for _ in rows]
        finish = ["length"] * len(rows)
        for new, done in self._decode(prompt_ids, config, self.bind(grammar)):
            for r, token in enumerate(new):
                if not done[r] or finish[r] == "length":
                    outputs[r].append(token)
            for r in range(len(rows)):
                if done[r] and finish[r] == "length":
                    finish[r] = self._finish_reason(outputs[r], config)
        completions = [self._completion(p, ids, f, config) for p, ids, f in zip(rows, outputs, finish)]
        n = config.num_samples
        return [completions[i * n : (i + 1) * n] for i in range(len(prompts))]

    def stream(self, prompt: str, config: GenerationConfig, grammar: Grammar | None = None) -> Iterator[str]:
        """Yield the text of one completion piece by piece as tokens arrive (the server's `TextStream`: a
        partial UTF-8 character or a possible stop string is held back until it is known)."""
        config.validate()
        text = TextStream(self.tokenizer, config.stop)
        for new, _ in self._decode([self.encode_prompt(prompt, config)], config, self.bind(grammar)):
            if new[0] == self.eos_id:
                break
            piece = text.push(new[0])
            if piece:
                yield piece
            if text.stopped:
                return
        rest = text.finish()
        if rest:
            yield rest

    def bind(self, grammar: Grammar | None) -> TokenGrammar | None:
        """The grammar checked against this tokenizer (kept: binding one costs ~1-100 ms)."""
        if grammar is None:
            return None
        if self._bound is None or self._bound.grammar != grammar:
            self._bound = TokenGrammar(grammar, self.tokenizer, self.eos_id)
        return self._bound

    # -- internals -------------------------------------------------------------------------------

    def encode_prompt(self, prompt: str, config: GenerationConfig) -> list[int]:
        block = self.model.config.block_size
        if self.seq2seq:  # the prompt is the encoder's input, ended by end-of-sequence as in training
            if config.max_new_tokens > block:
                raise LlmlabError(
                    f"max-new-tokens {config.max_new_tokens} exceeds the decoder's {block} positions",
                    f"use at most {block} new tokens",
                )
            suffix = len(self.family.prompt_suffix(self.tokenizer))
            ids, budget = self.tokenizer.encode(prompt), block - suffix - prompt_length(self.model)
        else:
            # The tokenizer's own prefix (Llama's <s>); an empty prompt starts a new text.
            ids = self.family.prompt_prefix(self.tokenizer) + self.tokenizer.encode(prompt) or [self.eos_id]
            budget = block - config.max_new_tokens - prompt_length(self.model)  # a soft prompt takes positions too
            if budget < 1:
                raise LlmlabError(
                    f"max-new-tokens {config.max_new_tokens} leaves no room for a prompt in the "
                    f"{block}-token context window",
                    f"use at most {block - 1} new tokens",
                )
        if len(ids) > budget:
            room = f"before {config.max_new_tokens} new tokens " if not self.seq2seq else ""
            if not config.truncate_prompt:
                raise LlmlabError(
                    f"prompt has {len(ids)} tokens but only {budget} fit {room}in the {block}-token context window",
                    "shorten the prompt, lower --max-new-tokens, or pass --truncate-prompt to keep its last tokens",
                )
            warnings.warn(f"prompt truncated from {len(ids)} to its last {budget} tokens", stacklevel=3)
            ids = ids[-budget:]
        return ids + self.family.prompt_suffix(self.tokenizer)

    def _finish_reason(self, ids: list[int], config: GenerationConfig) -> str:
        if ids and ids[-1] == self.eos_id:
            return "eos"
        if config.stop and self._cut_at_stop(self.tokenizer.decode(ids), config) != self.tokenizer.decode(ids):
            return "stop"
        return "length"

    def _cut_at_stop(self, text: str, config: GenerationConfig) -> str:
        cut = min((i for i in (text.find(s) for s in config.stop) if i >= 0), default=len(text))
        return text[:cut]

    def _completion(self, prompt: str, ids: list[int], finish: str, config: GenerationConfig) -> Completion:
        if finish == "eos":
            ids = ids[:-1]
        return Completion(prompt, self._cut_at_stop(self.tokenizer.decode(ids), config), ids, finish)

    @torch.inference_mode()
    def _decode(
        self, prompt_ids: list[list[int]], config: GenerationConfig, grammar: TokenGrammar | None = None
    ) -> Iterator[tuple[list[int], list[bool]]]:
        """Yield (next token of every row, which rows are done) once per step."""
        device, pad = self.device, self.eos_id
        B = len(prompt_ids)
        steps = (self._seq2seq_steps if self.seq2seq else self._decoder_steps)(prompt_ids, config)
        generator = None
        if config.do_sample and config.seed is not None:
            generator = torch.Generator(device=device).manual_seed(config.seed)
        done = torch.zeros(B, dtype=torch.bool, device=device)
        done_list = [False] * B
        stop_done = [False] * B
        generated: list[list[int]] = [[] for _ in range(B)]
        new = None
        constraints = RowConstraints(grammar, B) if grammar is not None else None
        for step in range(config.max_new_tokens):
            logits = steps(new)
            active = [not d for d in done_list]
            if constraints is not None:
                constraints.mask_(logits, active)
            if step < config.min_new_tokens:
                _forbid_end(logits, self.eos_id, constraints is not None)
            new = next_tokens(logits, config, generator).masked_fill_(done, pad)
            done = done | (new == self.eos_id)
            new_list = new.tolist()
            if constraints is not None:
                constraints.advance(new_list, active)
            if config.stop:
                for r in range(B):
                    if not stop_done[r] and not bool(done[r]):
                        generated[r].append(new_list[r])
                        text = self.tokenizer.decode(generated[r])
                        stop_done[r] = any(s in text for s in config.stop)
                done = done | torch.tensor(stop_done, device=device)
            done_list = done.tolist()
            yield new_list, done_list
            if all(done_list):
                return

    def _decoder_steps(
        self, prompt_ids: list[list[int]], config: GenerationConfig
    ) -> Callable[[torch.Tensor | None], torch.Tensor]:
        """Prompts left-padded to one length (every row's last token at the same slot), prefilled into
        the cache on the first call; each later call feeds the previous step's tokens through the
        decoding step shared with the server (compiled or not)."""
        if prompt_length(self.model) or self.model.config.positions == "relative":
            return self._soft_prompt_steps(prompt_ids, config)  # both read the cache's length
        device, c = self.device, self.model.config
        B, P = len(prompt_ids), max(len(p) for p in prompt_ids)
        tokens, valid, positions, mask = self._left_padded(prompt_ids, config)
        runner = self.runner
        cache = SlotCache(c.n_layer, B, c.n_kv_head, P + config.max_new_tokens, c.head_dim,
                          self.model.compute_dtype, device)  # fmt: skip
        decode = self.decode_step(B * config.max_new_tokens)
        state = {"positions": positions, "slot": P}

        def step(new: torch.Tensor | None) -> torch.Tensor:
            if new is None:
                cache.prefill(0)
                return runner(tokens, positions, cache, mask, last_only=True)[:, -1].float()
            slot = state["slot"]
            valid[:, slot] = True
            state["positions"] = state["positions"][:, -1:] + 1
            state["slot"] = slot + 1
            slots = torch.full((B,), slot, dtype=torch.long, device=device)
            return decode(new[:, None], state["positions"], slots, valid[:, None, None, : slot + 1], cache)

        return step

    def _left_padded(self, prompt_ids: list[list[int]], config: GenerationConfig) -> tuple[torch.Tensor, ...]:
        """Prompt tokens left-padded to one length, the validity of every cache slot (prompt and new
        tokens), each row's positions, and the prefill's attention mask (None without padding)."""
        device = self.device
        B, P = len(prompt_ids), max(len(p) for p in prompt_ids)
        tokens, valid = pad_rows(prompt_ids, self.family.pad_id(self.tokenizer), "left")
        valid = torch.cat([valid, torch.zeros((B, config.max_new_tokens), dtype=torch.bool)], dim=1)
        tokens, valid = tokens.to(device), valid.to(device)
        positions = (valid[:, :P].long().cumsum(-1) - 1).clamp(min=0)
        mask = None
        if not bool(valid[:, :P].all()):  # causal and not padding; a padding query sees itself so no row is all -inf
            causal = torch.ones(P, P, dtype=torch.bool, device=device).tril()
            mask = (causal & valid[:, None, None, :P]) | torch.eye(P, dtype=torch.bool, device=device)
        return tokens, valid, positions, mask

    def _soft_prompt_steps(
        self, prompt_ids: list[list[int]], config: GenerationConfig
    ) -> Callable[[torch.Tensor | None], torch.Tensor]:
        """As `_decoder_steps`, eagerly through a `KVCache`, whose length tells the model whether its soft
        prompt has been read yet, and a relative position bias where its queries are."""
        P = max(len(p) for p in prompt_ids)
        tokens, valid, positions, mask = self._left_padded(prompt_ids, config)
        padded = mask is not None
        runner = self.runner
        cache = runner.new_cache(len(prompt_ids), P + config.max_new_tokens)
        state = {"positions": positions, "mask": mask, "slot": P}

        def step(new: torch.Tensor | None) -> torch.Tensor:
            if new is None:
                return runner(tokens, state["positions"], cache, state["mask"], last_only=True)[:, -1].float()
            slot = state["slot"]
            valid[:, slot] = True
            state["positions"] = state["positions"][:, -1:] + 1
            state["mask"] = valid[:, None, None, : slot + 1] if padded else None
            state["slot"] = slot + 1
            return runner(new[:, None], state["positions"], cache, state["mask"], last_only=True)[:, -1].float()

        return step

    def _seq2seq_steps(
        self, prompt_ids: list[list[int]], config: GenerationConfig
    ) -> Callable[[torch.Tensor | None], torch.Tensor]:
        """Encode the (right-padded) prompts once; the decoder starts from its start token and caches
        both its self-attention and its cross-attention keys/values."""
        device = self.device
        B = len(prompt_ids)
        src, src_mask = pad_rows(prompt_ids, self.family.pad_id(self.tokenizer))
        src, src_mask = src.to(device), src_mask.to(device)
        runner = self.runner
        memory = runner.encode(src, src_mask)
        cache = runner.new_cache(B, max(config.max_new_tokens, 1))
        start = self.family.start_id(self.model.config, self.tokenizer)

        def step(new: torch.Tensor | None) -> torch.Tensor:
            tokens = torch.full((B, 1), start, dtype=torch.long, device=device) if new is None else new[:, None]
            return runner.decode(tokens, memory, src_mask, cache, last_only=True)[:, -1].float()

        return step
