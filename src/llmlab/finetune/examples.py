"""Records -> examples: each a sequence of (text, trained) pieces, so the loss can be taken on the
response only. The format is detected from the record's fields (or forced):

    instruction        {"instruction", "input" (optional), "output"}, Alpaca's prompt
    prompt-completion  {"prompt", "completion"}, the texts as they are
    chat               {"messages": [{"role", "content"}, ...]}, the model's chat template
    template           any fields, a prompt template (`--template`): a built-in task's
                       (dialogsum, sentiment: the same prompts `llmlab evaluate` asks) or a file
"""

from __future__ import annotations

import string
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llmlab.data.chat import ChatTemplate
from llmlab.errors import LlmlabError
from llmlab.evaluation.prompts import PromptTemplate
from llmlab.evaluation.tasks import DIALOGSUM_TEMPLATE, SENTIMENT_TEMPLATE

FORMATS = ("instruction", "prompt-completion", "chat", "template")
ALPACA = (
    "Below is an instruction that describes a task{context}. Write a response that appropriately completes the "
    "request.\n\n### Instruction:\n{instruction}\n\n{input}### Response:\n"
)
TASK_TEMPLATES = {"dialogsum": DIALOGSUM_TEMPLATE, "sentiment": SENTIMENT_TEMPLATE}
Pieces = list[tuple[str, bool]]  # (text, trained?) in order


@dataclass(frozen=True)
class ResponseTemplate:
    """A prompt with {field}s and the field that is the response (the last placeholder)."""

    prompt: PromptTemplate

    @property
    def fields(self) -> set[str]:
        return {name for _, name, _, _ in string.Formatter().parse(self.prompt.example) if name}

    def pieces(self, record: dict[str, Any]) -> Pieces:
        missing = sorted(f for f in self.fields if not isinstance(record.get(f), str))
        if missing:
            raise LlmlabError(f"the record has no text field {missing[0]!r} that the template uses",
                              f"its fields are {', '.join(sorted(record))}; pass another --template")  # fmt: skip
        head = self.prompt.instruction + self.prompt.separator if self.prompt.instruction else ""
        return [(head + self.prompt.render_query(record), False), (self.prompt.answer(record), True)]


def load_template(name_or_file: str) -> ResponseTemplate:
    """A built-in task's template or a file holding one (`Question: {q}\\nAnswer: {a}`, response last)."""
    if name_or_file in TASK_TEMPLATES:
        return ResponseTemplate(TASK_TEMPLATES[name_or_file])
    path = Path(name_or_file)
    if not path.is_file():
        raise LlmlabError(
            f"--template {name_or_file} is neither a built-in template nor a file",
            f"use {', '.join(TASK_TEMPLATES)} or a text file like 'Q: {{question}}\\nA: {{answer}}'",
        )
    text = path.read_text(encoding="utf-8").rstrip("\n")
    fields = [name for _, name, _, _ in string.Formatter().parse(text) if name]
    if not fields:
        raise LlmlabError(f"--template {path} has no {{field}} placeholders", "end it with the response's {field}")
    template = PromptTemplate(text, answer_field=fields[-1], long_field=fields[0])
    template.validate()
    return ResponseTemplate(template)


def detect_format(record: dict[str, Any], where: str) -> str:
    if "messages" in record:
        return "chat"
    if "instruction" in record and "output" in record:
        return "instruction"
    if "prompt" in record and "completion" in record:
        return "prompt-completion"
    raise LlmlabError(f"{where}: cannot tell the format of a record with fields {', '.join(sorted(record)) or 'none'}",
                      "use instruction/output, prompt/completion or messages fields, or pass --template")  # fmt: skip


def record_pieces(
    record: dict[str, Any], fmt: str, template: ResponseTemplate | None, chat: ChatTemplate, where: str
) -> Pieces:
    """The record's pieces in its format; an empty response or missing field is one error naming `where`."""
    try:
        if fmt == "template":
            pieces = template.pieces(record)  # type: ignore[union-attr]
        elif fmt == "chat":
            pieces = chat.prompt_and_turns(record["messages"])
        elif fmt == "instruction":
            pieces = _instruction(record)
        else:
            pieces = [(_text(record, "prompt"), False), (_text(record, "completion"), True)]
    except LlmlabError as exc:
        raise LlmlabError(f"{where}: {exc.what}", exc.fix) from None
    if not any(text.strip() for text, trained in pieces if trained):
        raise LlmlabError(f"{where}: the response is empty", "remove the record or give it a response")
    return pieces


def _text(record: dict[str, Any], field: str) -> str:
    value = record.get(field)
    if not isinstance(value, str):
        raise LlmlabError(f"field {field!r} is missing or not text", f"give every record a text {field!r}")
    return value


def _instruction(record: dict[str, Any]) -> Pieces:
    extra = record.get("input") or ""
    context = ", paired with an input that provides further context" if extra else ""
    body = f"### Input:\n{extra}\n\n" if extra else ""
    prompt = ALPACA.format(context=context, instruction=_text(record, "instruction"), input=body)
    return [(prompt, False), (_text(record, "output"), True)]


def to_pieces(
    records: list[dict[str, Any]], source: str, fmt: str | None, template: ResponseTemplate | None, chat: ChatTemplate
) -> list[Pieces]:
    """Every record of one source in one format (the first record's, unless given)."""
    if template is not None:
        fmt = "template"
    fmt = fmt or detect_format(records[0], f"{source}:1")
    if fmt not in FORMATS:
        raise LlmlabError(f"unknown --format {fmt!r}", f"use one of {', '.join(FORMATS)}")
    if fmt == "template" and template is None:
        raise LlmlabError("--format template needs --template", f"name one ({', '.join(TASK_TEMPLATES)}) or a file")
    return [record_pieces(r, fmt, template, chat, f"{source}:{i}") for i, r in enumerate(records, 1)]
