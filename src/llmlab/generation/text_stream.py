"""Token ids -> text as they arrive, with stop strings: what a streaming client is sent. Text is held back
while it ends in a partial UTF-8 character (byte-level BPE can split one across tokens) or could be the
beginning of a stop string; a stop string ends the text before it."""

from __future__ import annotations

from llmlab.tokenizer import TextTokenizer


class TextStream:
    def __init__(self, tokenizer: TextTokenizer, stop: list[str]) -> None:
        self.tokenizer, self.stop = tokenizer, stop
        self.ids: list[int] = []
        self.emitted = ""
        self.stopped = False

    def push(self, token_id: int) -> str:
        """The new text that can be sent now (possibly empty); sets `stopped` when a stop string appeared."""
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        cut = min((i for i in (text.find(s) for s in self.stop) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            return self._emit(text[:cut])
        if text.endswith("\ufffd"):
            return ""
        safe = len(text) - max((len(s) - 1 for s in self.stop), default=0)
        return self._emit(text[:safe]) if safe > len(self.emitted) else ""

    def finish(self) -> str:
        """The text held back, at the end of the sequence."""
        if self.stopped:
            return ""
        return self._emit(self.tokenizer.decode(self.ids))

    def _emit(self, text: str) -> str:
        new = text[len(self.emitted) :]
        self.emitted = text
        return new

    @property
    def text(self) -> str:
        return self.emitted
