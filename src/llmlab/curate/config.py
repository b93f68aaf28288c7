"""The curation pipeline's settings: one dataclass per stage, read from YAML with every key checked.

Defaults are the published ones (Gopher: Rae et al. 2021, appendix A; C4: Raffel et al. 2020, section
2.2; The Stack / StarCoder for code; GPT-3's 13-gram decontamination), each with its reason in the help
text, so `llmlab data clean --print-config` documents the pipeline it runs. A bad key or an out-of-range
value is reported by its key path (`quality.gopher.min_words`) with the allowed range.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

from llmlab.errors import LlmlabError
from llmlab.options import HELP, option

RANGE = "range"


def bounded(default: Any, help: str, low: float, high: float = math.inf) -> Any:
    """An option with an allowed closed range, checked when a config is read."""
    return dataclasses.field(default=default, metadata={HELP: help, RANGE: (low, high)})


def fraction_list(default: list[float], help: str) -> Any:
    """A list of shares, each in [0, 1]."""
    return dataclasses.field(default_factory=lambda: list(default), metadata={HELP: help, RANGE: (0.0, 1.0)})


@dataclasses.dataclass
class NormalizeConfig:
    enabled: bool = option(True, "repair and normalise text before anything else looks at it")
    fix_unicode: bool = option(True, "repair mojibake and broken escapes with ftfy (text a scraper decoded wrongly)")
    nfc: bool = option(True, "Unicode NFC: one code-point sequence per character, so hashes and n-grams agree")
    strip_trailing_whitespace: bool = option(True, "drop spaces at line ends (leading indentation is kept: code)")
    max_blank_lines: int = bounded(2, "runs of blank lines longer than this are shortened to it", 0, 1000)


@dataclasses.dataclass
class DedupConfig:
    exact: bool = option(True, "drop documents whose normalised text hashes (blake2b) like an earlier one's")
    near: bool = option(True, "drop near-duplicates: MinHash over word n-grams, LSH bands, Jaccard verified")
    ngram: int = bounded(5, "words per shingle (datatrove and the Gopher paper use 5)", 1, 50)
    bands: int = bounded(14, "LSH bands (datatrove's default 14 x 8: candidates from Jaccard ~0.72)", 1, 1024)
    rows: int = bounded(8, "MinHash values per band; bands x rows hashes per document", 1, 64)
    threshold: float = bounded(0.7, "a candidate is a duplicate when its estimated Jaccard reaches this", 0.0, 1.0)
    seed: int = bounded(1, "seed of the MinHash permutations (same seed, same result)", 0, 2**31 - 1)


@dataclasses.dataclass
class BoilerplateConfig:
    enabled: bool = option(False, "remove lines or paragraphs already seen in an earlier kept document")
    unit: str = option("paragraph", "paragraph (blank-line separated) or line")
    min_chars: int = bounded(60, "shorter units are never removed (a closing bracket is not boilerplate)", 1, 100_000)


@dataclasses.dataclass
class GopherConfig:
    min_words: int = bounded(50, "Gopher: fewer words is not a useful document", 0, 10**9)
    max_words: int = bounded(100_000, "Gopher: more words is usually a dump, not prose", 1, 10**9)
    min_mean_word_length: float = bounded(3.0, "Gopher: shorter mean word length means lists of symbols", 0.0, 100.0)
    max_mean_word_length: float = bounded(10.0, "Gopher: longer means URLs, hashes, base64", 0.0, 100.0)
    max_symbol_word_ratio: float = bounded(0.1, "Gopher: '#' and '...' per word above this is tags/teasers", 0.0, 10.0)
    max_bullet_lines: float = bounded(0.9, "Gopher: share of lines starting with a bullet above this", 0.0, 1.0)
    max_ellipsis_lines: float = bounded(0.3, "Gopher: share of lines ending in an ellipsis (truncated)", 0.0, 1.0)
    min_alpha_words: float = bounded(0.8, "Gopher: share of words with a letter below this is tables/numbers", 0.0, 1.0)
    min_stop_words: int = bounded(2, "Gopher: at least this many of 'the be to of and that have with'", 0, 8)
    max_duplicate_lines: float = bounded(0.3, "Gopher: share of lines that repeat another line", 0.0, 1.0)
    max_duplicate_paragraphs: float = bounded(0.3, "Gopher: share of paragraphs that repeat another", 0.0, 1.0)
    max_duplicate_line_chars: float = bounded(0.2, "Gopher: share of characters in repeated lines", 0.0, 1.0)
    max_duplicate_paragraph_chars: float = bounded(0.2, "Gopher: share of characters in repeated paragraphs", 0.0, 1.0)
    max_top_ngram_chars: list[float] = fraction_list(
        [0.20, 0.18, 0.16], "Gopher: characters in the most frequent 2-, 3-, 4-gram above these shares"
    )
    max_duplicate_ngram_chars: list[float] = fraction_list(
        [0.15, 0.14, 0.13, 0.12, 0.11, 0.10], "Gopher: characters in repeated 5- to 10-grams above these shares"
    )


@dataclasses.dataclass
class C4Config:
    enabled: bool = option(True, "apply the C4 rules to prose (after Gopher)")
    terminal_punctuation: bool = option(True, "C4: keep only lines ending in . ! ? or a quote")
    min_words_per_line: int = bounded(3, "C4: lines with fewer words are menus and buttons", 0, 1000)
    min_sentences: int = bounded(5, "C4: pages with fewer sentences are dropped", 0, 10**6)
    javascript_lines: bool = option(True, 'C4: drop lines mentioning javascript ("enable JavaScript" notices)')
    policy_lines: bool = option(True, "C4: drop cookie, privacy-policy and terms-of-use lines")
    lorem_ipsum: bool = option(True, "C4: drop pages with 'lorem ipsum' (placeholder text)")
    curly_bracket: bool = option(True, "C4: drop pages with '{' (code in prose; code has its own profile)")
    citations: bool = option(True, "C4: remove Wikipedia citation markers like [1] and [citation needed]")


@dataclasses.dataclass
class CodeConfig:
    max_line_length: int = bounded(1000, "The Stack: a longer line is data or minified code", 1, 10**9)
    max_mean_line_length: float = bounded(100.0, "The Stack: mean line length above this is generated", 1.0, 10**9)
    min_alphanumeric: float = bounded(0.25, "The Stack: share of letters and digits below this is data", 0.0, 1.0)
    autogenerated: bool = option(True, "drop files whose first lines say they were generated (Codex, StarCoder)")


@dataclasses.dataclass
class QualityConfig:
    enabled: bool = option(True, "drop low-quality documents by the rules of their profile")
    profile: str = option("auto", "prose (Gopher + C4), code, or auto: each document by how it looks")
    gopher: GopherConfig = option(default_factory=GopherConfig, help="Gopher's rules for prose")
    c4: C4Config = option(default_factory=C4Config, help="C4's rules for prose")
    code: CodeConfig = option(default_factory=CodeConfig, help="rules for source code")


@dataclasses.dataclass
class LanguageConfig:
    enabled: bool = option(True, "identify each prose document's language (lingua, models inside the package)")
    keep: list[str] = option(default_factory=lambda: ["en"], help="ISO 639-1 codes to keep")
    min_confidence: float = bounded(0.5, "below this confidence in a kept language the document is dropped", 0, 1)


@dataclasses.dataclass
class PiiConfig:
    enabled: bool = option(True, "replace personal data by typed placeholders, counted")
    email: bool = option(True, "e-mail addresses -> <EMAIL>")
    phone: bool = option(True, "phone numbers -> <PHONE>")
    ip: bool = option(True, "public IPv4/IPv6 addresses -> <IP_ADDRESS> (loopback and private ranges kept)")
    credit_card: bool = option(True, "card numbers passing the Luhn checksum -> <CREDIT_CARD>")


@dataclasses.dataclass
class ToxicityConfig:
    enabled: bool = option(True, "drop documents alt-profanity-check scores as offensive (offline linear model)")
    threshold: float = bounded(0.9, "drop when the offensive probability of the whole document reaches this", 0, 1)


@dataclasses.dataclass
class DecontaminateConfig:
    enabled: bool = option(True, "find training documents that share long n-grams with evaluation sets")
    ngram: int = bounded(13, "words per n-gram (GPT-3, Brown et al. 2020, appendix C)", 4, 200)
    tasks: list[str] = option(
        default_factory=lambda: ["sentiment", "dialogsum", "arithmetic"],
        help="built-in `llmlab evaluate` tasks (those whose data is absent are named)",
    )
    files: list[str] = option(
        default_factory=list, help="JSONL evaluation sets: every string field of every record is checked"
    )
    action: str = option("remove", "remove the document or flag it (kept, listed in the report)")


@dataclasses.dataclass
class CurateConfig:
    normalize: NormalizeConfig = option(default_factory=NormalizeConfig, help="Unicode repair, NFC, whitespace")
    dedup: DedupConfig = option(default_factory=DedupConfig, help="exact and near-duplicate removal")
    boilerplate: BoilerplateConfig = option(default_factory=BoilerplateConfig, help="repeated lines or paragraphs")
    quality: QualityConfig = option(default_factory=QualityConfig, help="Gopher, C4 and code rules")
    language: LanguageConfig = option(default_factory=LanguageConfig, help="language identification")
    pii: PiiConfig = option(default_factory=PiiConfig, help="personal data scrubbing")
    toxicity: ToxicityConfig = option(default_factory=ToxicityConfig, help="offensive-text filter")
    decontaminate: DecontaminateConfig = option(default_factory=DecontaminateConfig, help="evaluation-set overlap")


CHOICES = {"boilerplate.unit": ("paragraph", "line"), "quality.profile": ("auto", "prose", "code"),
           "decontaminate.action": ("remove", "flag")}  # fmt: skip


def load_config(path: str | Path | None) -> CurateConfig:
    """The defaults, overridden by a YAML file's keys (any subset)."""
    if path is None:
        return CurateConfig()
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise LlmlabError(f"cannot read curation config {path}: {exc}", "pass a readable YAML file") from None
    return config_from_dict(data, str(path))


def config_from_dict(data: Any, where: str = "config") -> CurateConfig:
    cfg = CurateConfig()
    _fill(cfg, data, where, "")
    if cfg.quality.gopher.min_words > cfg.quality.gopher.max_words:
        raise LlmlabError(f"{where}: quality.gopher.min_words exceeds max_words", "make min_words <= max_words")
    return cfg


def _fill(target: Any, data: Any, where: str, prefix: str) -> None:
    if not isinstance(data, dict):
        raise LlmlabError(f"{where}: {prefix.rstrip('.') or 'the top level'} must be a mapping", "use key: value")
    fields = {f.name: f for f in dataclasses.fields(target)}
    for key, value in data.items():
        path = f"{prefix}{key}"
        if key not in fields:
            kind = "stage" if not prefix else "key"
            raise LlmlabError(f"{where}: unknown {kind} {path!r}", f"use one of {', '.join(fields)}")
        current = getattr(target, key)
        if dataclasses.is_dataclass(current):
            _fill(current, value, where, path + ".")
        else:
            setattr(target, key, _checked(value, current, fields[key], where, path))


def _checked(value: Any, current: Any, f: dataclasses.Field, where: str, path: str) -> Any:
    expected = type(current)
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if expected is list:
        item = float if current and isinstance(current[0], float) else str
        value = (
            [float(v) if item is float and isinstance(v, int) and not isinstance(v, bool) else v for v in value]
            if isinstance(value, list)
            else value
        )
        if not isinstance(value, list) or any(not isinstance(v, item) for v in value):
            raise LlmlabError(f"{where}: {path} must be a list like {current}", "fix that key")
        if path.endswith("ngram_chars") and len(value) != len(current):
            raise LlmlabError(f"{where}: {path} needs {len(current)} values", f"like the default {current}")
    elif not isinstance(value, expected) or (expected is int and isinstance(value, bool)):
        raise LlmlabError(f"{where}: {path} must be a {expected.__name__}, not {value!r}", "fix that key")
    low, high = f.metadata.get(RANGE, (-math.inf, math.inf))
    numbers = [v for v in (value if isinstance(value, list) else [value]) if type(v) in (int, float)]
    if any(not low <= v <= high for v in numbers):
        raise LlmlabError(f"{where}: {path} = {value} is out of range", f"allowed: {low} to {high}")
    if path in CHOICES and value not in CHOICES[path]:
        raise LlmlabError(f"{where}: {path} = {value!r} is not allowed", f"use one of {', '.join(CHOICES[path])}")
    return value


def config_as_dict(cfg: CurateConfig) -> dict:
    return dataclasses.asdict(cfg)
