"""RAG in the server: the last user message is the question; the index's passages are fitted into what
the context leaves (the conversation, the reply's tokens) and the message becomes the RAG prompt
(`rag/prompt.py`). The response says which passages were used, dropped and cited."""

from __future__ import annotations

from dataclasses import dataclass

from llmlab.errors import LlmlabError
from llmlab.rag.answer import cited_passages
from llmlab.rag.prompt import Passage, RagPrompt, fit_prompt
from llmlab.retrieval.index import Index
from llmlab.serve.api import RagOptions

DEFAULT_RESERVE = 256  # tokens kept for the reply when the request sets no max_tokens


@dataclass
class Retrieved:
    prompt: RagPrompt
    messages: list[dict[str, str]]  # the conversation with the last user message as the RAG prompt

    def report(self, reply: str | None = None) -> dict:
        """The response's `rag` field."""
        used = [{"n": i, "source": p.source, "text": p.text} for i, p in enumerate(self.prompt.passages, 1)]
        report = {"passages": used, "dropped": [p.source for p in self.prompt.dropped], "notes": self.prompt.notes}
        if reply is not None:
            report["cited"] = cited_passages(reply, len(self.prompt.passages))
        return report


def retrieve(index: Index | None, options: RagOptions, messages: list[dict[str, str]], count_tokens,
             budget: int) -> Retrieved:  # fmt: skip
    """Search with the last user message, then fit: `count_tokens(messages)` measures a whole conversation."""
    if index is None:
        raise LlmlabError("this server has no index", "start it with llmlab serve ... --index INDEX")
    last = max((i for i, m in enumerate(messages) if m["role"] == "user"), default=None)
    if last is None:
        raise LlmlabError("rag needs a user message to search with", "end the messages with the user's question")
    question = messages[last]["content"]
    hits = index.search(question, k=options.k, mode=options.mode)
    passages = [Passage(h.text, h.source if h.id is None else f"{h.source}#{h.id}") for h in hits]

    def with_prompt(text: str) -> list[dict[str, str]]:
        return [*messages[:last], {"role": "user", "content": text}, *messages[last + 1 :]]

    prompt = fit_prompt(question, passages, lambda text: count_tokens(with_prompt(text)), budget)
    return Retrieved(prompt, with_prompt(prompt.text))
