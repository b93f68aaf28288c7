"""Text normalisation before any filter or hash: repaired Unicode, one form per character, tidy spacing.

ftfy repairs what a wrong decoding did (mojibake such as "cafÃ©", HTML entities in plain text, terminal
escapes) but is told to leave meaning alone: curly quotes, full-width characters and ligatures stay as
written (they are the author's, not damage). Leading whitespace is never touched, so code keeps its
indentation; only trailing spaces and long runs of blank lines go.
"""

from __future__ import annotations

import re
import unicodedata

from llmlab.curate.config import NormalizeConfig

BLANK_RUN = re.compile(r"\n{3,}")
TRAILING = re.compile(r"[ \t]+$", re.MULTILINE)


def _fixer():
    import ftfy

    config = ftfy.TextFixerConfig(
        uncurl_quotes=False, fix_character_width=False, fix_latin_ligatures=False,
        normalization=None, explain=False,
    )  # fmt: skip
    return lambda text: ftfy.fix_text(text, config)


_fix = None


def normalize(text: str, cfg: NormalizeConfig) -> str:
    """The normalised text ("" when nothing is left)."""
    global _fix
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if cfg.fix_unicode:
        if _fix is None:
            _fix = _fixer()
        text = _fix(text)
    if cfg.nfc and not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if cfg.strip_trailing_whitespace:
        text = TRAILING.sub("", text)
    blank_lines = cfg.max_blank_lines
    text = BLANK_RUN.sub("\n" * (blank_lines + 1), text) if blank_lines >= 1 else re.sub(r"\n\n+", "\n", text)
    return text.strip("\n") + "\n" if text.strip() else ""
