"""A conversation with a model: the messages so far, rendered with the model's chat template, fitted
into its context window (the oldest turns dropped first, the system message kept, and the caller told),
and each reply streamed as it is generated."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from llmlab.data.chat import ChatTemplate, find_chat_template
from llmlab.errors import LlmlabError
from llmlab.generation.config import GenerationConfig
from llmlab.generation.constraints import Grammar
from llmlab.generation.generator import Generator
from llmlab.model.soft_prompt import prompt_length


@dataclass
class ChatSession:
    generator: Generator
    template: ChatTemplate
    generation: GenerationConfig
    system: str | None = None
    history: list[dict[str, str]] = field(default_factory=list)  # user, assistant and tool turns, oldest first
    notes: list[str] = field(default_factory=list)  # what the caller should be told (turns dropped)
    preamble: str = ""  # what the model must know besides the system message (the tools it may call)

    @classmethod
    def for_checkpoint(cls, ckpt, generation: GenerationConfig, system: str | None = None) -> ChatSession:
        tok = ckpt.tokenizer
        eos = tok.decode([tok.require("eos", "to end replies")])
        template = find_chat_template(ckpt.path if ckpt.path.is_dir() else None, eos, tok.decode(tok.prefix_ids))
        return cls(Generator(ckpt.model, tok), template, generation, system)

    def reset(self) -> None:
        self.history.clear()

    def messages(self, turns: list[dict[str, str]]) -> list[dict[str, str]]:
        system = "\n\n".join(part for part in (self.system, self.preamble) if part)
        return ([{"role": "system", "content": system}] if system else []) + turns

    def prompt(self) -> str:
        """The conversation with the generation prompt, fitted to the context: whole exchanges are dropped
        from the start until it fits; the newest user turn alone must fit."""
        budget = self._budget()
        turns = list(self.history)
        while True:
            text = self._strip_prefix(self.template.render(self.messages(turns), add_generation_prompt=True))
            if len(self.generator.tokenizer.encode(text)) <= budget:
                break
            if len(turns) <= 1:
                raise LlmlabError(f"the message alone does not fit the model's {budget}-token budget",
                                  "write a shorter message, a shorter --system, or lower --max-new-tokens")  # fmt: skip
            dropped = 2 if turns[0]["role"] == "user" and len(turns) > 2 else 1
            turns = turns[dropped:]
            self.notes.append(f"context full: the oldest {dropped} turn{'s' * (dropped > 1)} dropped")
        self.history[:] = turns
        return text

    def send(self, text: str) -> Iterator[str]:
        """Add the user's message, stream the reply, and keep it in the history."""
        self.history.append({"role": "user", "content": text})
        yield from self.respond()

    def respond(self, grammar: Grammar | None = None) -> Iterator[str]:
        """Stream the assistant's next turn (held to `grammar` if given) and keep it in the history."""
        reply = []
        for piece in self.generator.stream(self.prompt(), self.reply_config(), grammar):
            reply.append(piece)
            yield piece
        self.history.append({"role": "assistant", "content": "".join(reply).strip()})

    def _budget(self) -> int:
        block = self.generator.model.config.block_size - prompt_length(self.generator.model)  # a soft prompt
        suffix = len(self.generator.family.prompt_suffix(self.generator.tokenizer))
        prefix = len(self.generator.family.prompt_prefix(self.generator.tokenizer))
        return block - suffix if self.generator.seq2seq else block - self.generation.max_new_tokens - prefix

    def _strip_prefix(self, text: str) -> str:
        """A template that writes the tokenizer's prefix (Llama's <s>) would get it twice: the generator adds it."""
        bos = self.template.bos_token
        return text[len(bos) :] if bos and text.startswith(bos) else text

    def reply_config(self) -> GenerationConfig:
        """The settings of a reply: the default template's next user turn also ends it."""
        marker = "\n<|user|>" if self.template.origin == "llmlab default" else None
        stop = sorted({*self.generation.stop, marker} - {None})
        return GenerationConfig(**{**self.generation.to_dict(), "stop": stop})
