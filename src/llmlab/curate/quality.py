"""Quality filters: Gopher's quality and repetition rules and C4's line rules for prose, The Stack's for code.

Written from the papers: Rae et al. 2021 (Gopher, appendix A: MassiveText's quality filter and repetition
removal), Raffel et al. 2020 (C4, section 2.2, and its reference code in TensorFlow Datasets' c4_utils),
Kocetkov et al. 2022 / Li et al. 2023 (The Stack, StarCoder). datatrove's filters implement the same rules
and are what tests/curate/test_quality.py compares these against, document by document.

Words. Gopher counts "words" without saying how a text is cut into them. datatrove (FineWeb) cuts English
with spaCy's tokenizer, where a punctuation mark is a token of its own; one precompiled regex (`TOKEN`)
cuts the same way here, at a fraction of the cost: runs of letters and digits, kept whole across the marks
inside them (3.5, 1,000, x@y.z, o'clock, U.S.), clitics split off (do|n't, John|'s), every other mark a
token (an ellipsis or a dash run one token). A token with a letter or digit is a *word*: the word-count
and mean-length rules look at words, the symbol and alphabetic shares at all tokens, the repetition rules
at n-grams of all tokens, as datatrove does.

Deliberate differences from datatrove (each excluded by name in the parity test):
- stop words match in any of the cases a sentence writes them (the, The, THE): "The" is the word "the";
- bullet and ellipsis line shares are over non-blank lines (a list with blank lines between its items is
  still all bullets), and `*`, `·`, `●`, `▪`, `◦`, `‣`, `–` are bullets too;
- the duplicate 5- to 10-gram share counts every token inside a repeated occurrence, each once, as the
  paper says; datatrove skips ahead after a repeat and so misses the tail of overlapping repeats;
- C4: a line may also end in a closing curly quote (” ’), the paper's "end quotation mark"; a line is
  stripped again once its citation markers are gone ("Water is wet. [1]" ends in a period), and its words
  are counted after that (as c4_utils does);
- C4's rule against words over 1000 characters (c4_utils, not the paper) is absent: no config field.
Two smaller ones no test document has shown: repeated lines are counted among non-blank lines (datatrove
counts the empty string after a final newline as a line), and a threshold of 0 means "none allowed"
(datatrove reads 0 as "rule off").
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from itertools import accumulate

from llmlab.curate.config import C4Config, CodeConfig, GopherConfig, QualityConfig


@dataclass
class Verdict:
    """What the quality stage decided about one document."""

    text: str | None  # the document after line-level edits (C4 removes lines), None when dropped
    kind: str  # "prose" or "code": which profile judged it
    reason: str | None  # why it was dropped: a stable dotted key such as "gopher.stop_words"
    lines_removed: int = 0  # lines C4 removed
    line_reasons: dict[str, int] = field(default_factory=dict)  # removed lines by rule ("c4.javascript": 1)


# ---------------------------------------------------------------------------------------------- tokens

_CLITIC = r"(?:s|re|ve|ll|m)\b"  # split off as spaCy does; "'d" only after a pronoun (it is "answer'd" too)
_PRONOUN = r"(?i:i|you|he|she|it|we|they|who|that|there|what)"
_NEGATED = r"(?i:do|does|did|ca|wo|is|are|was|were|has|have|had|could|would|should|must|might|need|ai|sha)"
_TOKEN = (
    r"[^\W\d_]+(?=[\s,;!?)\"]|\Z)(?<!nnot)(?<!NNOT)"  # fast path: a plain word (most tokens)
    r"|[,;:!?()\"\[\]#*/&%$+=<>|~^`{}]"  # fast path: a mark that starts no longer token
    r"|(?:https?://|www\.)[^\s<>\"]*[^\s<>\".,;:!?')\]]"  # a URL is one token
    r"|(?:Mrs?|Ms|Dr|Prof|St|Jr|Sr)\.(?=\s)|(?<!\S)[A-Za-z]\.(?!\S)"  # a title or initial keeps its period
    r"|(?:[^\W\d_]\.){2,}"  # U.S. e.g. p.m.
    r"|" + _NEGATED + r"(?=n['’]t\b)|(?i:can)(?=not\b)"  # the "do" of "don't", the "can" of "cannot"
    r"|" + _PRONOUN + r"(?=['’]d\b)"  # the "I" of "I'd"
    r"|(?i:n['’]t\b|not\b|['’]" + _CLITIC + r"|(?<=[^\W\d_])['’]d\b|['’]em\b)"  # n't not 's 're 've 'll 'm 'd 'em
    r"|(?:(?<!\S)-)?[^\W_]+(?:(?:(?<![a-z])\.|\.(?![A-Z])|@|(?<=\d)[,/:](?=\d)|(?<=[^\W\d_])-(?=\d)"
    r"|['’](?!(?i:" + _CLITIC + r")))[^\W_]+)*(?:-(?!\S))?"  # a word (-style, italian-, k-19: as spaCy)
    r"|\.{2,}|-{2,}|\S"  # an ellipsis, a dash run, any other mark
)
TOKEN = re.compile(_TOKEN)
# spaCy leaves a chunk whole when a dash run ends it or follows a mark in it ("sir,--", "me.--Pray"):
# texts with "--" (old books) are cut by this slower variant, the rest by TOKEN
TOKEN_DASHES = re.compile(r"(?<!\S)(?=--[^\W_]|\S*?(?:[^\w\s]--|--(?!\S)))\S+|" + _TOKEN)
LETTER = re.compile(r"[^\W\d_]")
SENTENCE_MARKS = frozenset(".!?")


def tokens(text: str) -> list[str]:
    """Words and marks, in order (see the module docstring)."""
    return (TOKEN_DASHES if "--" in text else TOKEN).findall(text)


def _words(toks: list[str]) -> list[str]:
    """The tokens with a letter or digit: a word starts or ends with one, a mark has none."""
    return [t for t in toks if t[0].isalnum() or t[-1].isalnum()]


# ---------------------------------------------------------------------------------------------- Gopher

STOP_WORDS = ("the", "be", "to", "of", "and", "that", "have", "with")
STOP_FORMS = {form: word for word in STOP_WORDS for form in (word, word.capitalize(), word.upper())}
BULLETS = ("•", "-", "*", "·", "●", "▪", "◦", "‣", "–")
ELLIPSES = ("...", "…")
PARAGRAPH = re.compile(r"\n[ \t]*\n\s*")
TOP_NGRAMS = (2, 3, 4)
DUPLICATE_NGRAMS = (5, 6, 7, 8, 9, 10)


def gopher_reason(text: str, cfg: GopherConfig) -> str | None:
    """Gopher's quality rules, then its repetition rules: the first that fails names the drop."""
    toks = tokens(text)
    return _quality_reason(text, toks, _words(toks), cfg) or _repetition_reason(text, toks, cfg)


def _quality_reason(text: str, toks: list[str], words: list[str], cfg: GopherConfig) -> str | None:
    return (
        _length_reason(words, cfg)
        or _symbol_reason(text, len(toks), cfg)
        or _line_share_reason(text, cfg)
        or _alpha_reason(words, len(toks), cfg)
        or _stop_word_reason(words, cfg)
    )


def _length_reason(words: list[str], cfg: GopherConfig) -> str | None:
    """Too short to be a document, too long to be one (a dump); a mean word length of symbols or hashes."""
    if not cfg.min_words <= len(words) <= cfg.max_words:
        return "gopher.word_count"
    if words and not cfg.min_mean_word_length <= sum(map(len, words)) / len(words) <= cfg.max_mean_word_length:
        return "gopher.mean_word_length"
    return None


def _symbol_reason(text: str, n_tokens: int, cfg: GopherConfig) -> str | None:
    """Hash tags and ellipses per token: tag clouds and teaser lists, not prose."""
    if not n_tokens:
        return None
    if text.count("#") / n_tokens > cfg.max_symbol_word_ratio:
        return "gopher.hash_ratio"
    if (text.count("...") + text.count("…")) / n_tokens > cfg.max_symbol_word_ratio:
        return "gopher.ellipsis_ratio"
    return None


def _line_share_reason(text: str, cfg: GopherConfig) -> str | None:
    """Pages of bullets (menus, lists) or of lines cut off with an ellipsis (teasers)."""
    lines = [line.strip() for line in text.splitlines()]
    lines = [line for line in lines if line]
    if not lines:
        return None
    if sum(1 for line in lines if line.startswith(BULLETS)) / len(lines) > cfg.max_bullet_lines:
        return "gopher.bullet_lines"
    if sum(1 for line in lines if line.endswith(ELLIPSES)) / len(lines) > cfg.max_ellipsis_lines:
        return "gopher.ellipsis_lines"
    return None


def _alpha_reason(words: list[str], n_tokens: int, cfg: GopherConfig) -> str | None:
    """Tables of numbers and symbol soup: too few tokens with a letter."""
    if not n_tokens:
        return None
    alpha = sum(1 for w in words if w.isalpha() or LETTER.search(w))
    return "gopher.alpha_words" if alpha / n_tokens < cfg.min_alpha_words else None


def _stop_word_reason(words: list[str], cfg: GopherConfig) -> str | None:
    """English prose cannot avoid "the", "and", "of"...: a page without them is a list or not English."""
    found = {STOP_FORMS[w] for w in STOP_FORMS.keys() & set(words)}
    return "gopher.stop_words" if len(found) < cfg.min_stop_words else None


def _repetition_reason(text: str, toks: list[str], cfg: GopherConfig) -> str | None:
    return (
        _duplicate_block_reason(text, cfg)
        or _top_ngram_reason(text, toks, cfg)
        or _duplicate_ngram_reason(text, toks, cfg)
    )


def _duplicate_block_reason(text: str, cfg: GopherConfig) -> str | None:
    """Repeated paragraphs, then repeated lines: by their number and by the characters they hold."""
    paragraphs = [p for p in PARAGRAPH.split(text.strip()) if p]
    reason = _duplicates(
        "paragraph", paragraphs, len(text), cfg.max_duplicate_paragraphs, cfg.max_duplicate_paragraph_chars
    )
    if reason:
        return reason
    lines = [line for line in text.split("\n") if line.strip()]
    return _duplicates("line", lines, len(text), cfg.max_duplicate_lines, cfg.max_duplicate_line_chars)


def _duplicates(what: str, blocks: list[str], size: int, max_share: float, max_chars: float) -> str | None:
    """Every block after its first occurrence counts as a repeat (the first is the original)."""
    if len(set(blocks)) == len(blocks):
        return None
    seen: set[str] = set()
    repeats = chars = 0
    for block in blocks:
        if block in seen:
            repeats, chars = repeats + 1, chars + len(block)
        seen.add(block)
    if repeats / len(blocks) > max_share:
        return f"gopher.duplicate_{what}s"
    return f"gopher.duplicate_{what}_chars" if chars / size > max_chars else None


def _ngrams(toks: list[str], n: int) -> list[tuple[str, ...]]:
    return list(zip(*(toks[i:] for i in range(n))))


def _top_ngram_reason(text: str, toks: list[str], cfg: GopherConfig) -> str | None:
    """One phrase said over and over: the characters of the most frequent 2-, 3-, 4-gram (written with
    single spaces, each occurrence counted; the first in the text among equally frequent ones)."""
    for n, limit in zip(TOP_NGRAMS, cfg.max_top_ngram_chars):
        counts = Counter(_ngrams(toks, n))
        if not counts:
            continue
        top = max(counts.values())
        gram = next(g for g, c in counts.items() if c == top)
        if (sum(map(len, gram)) + n - 1) * top / len(text) > limit:
            return f"gopher.top_{n}gram"
    return None


def _duplicate_ngram_reason(text: str, toks: list[str], cfg: GopherConfig) -> str | None:
    """Characters of tokens inside repeated 5- to 10-grams. A token inside a repeated n-gram is inside a
    repeated (n-1)-gram too, so the share can only fall as n grows: once it is under every remaining
    limit, no longer n-gram can fail and the rest are not computed."""
    limits = cfg.max_duplicate_ngram_chars
    ends = list(accumulate(map(len, toks), initial=0))
    for k, (n, limit) in enumerate(zip(DUPLICATE_NGRAMS, limits)):
        share = _repeated_chars(toks, n, ends) / len(text)
        if share > limit:
            return f"gopher.duplicate_{n}gram"
        if share <= min(limits[k:]):
            return None
    return None


def _repeated_chars(toks: list[str], n: int, ends: list[int]) -> int:
    """Characters of the tokens covered by an n-gram occurrence that repeats an earlier one, each token
    counted once however many repeats overlap it. `ends[i]` is the characters of the first i tokens."""
    grams = _ngrams(toks, n)
    first = dict(zip(reversed(grams), range(len(grams) - 1, -1, -1)))  # the last write wins: the first position
    if len(first) == len(grams):
        return 0
    covered = covered_to = 0
    for i in (i for i, gram in enumerate(grams) if first[gram] != i):
        start = max(i, covered_to)
        covered_to = i + n
        covered += ends[covered_to] - ends[start]
    return covered


# -------------------------------------------------------------------------------------------------- C4

END_MARKS = (".", "?", "!", '"', "'", "”", "’")
CITATION = re.compile(r"\[(?:\d*|edit|citation needed)\]")
POLICY = ("terms of use", "privacy policy", "cookie policy", "uses cookies", "use of cookies", "use cookies")
PAGE_RULES = frozenset({"c4.lorem_ipsum", "c4.curly_bracket"})


def c4_filter(text: str, cfg: C4Config) -> tuple[str | None, str | None, dict[str, int]]:
    """C4's rules, line by line in c4_utils' order: (kept text or None, why dropped, removed lines by rule).
    Blank lines go silently; kept lines are stripped and joined by single newlines, as in C4."""
    removed: dict[str, int] = {}
    kept: list[str] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        if cfg.citations:
            line = CITATION.sub("", line).strip()
        rule = _line_rule(line, cfg)
        if rule in PAGE_RULES:
            return None, rule, removed
        if rule:
            removed[rule] = removed.get(rule, 0) + 1
        else:
            kept.append(line)
    if _too_few_sentences(kept, cfg.min_sentences):
        return None, "c4.too_few_sentences", removed
    if not kept:
        return None, "c4.empty", removed
    return "\n".join(kept), None, removed


def _line_rule(line: str, cfg: C4Config) -> str | None:
    """Why C4 removes this line (or, for lorem ipsum and curly brackets, the whole page); None to keep it.
    As in c4_utils, the page rules look only at lines the line rules before them would keep."""
    if not line:
        return "c4.citations"  # the line was nothing but citation markers
    if cfg.terminal_punctuation and (not line.endswith(END_MARKS) or line.endswith("...")):
        return "c4.terminal_punctuation"
    if len(line.split()) < cfg.min_words_per_line:
        return "c4.min_words_per_line"
    lower = line.lower()
    if cfg.lorem_ipsum and "lorem ipsum" in lower:
        return "c4.lorem_ipsum"
    if cfg.javascript_lines and "javascript" in lower:
        return "c4.javascript"
    if cfg.curly_bracket and "{" in line:
        return "c4.curly_bracket"
    if cfg.policy_lines and any(p in lower for p in POLICY):
        return "c4.policy"
    return None


def _too_few_sentences(kept: list[str], minimum: int) -> bool:
    """Every kept line holds at least one sentence, so lines are only cut into sentences when there are
    fewer lines than the minimum."""
    if len(kept) >= minimum:
        return False
    return sum(_sentences(line) for line in kept) < minimum


def _sentences(line: str) -> int:
    """Sentences in a non-empty line: one, plus one for each word that follows a . ! or ? token (with only
    marks between), as spaCy's sentencizer splits (so "Mr. Smith" and "3.5" do not end a sentence)."""
    count, ended = 1, False
    for tok in tokens(line):
        if tok in SENTENCE_MARKS:
            ended = True
        elif ended and (tok[0].isalnum() or tok[-1].isalnum()):
            count, ended = count + 1, False
    return count


# ------------------------------------------------------------------------------------------------ code

AUTOGENERATED = ("auto-generated", "autogenerated", "automatically generated", "do not edit")
HEADER_LINES = 5  # StarCoder looks for the markers in a file's first 5 lines
NON_ALNUM = re.compile(r"[\W_]+")


def code_reason(text: str, cfg: CodeConfig) -> str | None:
    """The Stack's and StarCoder's rules: long lines are data or minified code, few letters and digits
    are data, a generated file says so in its first lines."""
    lengths = list(map(len, text.splitlines()))
    if not lengths:
        return "code.empty"
    if max(lengths) > cfg.max_line_length:
        return "code.max_line_length"
    if sum(lengths) / len(lengths) > cfg.max_mean_line_length:
        return "code.mean_line_length"
    if len(NON_ALNUM.sub("", text)) / len(text) < cfg.min_alphanumeric:
        return "code.alphanumeric"
    if cfg.autogenerated and _autogenerated(text):
        return "code.autogenerated"
    return None


def _autogenerated(text: str) -> bool:
    header = "\n".join(text.splitlines()[:HEADER_LINES]).lower()
    return any(marker in header for marker in AUTOGENERATED)


# -------------------------------------------------------------------------------------- code or prose

CODE_LINE = re.compile(
    r"^\s*(?:def|async def|fn|func|function)\s+\w+\s*[(<]"  # a function is defined
    r"|^\s*class\s+\w+\s*[:(<{]|^\s*class\s+\w+\s*$"  # a class is defined
    r"|^\s*import\s+[\w.]+(?:\s+as\s+\w+)?(?:\s*,\s*[\w.]+)*;?\s*$|^\s*from\s+[\w.]+\s+import\b"
    r"|^\s*(?:else|try|finally|do)\s*[:{]\s*$|^\s*(?:elif|except|catch)\b.*[:{]\s*$"  # a block opens
    r"|^\s*(?:if|for|while|with|switch)\b.*[:{]\s*$|^\s*lambda\b.*:"
    r"|^\s*(?:return|break|continue|pass|raise|yield)\b(?:\s*;|\s*$|\s+[\w.\[(\"'-]+\s*$|.*[;(\[{]\s*$)"
    r"|^\s*(?:#include|#define|#if|#endif|#pragma|#!|//|/\*|\*/|\*\*|typedef\b|template\s*<|[\]})])"
    r"|^\s+\*"  # inside a block comment
    r"|^\s*@[\w.]+(?:\(.*\))?\s*$"  # a decorator or annotation alone on its line
    r"|[{}(\[]\s*$"  # ends opening or closing a block
    r"|[=()\[\]].*;\s*$|^\s*\w+;\s*$"  # a statement ends with ; (prose also ends clauses with ;)
    r"|\w\([^()]*\)\s*$"  # ends with a call
    r"|^\s*[A-Za-z_][\w.]*(?:\[[^\]]*\])?\s*(?:[-+*/%&|^]|<<|>>|//|\*\*)?=(?!=)\s*\S"  # an assignment
    r"|^(?!.*[^\W\d_]+ [^\W\d_]+ [^\W\d_]+)(?=.*[\d'\"=:(\[{]).*,\s*$"  # an item of a literal: 'x', 0x1f:'y',
    r"|==|!=|->|=>|&&|\|\||\w::\w"  # operators prose does not write
)
CODE_SHARE = 0.3
COMMENT = re.compile(r"#+(?:\s|$)")  # a comment (or a Markdown heading): says nothing either way
TRIPLE_QUOTES = ('"""', "'''")


def looks_like_code(text: str) -> bool:
    """Profile "auto": a document is code when at least CODE_SHARE of its telling lines look like code
    statements (a keyword opening the line, a block opening or closing, an assignment, a call or a
    statement-ending ; at its end, an item of a literal, an operator prose never writes). Prose has few
    such lines: speaker labels end in ':' but open no block, sentences end in . ! ? or a plain ;. Lines
    inside a triple-quoted string and '# ' comments tell nothing (a docstring is prose inside code)."""
    code, telling = _code_lines(text)
    return telling > 0 and code >= CODE_SHARE * telling


def _code_lines(text: str) -> tuple[int, int]:
    """(lines that look like code, lines that tell code from prose either way)."""
    code = telling = 0
    in_string = False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            continue
        opens = (stripped.count(TRIPLE_QUOTES[0]) + stripped.count(TRIPLE_QUOTES[1])) % 2 == 1
        if in_string or COMMENT.match(stripped):
            in_string ^= opens
            continue
        in_string = opens
        telling += 1
        code += opens or CODE_LINE.search(line) is not None
    return code, telling


# ----------------------------------------------------------------------------------------------- judge


def judge(text: str, cfg: QualityConfig) -> Verdict:
    """One document through its profile: code by the code rules; prose by Gopher on the text as it came,
    then (when enabled) C4, whose line removals are the text passed on."""
    kind = cfg.profile if cfg.profile != "auto" else ("code" if looks_like_code(text) else "prose")
    if not cfg.enabled:
        return Verdict(text, kind, None)
    if kind == "code":
        reason = code_reason(text, cfg.code)
        return Verdict(None if reason else text, kind, reason)
    reason = gopher_reason(text, cfg.gopher)
    if reason or not cfg.c4.enabled:
        return Verdict(None if reason else text, kind, reason)
    kept, reason, removed = c4_filter(text, cfg.c4)
    return Verdict(kept, kind, reason, sum(removed.values()), removed)
