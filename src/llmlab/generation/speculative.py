"""Speculative decoding: a cheap drafter proposes k tokens, the target model checks them all in one forward
pass, and as many as it agrees with are kept, plus one token of its own, so one target pass yields 1 to
k+1 tokens. Written here (not taken from vLLM) because the acceptance rule is the subject being taught.

The rule keeps the output distribution exactly the target's (Leviathan et al., 2023; Chen et al., 2023):
draft token x, drawn from the draft's q, is accepted with probability min(1, p(x) / q(x)); on rejection the
replacement is drawn from max(0, p - q), renormalised; if all k are accepted a bonus token is drawn from
p. Greedy is the limit: accept while the target's argmax agrees, then take the target's argmax, so the
text equals plain greedy decoding token for token. p and q are the distributions sampling draws from
after temperature, top-k and top-p, so those settings mean what they mean without a draft.

Drafters: a small model with the same tokenizer (`ModelDrafter`), or prompt lookup (`LookupDrafter`: the
tokens that followed the last occurrence of the context's final n-gram; no model at all, strong when the
output repeats its input). One sequence at a time: speculation is a latency tool for batch 1.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import Completion, Generator, process_logits
from llmlab.model.cpu_packing import can_pack, packed_for_inference
from llmlab.model.soft_prompt import prompt_length
from llmlab.tokenizer import TextTokenizer, tokenizer_fingerprint


@dataclass
class SpeculationStats:
    proposed: int = 0  # draft tokens offered to the target
    accepted: int = 0  # of those, kept
    target_passes: int = 0  # forward passes of the target (prefill included)
    generated: int = 0

    @property
    def acceptance_rate(self) -> float:
        return self.accepted / self.proposed if self.proposed else 0.0

    @property
    def tokens_per_pass(self) -> float:
        return self.generated / self.target_passes if self.target_passes else 0.0


def distributions(logits: torch.Tensor, config: GenerationConfig) -> torch.Tensor:
    """(rows, V) probabilities that sampling with `config` draws from (one-hot at the argmax when greedy)."""
    logits = logits.float()
    if not config.do_sample:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    return process_logits(logits, config.temperature, config.top_k, config.top_p).softmax(-1)


def verify(p: torch.Tensor, q: torch.Tensor, drafts: list[int], rng: torch.Generator | None) -> tuple[int, int]:
    """The acceptance rule. p: (k+1, V) target distributions after each prefix; q: (k, V) the draft's
    (one-hot rows for a deterministic drafter). Returns (drafts accepted, the token that follows them).
    rng None means greedy: p is one-hot, so agreement is equality with the target's argmax."""
    if rng is None:
        for i, x in enumerate(drafts):
            if int(p[i].argmax()) != x:
                return i, int(p[i].argmax())
        return len(drafts), int(p[len(drafts)].argmax())
    q = q.to(p.device) if drafts else q  # a lookup drafter's one-hot rows are made on the CPU
    for i, x in enumerate(drafts):
        ratio = float(p[i, x] / q[i, x].clamp(min=1e-20))
        if float(torch.rand((), generator=rng, device=rng.device)) < ratio:  # min(1, ratio): a ratio >= 1 passes
            continue
        residual = (p[i] - q[i]).clamp(min=0)
        total = float(residual.sum())
        row = residual / total if total > 0 else p[i]
        return i, int(torch.multinomial(row, 1, generator=rng))
    return len(drafts), int(torch.multinomial(p[len(drafts)], 1, generator=rng))


def causal_mask(start: int, new: int, device: torch.device) -> torch.Tensor:
    """(1, 1, new, start+new): query i (at position start+i) sees keys 0..start+i, after a filled cache."""
    keys = torch.arange(start + new, device=device)
    return (keys[None, :] <= start + torch.arange(new, device=device)[:, None])[None, None]


class CachedModel:
    """A decoder with a KV cache that can be rolled back: `extend(tokens)` returns the logits after each of
    the tokens fed (the cache keeps their keys); `keep(n)` forgets everything after the first n positions."""

    def __init__(self, model: torch.nn.Module, max_len: int) -> None:
        self.model, self.cache = model, model.new_cache(1, max_len)
        self.ids: list[int] = []  # what the cache holds, in order

    def extend(self, tokens: list[int]) -> torch.Tensor:
        start, device = self.cache.length, self.cache.keys[0].device
        x = torch.tensor([tokens], device=device)
        positions = torch.arange(start, start + len(tokens), device=device)
        logits = self.model(x, positions, self.cache, causal_mask(start, len(tokens), device))[0]
        self.ids += tokens
        return logits.float()

    def keep(self, n: int) -> None:
        self.cache.length = min(self.cache.length, n)
        del self.ids[n:]

    def sync(self, context: list[int]) -> list[int]:
        """Roll back to the longest common prefix with `context`; return what must still be fed."""
        same = 0
        for a, b in zip(self.ids, context):
            if a != b:
                break
            same += 1
        self.keep(min(same, len(context) - 1))  # the last token is always fed: its logits are the next step's
        return context[len(self.ids) :]


class ModelDrafter:
    """k tokens from a small model, sampled with the same settings (greedy when the target is greedy)."""

    def __init__(self, model: torch.nn.Module) -> None:
        runner = packed_for_inference(model) if can_pack(model) else model  # as the generator decodes
        self.cached = CachedModel(runner, model.config.block_size)

    def propose(self, context: list[int], k: int, config: GenerationConfig,
                rng: torch.Generator | None) -> tuple[list[int], torch.Tensor]:  # fmt: skip
        k = min(k, self.cached.cache.max_len - len(context))  # the draft's own context window
        if k < 1:
            return [], torch.zeros(0, 1)
        logits = self.cached.extend(self.cached.sync(context))[-1:]
        drafts, rows = [], []
        for step in range(k):
            q = distributions(logits, config)[0]
            token = int(q.argmax()) if not config.do_sample else int(torch.multinomial(q, 1, generator=rng))
            drafts.append(token)
            rows.append(q)
            if step < k - 1:
                logits = self.cached.extend([token])
        return drafts, torch.stack(rows)


class LookupDrafter:
    """Prompt lookup: the k tokens that followed the most recent earlier occurrence of the context's last
    n tokens (n from `max_ngram` down to 1); nothing when the context never repeats."""

    def __init__(self, vocab_size: int, max_ngram: int = 3) -> None:
        self.vocab_size, self.max_ngram = vocab_size, max_ngram

    def propose(self, context: list[int], k: int, config: GenerationConfig,
                rng: torch.Generator | None) -> tuple[list[int], torch.Tensor]:  # fmt: skip
        for n in range(min(self.max_ngram, len(context) - 1), 0, -1):
            tail = context[-n:]
            for start in range(len(context) - n - 1, -1, -1):
                if context[start : start + n] == tail:
                    drafts = context[start + n : start + n + k]
                    return drafts, torch.nn.functional.one_hot(torch.tensor(drafts), self.vocab_size).float()
        return [], torch.zeros(0, self.vocab_size)


def speculate(target: CachedModel, drafter, prompt: list[int], config: GenerationConfig, k: int, eos_id: int,
              stats: SpeculationStats, stopped=lambda new: False) -> list[int]:  # fmt: skip
    """New token ids for one prompt: draft, verify in one target pass, keep the agreed prefix and one more;
    until end-of-sequence, max_new_tokens, or `stopped(new)` (stop strings) says so. The target's cache must
    hold len(prompt) + max_new_tokens - 1 positions: a pass never feeds more than the tokens still to come."""
    rng = None
    if config.do_sample:
        seed = config.seed if config.seed is not None else int(torch.randint(2**31, ()))
        rng = torch.Generator(device=target.cache.keys[0].device).manual_seed(seed)  # where the logits are
    context, new = list(prompt), []
    while len(new) < config.max_new_tokens:
        room = min(k, config.max_new_tokens - len(new) - 1)  # drafts past the last token would be thrown away
        drafts, q = drafter.propose(context, room, config, rng) if room > 0 else ([], None)
        logits = target.extend(target.sync(context) + drafts)[-(len(drafts) + 1) :]
        for i in range(len(drafts) + 1):
            if len(new) + i < config.min_new_tokens:
                logits[i, eos_id] = float("-inf")
        p = distributions(logits, config)
        accepted, token = verify(p, q, drafts, rng)
        stats.proposed += len(drafts)
        stats.accepted += accepted
        stats.target_passes += 1
        target.keep(len(context) + accepted)
        if _extend(new, context, drafts[:accepted] + [token], eos_id, stopped):
            break
    new = new[: config.max_new_tokens]
    stats.generated += len(new)
    return new


def _extend(new: list[int], context: list[int], step: list[int], eos_id: int, stopped) -> bool:
    """Append the step's tokens one by one, as plain decoding would emit them; True at end-of-sequence or
    once a stop string is complete (the step's later tokens are not kept)."""
    for token in step:
        new.append(token)
        context.append(token)
        if token == eos_id or stopped(new):
            return True
    return False


def model_drafter(target: Generator, draft_model: torch.nn.Module, draft_tokenizer: TextTokenizer) -> ModelDrafter:
    """A draft model for this target, refused unless both read text with the same tokenizer."""
    if tokenizer_fingerprint(draft_tokenizer) != tokenizer_fingerprint(target.tokenizer):
        raise LlmlabError("the draft model's tokenizer differs from the target's, so its token ids mean other text",
                          "draft with a model trained with the same tokenizer, or use --draft lookup")  # fmt: skip
    if (
        not family_spec(draft_model.config).causal
        or family_spec(draft_model.config).seq2seq
        or prompt_length(draft_model)
    ):
        raise LlmlabError("the draft must be a decoder-only model without a soft prompt",
                          "draft with a small decoder of the same tokenizer, or use --draft lookup")  # fmt: skip
    if draft_model.config.vocab_size != target.model.config.vocab_size:
        raise LlmlabError(f"the draft's vocabulary has {draft_model.config.vocab_size} entries, the target's "
                          f"{target.model.config.vocab_size}", "draft with a model of the same vocabulary")  # fmt: skip
    return ModelDrafter(draft_model.eval())


def speculative_generate(generator: Generator, prompts: list[str], config: GenerationConfig, drafter,
                         k: int = 4) -> tuple[list[list[Completion]], SpeculationStats]:  # fmt: skip
    """As `Generator.generate`, one sequence at a time with a drafter; also the acceptance statistics."""
    config.validate()
    if k < 1:
        raise LlmlabError(f"--speculate must be >= 1, got {k}", "propose e.g. 4 tokens a step")
    if generator.seq2seq or prompt_length(generator.model):
        raise LlmlabError("speculative decoding here is for decoder-only models without a soft prompt",
                          "generate without --draft")  # fmt: skip
    stats, results, tok = SpeculationStats(), [], generator.tokenizer

    def stopped(new: list[int]) -> bool:
        return bool(config.stop) and any(s in tok.decode(new) for s in config.stop)

    for prompt in prompts:
        ids, samples = generator.encode_prompt(prompt, config), []
        for n in range(config.num_samples):
            seeded = config if config.seed is None else dataclasses.replace(config, seed=config.seed + n)
            # encode_prompt left room for max_new_tokens in the block: this is within it, one position to spare
            target = CachedModel(generator.runner, len(ids) + config.max_new_tokens)
            with torch.inference_mode():
                new = speculate(target, drafter, ids, seeded, k, generator.eos_id, stats, stopped)
            samples.append(generator._completion(prompt, new, generator._finish_reason(new, config), config))
        results.append(samples)
    return results, stats
