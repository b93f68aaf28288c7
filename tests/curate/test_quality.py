"""The quality filters: each rule at its threshold (kept) and just past it (dropped), the code/prose guess,
and parity with datatrove's GopherQualityFilter, GopherRepetitionFilter and C4QualityFilter on real text
(Shakespeare, DialogSum, rt-polarity) and constructed junk.

Parity comes in two parts. With datatrove's own word splitter put in place of ours, every decision, reason
and kept text must be the same: the rules are the same rules. With our regex splitter (spaCy's cuts,
approximated at a tenth of the cost), the decisions may differ on a few documents whose share sits on a
threshold and that a spaCy quirk tips; those are counted and bounded, not hidden. Documents that a
deliberate difference (quality.py's docstring) decides are excluded by name, each by its own predicate.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
from pathlib import Path

import pytest

from llmlab.curate import quality
from llmlab.curate.config import C4Config, CodeConfig, GopherConfig, QualityConfig
from llmlab.curate.quality import (
    Verdict,
    c4_filter,
    code_reason,
    gopher_reason,
    judge,
    looks_like_code,
    tokens,
)
from tests.helpers import require_data

# ------------------------------------------------------------------------------------------- helpers

PERMISSIVE = GopherConfig(
    min_words=0, max_words=10**9, min_mean_word_length=0.0, max_mean_word_length=100.0, max_symbol_word_ratio=10.0,
    max_bullet_lines=1.0, max_ellipsis_lines=1.0, min_alpha_words=0.0, min_stop_words=0, max_duplicate_lines=1.0,
    max_duplicate_paragraphs=1.0, max_duplicate_line_chars=1.0, max_duplicate_paragraph_chars=1.0,
    max_top_ngram_chars=[1.0, 1.0, 1.0], max_duplicate_ngram_chars=[1.0] * 6,
)  # fmt: skip
DEFAULT = GopherConfig()


def only(*names: str, **values) -> GopherConfig:
    """Every Gopher rule off but the named ones, which keep their published thresholds (or `values`)."""
    return dataclasses.replace(PERMISSIVE, **{n: getattr(DEFAULT, n) for n in names}, **values)


def pseudo_words(count: int, length: int = 4, seed: int = 0) -> list[str]:
    """Distinct made-up lowercase words (no stop word, no repeat): text that trips no rule by itself."""
    rng = random.Random(seed)
    consonants, vowels = "bdfgklmnprstvz", "aeiou"
    out: set[str] = set()
    while len(out) < count:
        out.add("".join(rng.choice(vowels if i % 2 else consonants) for i in range(length)))
    return sorted(out, key=lambda w: rng.random())


def prose(count: int = 60, seed: int = 0) -> str:
    """`count` distinct words, two of them stop words, on one line: passes every Gopher rule."""
    return " ".join(["the", "and", *pseudo_words(count - 2, seed=seed)])


def padded(text: str, size: int) -> str:
    """`text` with one more made-up word (of letters) at its end, so that it is exactly `size` characters."""
    filler = size - len(text) - 1
    assert filler > 0
    return text + " " + ("qz" * filler)[:filler]


# ------------------------------------------------------------------------------------------- words


def test_words_are_cut_as_spacy_cuts_english():
    assert tokens("Hello, world... don't #tag") == ["Hello", ",", "world", "...", "do", "n't", "#", "tag"]
    assert tokens("Mr. Smith paid $1,000 at 7:00 p.m. for 3.5% of U.S. stock.") == [
        "Mr.", "Smith", "paid", "$", "1,000", "at", "7:00", "p.m.", "for", "3.5", "%", "of", "U.S.", "stock", ".",
    ]  # fmt: skip
    assert tokens("I'd say John's cat cannot go; it's answer'd") == [
        "I", "'d", "say", "John", "'s", "cat", "can", "not", "go", ";", "it", "'s", "answer'd",
    ]  # fmt: skip
    assert tokens("sir,-- well--known") == ["sir,--", "well", "--", "known"]  # spaCy leaves "sir,--" whole


# ------------------------------------------------------------------------------------ Gopher quality


def test_word_count_bounds():
    cfg = only("min_words", max_words=60)
    assert gopher_reason(prose(50), cfg) is None
    assert gopher_reason(prose(49), cfg) == "gopher.word_count"
    assert gopher_reason(prose(60), cfg) is None
    assert gopher_reason(prose(61), cfg) == "gopher.word_count"
    assert gopher_reason(prose(50) + " , . ! - #", cfg) is None  # marks are not words


def test_mean_word_length_bounds():
    cfg = only("min_mean_word_length", "max_mean_word_length")
    short = ["the", "and", *pseudo_words(48, length=3)]  # mean 3.0
    assert gopher_reason(" ".join(short), cfg) is None
    assert gopher_reason(" ".join([*short[:-1], "ab"]), cfg) == "gopher.mean_word_length"
    long = ["the", "and", *pseudo_words(46, length=10), *pseudo_words(2, length=17, seed=1)]  # 500 / 50 = 10.0
    assert gopher_reason(" ".join(long), cfg) is None
    assert gopher_reason(" ".join([*long[:-1], long[-1] + "x"]), cfg) == "gopher.mean_word_length"


def test_hash_and_ellipsis_ratios():
    cfg = only("max_symbol_word_ratio")
    words = prose(90).split()
    with_marks = lambda mark, k: " ".join(w + (f" {mark}" if i < k else "") for i, w in enumerate(words))  # noqa: E731
    assert gopher_reason(with_marks("#", 10), cfg) is None  # 10 / 100 tokens
    assert gopher_reason(with_marks("#", 11), cfg) == "gopher.hash_ratio"  # 11 / 101
    assert gopher_reason(with_marks("...", 10), cfg) is None
    assert gopher_reason(with_marks("...", 11), cfg) == "gopher.ellipsis_ratio"
    assert gopher_reason(with_marks("…", 11), cfg) == "gopher.ellipsis_ratio"


def lines_of(count: int, words: int = 6) -> list[str]:
    pool = pseudo_words(count * words)
    return [" ".join(pool[i * words : (i + 1) * words]) for i in range(count)]


def test_bullet_lines_share():
    cfg = only("max_bullet_lines")
    lines = lines_of(10)
    assert gopher_reason("\n".join(["- " + x for x in lines[:9]] + lines[9:]), cfg) is None  # 9 / 10
    assert gopher_reason("\n".join("- " + x for x in lines), cfg) == "gopher.bullet_lines"
    for bullet in ("•", "*", "·", "●", "–"):
        assert gopher_reason("\n".join(f"{bullet} {x}" for x in lines), cfg) == "gopher.bullet_lines", bullet
    # deliberate: blank lines between the items do not dilute the share (datatrove counts them as lines)
    assert gopher_reason("\n\n".join("- " + x for x in lines), cfg) == "gopher.bullet_lines"


def test_ellipsis_lines_share():
    cfg = only("max_ellipsis_lines")
    lines = lines_of(10)
    cut = lambda k, mark="...": "\n".join(x + (mark if i < k else ".") for i, x in enumerate(lines))  # noqa: E731
    assert gopher_reason(cut(3), cfg) is None  # 3 / 10
    assert gopher_reason(cut(4), cfg) == "gopher.ellipsis_lines"
    assert gopher_reason(cut(4, "…"), cfg) == "gopher.ellipsis_lines"
    assert gopher_reason(cut(3).replace("\n", "\n\n"), cfg) is None  # blank lines are not lines


def test_alphabetic_share():
    cfg = only("min_alpha_words")
    words = prose(80).split()
    numbers = [str(100 + i) for i in range(21)]
    assert gopher_reason(" ".join(words + numbers[:20]), cfg) is None  # 80 / 100
    assert gopher_reason(" ".join(words + numbers), cfg) == "gopher.alpha_words"  # 80 / 101
    assert gopher_reason(" ".join(words + ["a1", "1b"] * 10), cfg) is None  # one letter makes a word alphabetic


def test_stop_words():
    cfg = only("min_stop_words")
    body = " ".join(pseudo_words(60))
    assert gopher_reason(f"the {body} and", cfg) is None
    assert gopher_reason(f"the {body} the", cfg) == "gopher.stop_words"  # the same one twice is one
    assert gopher_reason(f"{body} with", cfg) == "gopher.stop_words"
    assert gopher_reason(f"The {body} AND", cfg) is None  # deliberate: "The" is the word "the"
    assert gopher_reason(f"Thee {body} andy", cfg) == "gopher.stop_words"


# --------------------------------------------------------------------------------- Gopher repetition


@pytest.mark.parametrize("sep, what", [("\n\n", "paragraphs"), ("\n", "lines")])
def test_duplicate_blocks_by_count(sep, what):
    cfg = only(f"max_duplicate_{what}")
    unique = lines_of(6)
    # 4 copies: the first is the original, 3 are repeats
    assert gopher_reason(sep.join(unique + ["the end"] * 4), cfg) is None  # 3 of 10
    assert gopher_reason(sep.join(unique[:5] + ["the end"] * 4), cfg) == f"gopher.duplicate_{what}"  # 3 of 9
    assert gopher_reason(sep.join(unique[:4] + ["the end"] * 3), cfg) is None  # 2 of 7


@pytest.mark.parametrize("sep, what", [("\n\n", "paragraph"), ("\n", "line")])
def test_duplicate_blocks_by_characters(sep, what):
    cfg = only(f"max_duplicate_{what}_chars")
    repeat = "w" * 40
    unique = lines_of(3, words=5)
    body = sep.join([repeat, unique[0], repeat, *unique[1:]])
    assert gopher_reason(padded(body, 200), cfg) is None  # the repeat holds 40 / 200 = 0.2
    assert gopher_reason(padded(body, 199), cfg) == f"gopher.duplicate_{what}_chars"


@pytest.mark.parametrize("n, count", [(2, 10), (3, 9), (4, 8)])
def test_top_ngram_share(n, count):
    limit = DEFAULT.max_top_ngram_chars[n - 2]
    limits = [1.0, 1.0, 1.0]
    limits[n - 2] = limit
    cfg = only(max_top_ngram_chars=limits)
    gram = " ".join(["ab"] * n)  # as written with single spaces: 3n - 1 characters
    body = " ".join(f"{gram} {w}" for w in pseudo_words(count))  # `count` occurrences, each filler word once
    size = len(gram) * count * 100 // round(limit * 100)  # the gram's occurrences hold exactly `limit`
    assert gopher_reason(padded(body, size), cfg) is None
    assert gopher_reason(padded(body, size - 1), cfg) == f"gopher.top_{n}gram"


@pytest.mark.parametrize("n, length", [(5, 3), (6, 7), (7, 13), (8, 3), (9, 11), (10, 3)])
def test_duplicate_ngram_share(n, length):
    limits = [1.0] * 6
    limits[n - 5] = DEFAULT.max_duplicate_ngram_chars[n - 5]
    cfg = only(max_duplicate_ngram_chars=limits)
    phrase = pseudo_words(n, length=length, seed=n)  # said twice: the repeat covers n * length characters
    filler = pseudo_words(8, length=4, seed=99)
    size = n * length * 100 // round(limits[n - 5] * 100)  # the repeat holds exactly the limit
    assert gopher_reason(padded(" ".join([*phrase, *filler, *phrase]), size), cfg) is None
    assert gopher_reason(padded(" ".join([*phrase, *filler, *phrase]), size - 1), cfg) == f"gopher.duplicate_{n}gram"
    shorter = " ".join([*phrase, *filler, *phrase[:-1]])  # the repeat is one token short of an n-gram
    assert gopher_reason(padded(shorter, size - 1), cfg) is None


def test_overlapping_repeats_count_each_token_once():
    """A phrase of 7 said twice: the repeat's 7 tokens are covered (datatrove's skip-ahead sees 5)."""
    toks = "aa bb cc dd ee ff gg aa bb cc dd ee ff gg".split()
    ends = [0]
    for t in toks:
        ends.append(ends[-1] + len(t))
    assert quality._repeated_chars(toks, 5, ends) == 14
    assert quality._repeated_chars(toks * 2, 5, [*ends, *(ends[-1] + e for e in ends[1:])]) == 14 * 3
    assert quality._repeated_chars(toks[:7], 5, ends[:8]) == 0


def test_gopher_checks_quality_before_repetition():
    text = "\n".join(["the and " + " ".join(pseudo_words(6))] * 10)
    assert gopher_reason(text, DEFAULT) == "gopher.duplicate_lines"
    assert gopher_reason(text, dataclasses.replace(DEFAULT, min_words=81)) == "gopher.word_count"


# -------------------------------------------------------------------------------------------------- C4


def sentence(k: int, words: int = 4, end: str = ".") -> str:
    """A made-up sentence with two stop words (Gopher would keep a page of them)."""
    inner = pseudo_words(words, seed=k)
    return " ".join([inner[0].capitalize(), "the", *inner[1 : words // 2], "and", *inner[words // 2 :]]) + end


def test_c4_keeps_lines_ending_in_terminal_punctuation():
    ends = [".", "!", "?", '"', "'", "”", "’"]
    lines = [sentence(i, end=e) for i, e in enumerate(ends)]
    dropped = [sentence(20, end=","), sentence(21, end="..."), sentence(22, end=":"), sentence(23, end="")]
    text, reason, removed = c4_filter("\n".join(lines + dropped), C4Config())
    assert (text, reason, removed) == ("\n".join(lines), None, {"c4.terminal_punctuation": 4})


def test_c4_words_per_line():
    lines = [sentence(i) for i in range(5)]
    text, _, removed = c4_filter("\n".join([*lines, "Two words.", "  Three words here.  "]), C4Config())
    assert text == "\n".join([*lines, "Three words here."]) and removed == {"c4.min_words_per_line": 1}


def test_c4_sentences_are_counted_on_kept_lines():
    five = [sentence(i) for i in range(5)]
    assert c4_filter("\n".join(five), C4Config())[1] is None
    assert c4_filter("\n".join(five[:4]), C4Config())[1] == "c4.too_few_sentences"
    assert c4_filter(" ".join(five[:3]) + "\n" + " ".join(five[3:]), C4Config())[1] is None  # 3 + 2 on two lines
    four = " ".join(five[:3]) + " Mr. Smith saw 3.5 eggs."  # a title and a decimal end no sentence
    assert c4_filter(four, C4Config())[1] == "c4.too_few_sentences"
    assert c4_filter(four, C4Config(min_sentences=4))[1] is None
    assert c4_filter("\n".join(five[:4] + ["Menu", "Home"]), C4Config())[1] == "c4.too_few_sentences"


def test_c4_line_rules_and_page_rules():
    body = [sentence(i) for i in range(6)]
    notices = ["Please enable JavaScript to view the comments.", "This site uses cookies for analytics."]
    text, reason, removed = c4_filter("\n".join(body + notices), C4Config())
    assert (text, reason, removed) == ("\n".join(body), None, {"c4.javascript": 1, "c4.policy": 1})
    assert c4_filter("\n".join([*body, "Lorem ipsum dolor sit amet."]), C4Config())[1] == "c4.lorem_ipsum"
    assert c4_filter("\n".join([*body, "Then call f() { return 1; }."]), C4Config())[1] == "c4.curly_bracket"
    # as c4_utils: the page rules see only lines the line rules keep
    assert c4_filter("\n".join([*body, "lorem ipsum dolor", "var x = {"]), C4Config())[1] is None
    assert c4_filter("\n".join([*body, "The javascript {x} is here."]), C4Config())[1] is None
    off = C4Config(javascript_lines=False, policy_lines=False, lorem_ipsum=False, curly_bracket=False)
    lines = body + notices + ["Lorem ipsum dolor sit amet.", "Then call f() { return 1; }."]
    assert c4_filter("\n".join(lines), off) == ("\n".join(lines), None, {})


def test_c4_citations_and_blank_lines():
    body = [sentence(i) for i in range(5)]
    text, _, removed = c4_filter(
        "\n\n".join([body[0] + "[1]", body[1] + " [citation needed]", *body[2:], "[2][edit]"]), C4Config()
    )
    assert text == "\n".join(body) and removed == {"c4.citations": 1}  # blank lines go uncounted
    marked = body[0].replace(" ", "[1] ", 1)
    assert c4_filter("\n".join([marked, *body[1:]]), C4Config(citations=False))[0].startswith(marked)


def test_c4_switches():
    lines = ["Menu", "A b", *[sentence(i) for i in range(2)]]
    cfg = C4Config(terminal_punctuation=False, min_words_per_line=0, min_sentences=0)
    assert c4_filter("\n".join(lines), cfg) == ("\n".join(lines), None, {})
    assert c4_filter("Menu\nHome", C4Config(min_sentences=0)) == (None, "c4.empty", {"c4.terminal_punctuation": 2})


# ------------------------------------------------------------------------------------------------ code


def test_code_line_lengths():
    cfg = CodeConfig()
    line = "x = " + "a" * 996  # 1000 characters
    assert code_reason(line + "\n" + "y = 1\n" * 20, cfg) is None
    assert code_reason(line + "a\n" + "y = 1\n" * 20, cfg) == "code.max_line_length"
    mean = "\n".join(["b" * 150, "c" * 50])  # mean 100
    assert code_reason(mean, cfg) is None
    assert code_reason(mean + "c", cfg) == "code.mean_line_length"
    assert code_reason("", cfg) == "code.empty"


def test_code_alphanumeric_share():
    cfg = CodeConfig(max_mean_line_length=1000)
    assert code_reason("ab" + " " * 6, cfg) is None  # 2 / 8 = 0.25
    assert code_reason("ab" + " " * 7, cfg) == "code.alphanumeric"
    assert code_reason("a_" + " " * 6, cfg) == "code.alphanumeric"  # "_" is not a letter or digit


def test_code_autogenerated_header():
    body = "def f():\n    return 1\n" * 10
    header = "# a\n# b\n# c\n# d\n"
    assert (
        code_reason(header + "# Code generated by protoc. DO NOT EDIT.\n" + body, CodeConfig()) == "code.autogenerated"
    )
    assert code_reason(header + "# x\n# This file is auto-generated\n" + body, CodeConfig()) is None  # line 6
    assert code_reason("// AUTOGENERATED\n" + body, CodeConfig(autogenerated=False)) is None


# ------------------------------------------------------------------------------------- code or prose

NEWS = """The city council voted on Tuesday to expand the bus network, adding three routes that will
connect the northern suburbs with the hospital and the university. The plan, which has been debated for
more than a year, is expected to cost about 12 million dollars over five years.

Supporters said the new routes would cut commuting times for thousands of residents; critics argued that
the money should have gone to repairing roads. "We have waited long enough," said one council member."""


def stdlib_modules() -> list[Path]:
    """Every top-level module of the Python standard library with at least 20 lines that say something."""
    root = Path(os.__file__).parent
    return [p for p in sorted(root.glob("*.py")) if quality._code_lines(p.read_text(encoding="utf-8"))[1] >= 20]


def test_stdlib_modules_look_like_code():
    modules = stdlib_modules()
    assert len(modules) > 100
    prose_like = [p.name for p in modules if not looks_like_code(p.read_text(encoding="utf-8"))]
    assert not prose_like


def test_code_share_threshold():
    """Code when at least 30% of the telling lines look like code; comments and docstrings tell nothing."""
    prose_lines = [sentence(i, words=8) for i in range(8)]
    code_lines = ["x = compute(1)", "if x > 2:", "    return x"]
    assert looks_like_code("\n".join(prose_lines[:7] + code_lines))  # 3 of 10
    assert not looks_like_code("\n".join(prose_lines[:5] + code_lines[:2]))  # 2 of 7
    docstring = '"""' + "\n".join(prose_lines) + '\n"""'
    assert looks_like_code(docstring + "\n" + "\n".join(code_lines))  # 4 of 4: the docstring's lines are silent
    assert looks_like_code("\n".join(["# " + line for line in prose_lines] + code_lines))
    assert not looks_like_code("# Title\n\n" + "\n".join(prose_lines)) and not looks_like_code("")


def test_other_code_looks_like_code():
    c = '#include <stdio.h>\n\nint main(void) {\n    printf("hi\\n");\n    return 0;\n}\n'
    minified = "function a(b){return b+1}var c=a(2);if(c>2){console.log(c)}" * 30
    assert looks_like_code(c) and looks_like_code(minified)


def shakespeare_chunks(limit: int) -> list[str]:
    """Tiny Shakespeare cut at blank lines into documents of about 1500 characters."""
    chunks, current = [], []
    for part in require_data("tinyshakespeare.txt").read_text(encoding="utf-8").split("\n\n"):
        current.append(part)
        if sum(map(len, current)) > 1500:
            chunks.append("\n\n".join(current))
            current = []
    return chunks[:limit]


def dialogues(limit: int) -> list[str]:
    with require_data("dialogsum/train.jsonl").open(encoding="utf-8") as f:
        return [json.loads(line)["dialogue"] for _, line in zip(range(limit), f)]


def reviews(limit: int) -> list[str]:
    """rt-polarity's one-line reviews, 8 to a document (one alone is too short for Gopher)."""
    lines = []
    for name in ("neg.txt", "pos.txt"):
        lines += require_data(f"rt-polarity/{name}").read_text(encoding="utf-8").splitlines()[: limit * 4]
    return ["\n".join(lines[i : i + 8]) for i in range(0, len(lines), 8)]


def test_prose_looks_like_prose():
    texts = [NEWS, *shakespeare_chunks(300), *dialogues(500), *reviews(100)]
    code_like = [t[:80] for t in texts if looks_like_code(t)]
    assert not code_like


# ----------------------------------------------------------------------------------------------- judge


def test_judge_prose_runs_gopher_then_c4():
    cfg = QualityConfig(profile="prose")
    body = [sentence(i, words=12) for i in range(6)]
    text = "\n".join(["Home | About", *body, "Please enable JavaScript to continue reading."])
    assert judge(text, cfg) == Verdict(
        "\n".join(body), "prose", None, 2, {"c4.terminal_punctuation": 1, "c4.javascript": 1}
    )
    assert judge("\n".join(body[:4]), cfg) == Verdict(None, "prose", "c4.too_few_sentences", 0, {})
    assert judge(text, dataclasses.replace(cfg, c4=C4Config(enabled=False))) == Verdict(text, "prose", None)
    assert judge("Too short.", cfg) == Verdict(None, "prose", "gopher.word_count")


def test_judge_code_and_auto():
    source = Path(json.__file__).read_text(encoding="utf-8")
    assert judge(source, QualityConfig()) == Verdict(source, "code", None)
    assert judge(source, QualityConfig(profile="prose")).kind == "prose"
    minified = "var a=function(b){return b};" * 100
    assert judge(minified, QualityConfig()) == Verdict(None, "code", "code.max_line_length")
    assert judge(NEWS, QualityConfig()).kind == "prose"
    assert judge(NEWS, QualityConfig(profile="code")) == Verdict(NEWS, "code", None)
    assert judge("x", QualityConfig(enabled=False, profile="prose")) == Verdict("x", "prose", None)


# --------------------------------------------------------------------------------- parity: datatrove

REASONS = {
    "gopher_short_doc": "gopher.word_count", "gopher_long_doc": "gopher.word_count",
    "gopher_below_avg_threshold": "gopher.mean_word_length", "gopher_above_avg_threshold": "gopher.mean_word_length",
    "gopher_too_many_hashes": "gopher.hash_ratio", "gopher_too_many_ellipsis": "gopher.ellipsis_ratio",
    "gopher_too_many_bullets": "gopher.bullet_lines", "gopher_too_many_end_ellipsis": "gopher.ellipsis_lines",
    "gopher_below_alpha_threshold": "gopher.alpha_words", "gopher_enough_stop_words": "gopher.stop_words",
    "dup_para_frac": "gopher.duplicate_paragraphs", "dup_para_char_frac": "gopher.duplicate_paragraph_chars",
    "dup_line_frac": "gopher.duplicate_lines", "dup_line_char_frac": "gopher.duplicate_line_chars",
    "lorem_ipsum": "c4.lorem_ipsum", "curly_bracket": "c4.curly_bracket", "too_few_sentences": "c4.too_few_sentences",
    **{f"top_{n}_gram": f"gopher.top_{n}gram" for n in (2, 3, 4)},
    **{f"duplicated_{n}_n_grams": f"gopher.duplicate_{n}gram" for n in range(5, 11)},
}  # fmt: skip


def reference():
    """datatrove's three filters set to our thresholds, and its word splitter (spaCy's blank English
    tokenizer: the package only, no model download). A skip where absent; a failure under CI."""
    try:
        import spacy  # noqa: F401
        from datatrove.pipeline.filters import C4QualityFilter, GopherQualityFilter, GopherRepetitionFilter
        from datatrove.utils.text import split_into_words
    except ImportError as exc:
        message = f"datatrove and spacy are needed for the parity tests: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    g, c = DEFAULT, C4Config()
    filters = [
        GopherQualityFilter(
            min_doc_words=g.min_words, max_doc_words=g.max_words, min_avg_word_length=g.min_mean_word_length,
            max_avg_word_length=g.max_mean_word_length, max_symbol_word_ratio=g.max_symbol_word_ratio,
            max_bullet_lines_ratio=g.max_bullet_lines, max_ellipsis_lines_ratio=g.max_ellipsis_lines,
            max_non_alpha_words_ratio=g.min_alpha_words, min_stop_words=g.min_stop_words,
        ),
        GopherRepetitionFilter(
            dup_line_frac=g.max_duplicate_lines, dup_para_frac=g.max_duplicate_paragraphs,
            dup_line_char_frac=g.max_duplicate_line_chars, dup_para_char_frac=g.max_duplicate_paragraph_chars,
            top_n_grams=tuple(zip((2, 3, 4), g.max_top_ngram_chars)),
            dup_n_grams=tuple(zip(range(5, 11), g.max_duplicate_ngram_chars)),
        ),
        C4QualityFilter(
            split_paragraph=True, remove_citations=c.citations, filter_no_terminal_punct=c.terminal_punctuation,
            min_num_sentences=c.min_sentences, min_words_per_line=c.min_words_per_line,
            max_word_length=-1,  # c4_utils' long-word line rule has no config field here: off on both sides
            filter_lorem_ipsum=c.lorem_ipsum, filter_javascript=c.javascript_lines,
            filter_curly_bracket=c.curly_bracket, filter_policy=c.policy_lines,
        ),
    ]  # fmt: skip
    return filters, split_into_words


def datatrove_verdict(filters, text: str) -> tuple[str | None, str | None]:
    from datatrove.data import Document

    doc = Document(text=text, id="0")
    for f in filters:
        result = f.filter(doc)
        if result is not True:
            return None, REASONS[result[1]]
    return doc.text, None


def junk() -> list[tuple[str, str | None]]:
    """Constructed pages that each rule exists for, with the reason each should be dropped for."""
    body = [sentence(i, words=10) for i in range(8)]
    words = pseudo_words(400)
    text = "\n".join(body)
    return [
        ("\n".join(["Subscribe to our newsletter today."] * 12 + body[:3]), "gopher.duplicate_lines"),
        ("\n".join(f"- {' '.join(words[i * 5 : i * 5 + 5])}" for i in range(20)), "gopher.bullet_lines"),
        (
            "\n".join([*(f"• {' '.join(words[i * 5 : i * 5 + 5])}" for i in range(20)), *body[:2]]),
            "gopher.bullet_lines",
        ),
        ("\n".join(f"{' '.join(words[i * 8 : i * 8 + 8])} the..." for i in range(12)), "gopher.ellipsis_lines"),
        (" ".join(f"#{w} #the #and" for w in words[:60]), "gopher.hash_ratio"),
        (text + "\nLorem ipsum dolor sit amet, consectetur adipiscing elit.", "c4.lorem_ipsum"),
        (text + "\nThis site requires JavaScript to be enabled in your browser.\nWe use cookies.", None),
        (text + "\nfunction(x) { return x; } is how it is written.", "c4.curly_bracket"),
        ("var a=function(b){return b+1};" * 200, "gopher.alpha_words"),
        (" ".join(f"{i} | {i * 7} | {i * 13} |" for i in range(80)) + " the and", "gopher.mean_word_length"),
        ("\n".join(body[:3]), "gopher.word_count"),
        (" ".join(["the quick brown fox and"] * 40), "gopher.top_2gram"),
        (" ".join(["buy cheap watches online now with the best"] * 8 + words[:100]), "gopher.top_4gram"),
        (text + "\n" + text, "gopher.duplicate_lines"),
        ("\n\n".join(body[:4] * 3), "gopher.duplicate_paragraphs"),
        ("\n".join([*body, "Read more...", "Click here...", "Share this..."]), None),
        (text + "\nThe sky is blue.[1] Water is wet.[citation needed]", None),
        ("\n".join([*body, "Contact us", "Home", "About", "Terms of use apply to all visitors here."]), None),
        ("\n".join(body[:4] + ["Menu", "Log in", "Search"]), "c4.too_few_sentences"),
        (" ".join(["word"] * 3 + ["the", "and"] + words[:60]) + ".", "c4.too_few_sentences"),
        (" ".join(["word"] * 12 + ["the", "and"] + words[:60]) + ".", "gopher.top_2gram"),
        ("\n".join(f"{w} {w}x {w}y the and {w}z" for w in words[:20]) + "\n" + text, None),
    ]


def corpus() -> list[str]:
    junk_texts = [text for text, _ in junk()]
    return [
        *shakespeare_chunks(300),
        *dialogues(600),
        *reviews(100),
        *junk_texts,
        NEWS * 3,
        *deliberate_cases().values(),
    ]


def deliberate_difference(text: str, words: list[str]) -> str | None:
    """Which of quality.py's deliberate differences decides this document, if any (given its words)."""
    g = DEFAULT
    lower = {w for w in words if w in quality.STOP_WORDS}
    cased = {quality.STOP_FORMS[w] for w in words if w in quality.STOP_FORMS}
    if len(lower) < g.min_stop_words <= len(cased):
        return "stop words in capitals"
    every = text.splitlines() or [""]
    nonblank = [line.strip() for line in every if line.strip()] or [""]
    theirs = sum(line.lstrip().startswith(("•", "-")) for line in every) / len(every) > g.max_bullet_lines
    if theirs != (sum(line.startswith(quality.BULLETS) for line in nonblank) / len(nonblank) > g.max_bullet_lines):
        return "bullet lines"
    theirs = sum(line.rstrip().endswith(quality.ELLIPSES) for line in every) / len(every) > g.max_ellipsis_lines
    if theirs != (sum(line.endswith(quality.ELLIPSES) for line in nonblank) / len(nonblank) > g.max_ellipsis_lines):
        return "ellipsis lines"
    if _skip_ahead_differs(text, words):
        return "overlapping repeated n-grams"
    if any(line.strip().endswith(("”", "’")) for line in every):
        return "curly closing quote"
    if quality.CITATION.search(text):
        return "citation markers"
    return None


def _skip_ahead_differs(text: str, words: list[str]) -> bool:
    from datatrove.pipeline.filters.gopher_repetition_filter import find_all_duplicate

    ends = [0]
    for w in words:
        ends.append(ends[-1] + len(w))
    for n, limit in zip(range(5, 11), DEFAULT.max_duplicate_ngram_chars):
        ours = quality._repeated_chars(words, n, ends) / len(text) > limit
        if ours != (find_all_duplicate(words, n) / len(text) > limit):
            return True
    return False


def compare(texts: list[str], split_into_words, filters) -> tuple[list[tuple], dict[str, int]]:
    """(documents judged differently that no deliberate difference explains, explained ones by predicate)."""
    cfg = QualityConfig(profile="prose")
    unexplained, explained = [], {}
    for text in texts:
        ours, theirs = judge(text, cfg), datatrove_verdict(filters, text)
        if (ours.text, ours.reason) == theirs:
            continue
        why = deliberate_difference(text, split_into_words(text))
        if why:
            explained[why] = explained.get(why, 0) + 1
        else:
            unexplained.append((ours.reason, theirs[1], ours.text == theirs[0], text[:100]))
    return unexplained, explained


def test_parity_with_datatrove_given_its_words(monkeypatch):
    """Same words in, same decisions, reasons and kept texts out: a document judged differently must be one
    that a deliberate difference decides (each named by its predicate; few are)."""
    filters, split_into_words = reference()
    monkeypatch.setattr(quality, "tokens", split_into_words)
    texts = corpus()
    unexplained, explained = compare(texts, split_into_words, filters)
    assert not unexplained, unexplained[:5]
    assert sum(explained.values()) <= 0.01 * len(texts), explained


def test_parity_with_datatrove_on_our_words():
    """Our regex words against spaCy's: the same decision, reason and kept text on at least 99.5% of the
    documents no deliberate difference decides. Those that differ sit on a threshold that one token
    crosses: spaCy keeps "I'd" whole after some marks and splits it elsewhere, and such quirks are not
    copied."""
    filters, split_into_words = reference()
    texts = corpus()
    unexplained, _ = compare(texts, split_into_words, filters)
    assert len(unexplained) <= 0.005 * len(texts), unexplained


def deliberate_cases() -> dict[str, str]:
    """A document for each deliberate difference, on which datatrove and we disagree for that reason."""
    body = "\n".join(sentence(i, words=10) for i in range(6))
    words = pseudo_words(300, seed=5)
    chunk = lambda i, k=6: " ".join(words[i * k : (i + 1) * k])  # noqa: E731
    item = lambda i: f"{chunk(i, 2)} the {chunk(i + 40, 2)} and {chunk(i + 80, 2)}"  # noqa: E731
    phrase = " ".join(pseudo_words(11, length=10, seed=3)) + "."  # said twice: 12 tokens repeated
    filler = [" ".join(words[i * 40 : (i + 1) * 40]) + "." for i in range(4)]
    return {
        "stop words in capitals": "\n".join(f"The {chunk(i)} And {chunk(i + 20)}." for i in range(6)),
        "bullet lines": "\n\n".join(f"- {item(i)}." for i in range(12)),  # every line a bullet, blank lines between
        "ellipsis lines": "\n\n".join(item(i) + ("..." if i < 4 else ".") for i in range(10)),  # 4 of 10 cut off
        "overlapping repeated n-grams": "\n".join([phrase, "the and " + filler[0], filler[1], phrase, *filler[2:]]),
        "curly closing quote": body + "\nShe said the words and left, “all is well.”",
        "citation markers": body + "\nThe sky is blue and the sea is wet. [1]",
    }  # fmt: skip


@pytest.mark.parametrize("name", list(deliberate_cases()))
def test_deliberate_differences_are_named(name):
    """Each deliberate difference changes datatrove's verdict on its case, and the parity tests' predicate
    names it (so an excluded document is excluded for a stated reason)."""
    filters, split_into_words = reference()
    text = deliberate_cases()[name]
    ours = judge(text, QualityConfig(profile="prose"))
    assert (ours.text, ours.reason) != datatrove_verdict(filters, text)
    assert deliberate_difference(text, split_into_words(text)) == name


def test_junk_is_dropped_for_its_reason():
    cfg = QualityConfig(profile="prose")
    assert [judge(text, cfg).reason for text, _ in junk()] == [reason for _, reason in junk()]
