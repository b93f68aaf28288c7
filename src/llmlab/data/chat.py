"""Chat messages -> text, with the model's own chat template when it has one.

A Hugging Face model ships its template as Jinja in `tokenizer_config.json` (`chat_template`); it is
rendered here as transformers renders it: a sandboxed Jinja environment (a template is code from the
internet), `trim_blocks`/`lstrip_blocks`, `raise_exception`, the messages, the special tokens and
`add_generation_prompt`. A model without one gets `DEFAULT_TEMPLATE`:

    <|system|>
    You are ...
    <|user|>
    Hello
    <|assistant|>
    Hi!<eos>

Training needs to know which characters are the assistant's: `assistant_spans` renders the
conversation up to each assistant turn with the generation prompt, and again with the turn, and the
difference is that turn as the template writes it (its end-of-turn tokens included).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from llmlab.errors import LlmlabError

ROLES = ("system", "user", "assistant")
DEFAULT_TEMPLATE = (  # newlines as expressions: trim_blocks would eat a literal one after a tag
    "{% for m in messages %}{% if not loop.first %}{{ '\\n' }}{% endif %}"
    "{{ '<|' + m['role'] + '|>\\n' + m['content'] }}{% if m['role'] == 'assistant' %}{{ eos_token }}{% endif %}"
    "{% endfor %}{% if add_generation_prompt %}{% if messages %}{{ '\\n' }}{% endif %}{{ '<|assistant|>\\n' }}"
    "{% endif %}"
)


@dataclass(frozen=True)
class ChatTemplate:
    source: str  # Jinja text
    eos_token: str
    bos_token: str = ""
    origin: str = "llmlab default"  # where it came from, for the run's log

    def render(self, messages: list[dict[str, str]], add_generation_prompt: bool = False) -> str:
        try:
            return _compiled(self.source).render(
                messages=messages, add_generation_prompt=add_generation_prompt,
                eos_token=self.eos_token, bos_token=self.bos_token,
            )  # fmt: skip
        except Exception as exc:  # a template is someone else's code: any failure is one line
            raise LlmlabError(f"the chat template ({self.origin}) failed to render: {exc}",
                              "fix the template or pass --template with another one") from None  # fmt: skip

    def prompt_and_turns(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """The rendered conversation as (text, is_assistant) pieces, in order."""
        check_messages(messages)
        pieces: list[tuple[str, bool]] = []
        done = ""
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            before = self.render(messages[:i], add_generation_prompt=True)
            after = self.render(messages[: i + 1])
            if not (before.startswith(done) and after.startswith(before)):
                raise LlmlabError(f"the chat template ({self.origin}) does not render a conversation as a "
                                  "growing prefix, so assistant turns cannot be located",
                                  "use a template that appends each turn")  # fmt: skip
            pieces += [(before[len(done) :], False), (after[len(before) :], True)]
            done = after
        if self.bos_token and pieces and pieces[0][0].startswith(self.bos_token):  # the tokenizer's prefix is
            pieces[0] = (pieces[0][0][len(self.bos_token) :], pieces[0][1])  # added as ids, not as text
        return [(text, trained) for text, trained in pieces if text]


def _raise(message: str) -> None:
    raise ValueError(message)


@lru_cache(maxsize=8)
def _compiled(source: str):
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise LlmlabError(f"the chat template does not parse: {exc}", "fix its Jinja syntax") from None


def check_messages(messages: Any) -> None:
    """A list of {role, content} with known roles and at least one assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise LlmlabError("'messages' must be a non-empty list", "give [{'role': 'user', 'content': ...}, ...]")
    for message in messages:
        if (
            not isinstance(message, dict)
            or message.get("role") not in ROLES
            or not isinstance(message.get("content"), str)
        ):
            raise LlmlabError(f"bad message {str(message)[:80]}", f"each needs a role ({', '.join(ROLES)}) and content")
    if not any(m["role"] == "assistant" for m in messages):
        raise LlmlabError("a conversation has no assistant turn", "each chat record needs an assistant message")


def find_chat_template(folder: str | Path | None, eos_token: str, bos_token: str = "") -> ChatTemplate:
    """The folder's `chat_template` (tokenizer_config.json, or chat_template.jinja), else the default."""
    if folder is not None:
        folder = Path(folder)
        jinja = folder / "chat_template.jinja"
        if jinja.is_file():
            return ChatTemplate(jinja.read_text(encoding="utf-8"), eos_token, bos_token, str(jinja))
        config = folder / "tokenizer_config.json"
        if config.is_file():
            template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
            if isinstance(template, list):  # several named templates: the default one
                template = next((t["template"] for t in template if t.get("name") == "default"), None)
            if isinstance(template, str):
                return ChatTemplate(template, eos_token, bos_token, str(config))
    return ChatTemplate(DEFAULT_TEMPLATE, eos_token, bos_token)
