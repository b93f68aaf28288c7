"""Language identification with lingua (its n-gram models ship inside the package; nothing is downloaded).

Choices, measured on 2,000 DialogSum dialogues (mean 740 characters) on one otherwise idle core:

- Candidate languages: the kept ones plus the 25 largest languages of the web (Common Crawl's biggest
  shares), not all 75. A document in a language that is not a candidate is labelled with the nearest
  candidate (so the set must hold the usual competitors of the kept languages, or they would win by
  default); with these 25 it is about 3x faster than with all 75 (time grows with the number of
  candidates written in a document's script). The kept languages alone would be fastest and wrong: with
  one candidate every text is that language at confidence 1.
- Low-accuracy mode (trigrams only): lingua uses only trigrams in either mode once a text holds about 120
  characters after cleaning, so for documents the two agree (identical confidences on 300-character
  DialogSum prefixes, different ones on 150-character prefixes); high accuracy preloads 1- to 5-gram
  models (630 MB more and 2-7 s to build, against 36 MB and 0.1 s per worker process) that help single
  words and short phrases. Those are unreliable here: "Thank you" comes out German, "This is a test"
  Portuguese.
- A bounded prefix: the first PREFIX_CHARS characters, cut at a space. Trigram evidence from a few
  sentences already decides (every DialogSum dialogue is English at confidence >= 0.9999 from 300
  characters; from 200 the lowest is 0.79); time is linear in length, so the prefix makes a document's
  cost constant: 4,200 docs/s at 300 characters against 1,700 on whole dialogues (1,300 and 470 with all
  75 languages). The price: a document is judged by its opening.
"""

from __future__ import annotations

from llmlab.curate.config import LanguageConfig
from llmlab.errors import LlmlabError

PREFIX_CHARS = 300
UNKNOWN = "unknown"
# The web's largest languages (Common Crawl's top shares), the competitors a kept language must beat.
WEB_LANGUAGES = (
    "en de ru ja zh es fr it pt pl nl vi tr id cs fa sv ko ar hu ro el da fi uk"
).split()  # fmt: skip


def _lingua():
    try:
        import lingua
    except ImportError:
        raise LlmlabError(
            "language identification needs lingua-language-detector", "pip install 'llmlab[curate]'"
        ) from None
    return lingua


def lingua_languages() -> dict[str, object]:
    """lingua's languages by lower-case ISO 639-1 code."""
    return {language.iso_code_639_1.name.lower(): language for language in _lingua().Language.all()}


def _checked_keep(keep: list[str], known: dict[str, object]) -> list[str]:
    if not keep:
        raise LlmlabError("language.keep is empty: every document would be dropped", "list codes like [en]")
    for code in keep:
        if code not in known:
            raise LlmlabError(
                f"language.keep: {code!r} is not an ISO 639-1 code lingua knows",
                f"use lower-case codes among {' '.join(sorted(known))}",
            )
    return list(keep)


def prefix(text: str, limit: int = PREFIX_CHARS) -> str:
    """At most `limit` characters from the start, cut at the last space so no word is split."""
    if len(text) <= limit:
        return text
    cut = text.rfind(" ", 0, limit + 1)
    return text[: cut if cut > limit // 2 else limit]


class LanguageIdentifier:
    """One lingua detector, built once per worker process (0.1 s, about 36 MB with the default set)."""

    def __init__(self, cfg: LanguageConfig):
        known = lingua_languages()
        self.keep = set(_checked_keep(cfg.keep, known))
        self.min_confidence = cfg.min_confidence
        codes = sorted(self.keep | set(WEB_LANGUAGES))
        builder = _lingua().LanguageDetectorBuilder.from_languages(*(known[code] for code in codes))
        self.detector = builder.with_low_accuracy_mode().with_preloaded_language_models().build()

    def identify(self, texts: list[str]) -> list[tuple[str, float]]:
        """(ISO 639-1 code or "unknown", confidence in [0, 1]) per text; "unknown" when lingua finds no
        letters it can score (digits, symbols, an empty text)."""
        return [self._identify(text) for text in texts]

    def _identify(self, text: str) -> tuple[str, float]:
        values = self.detector.compute_language_confidence_values(prefix(text))
        if not values or values[0].value <= 0.0:
            return UNKNOWN, 0.0
        best = values[0]
        return best.language.iso_code_639_1.name.lower(), float(best.value)

    def reason(self, language: str, confidence: float) -> str | None:
        """Why a document goes: "language.<code>" when its language is not kept, "language.low_confidence"
        when a kept language is below min_confidence; None keeps it."""
        if language not in self.keep:
            return f"language.{language}"
        if confidence < self.min_confidence:
            return "language.low_confidence"
        return None
