"""Language identification: real sentences in four languages, confidence thresholds, bad codes, real data."""

from __future__ import annotations

import json
import sys

import pytest

from llmlab.curate.config import LanguageConfig
from llmlab.curate.language import PREFIX_CHARS, LanguageIdentifier, prefix
from llmlab.errors import LlmlabError
from tests.helpers import require_data

SENTENCES = {
    "en": "The committee met on Tuesday to discuss next year's budget, and most members agreed that the town "
    "library needs more money for books.",
    "fr": "Le comité s'est réuni mardi pour discuter du budget de l'année prochaine, et la plupart des membres "
    "ont convenu que la bibliothèque avait besoin de plus de moyens.",
    "de": "Der Ausschuss traf sich am Dienstag, um den Haushalt für das nächste Jahr zu besprechen, und die "
    "meisten Mitglieder waren sich einig, dass die Bibliothek mehr Geld braucht.",
    "es": "El comité se reunió el martes para discutir el presupuesto del próximo año, y la mayoría de los "
    "miembros estuvo de acuerdo en que la biblioteca necesita más fondos.",
}


@pytest.fixture(scope="module")
def english():
    return LanguageIdentifier(LanguageConfig())


def test_real_sentences_in_four_languages_are_identified(english):
    results = english.identify(list(SENTENCES.values()))
    assert [code for code, _ in results] == list(SENTENCES)
    assert all(0.9 <= confidence <= 1.0 for _, confidence in results)


def test_only_kept_languages_pass(english):
    results = dict(zip(SENTENCES, english.identify(list(SENTENCES.values()))))
    assert english.reason(*results["en"]) is None
    others = ("fr", "de", "es")
    assert [english.reason(*results[code]) for code in others] == [f"language.{code}" for code in others]
    both = LanguageIdentifier(LanguageConfig(keep=["en", "fr"]))
    assert both.reason(*results["fr"]) is None and both.reason(*results["de"]) == "language.de"


def test_confidence_threshold_is_inclusive():
    ident = LanguageIdentifier(LanguageConfig(keep=["en"], min_confidence=0.6))
    assert ident.reason("en", 0.6) is None
    assert ident.reason("en", 0.5999) == "language.low_confidence"
    assert ident.reason("fr", 0.99) == "language.fr"
    assert ident.reason("unknown", 0.0) == "language.unknown"


def test_a_short_english_phrase_is_english_with_less_confidence():
    strict = LanguageIdentifier(LanguageConfig(keep=["en"], min_confidence=0.99))
    (code, confidence), (long_code, long_confidence) = strict.identify(["Where is the station?", SENTENCES["en"]])
    assert code == "en" and 0.5 < confidence < 0.99
    assert strict.reason(code, confidence) == "language.low_confidence"
    assert strict.reason(long_code, long_confidence) is None


@pytest.mark.parametrize("text", ["", "12345 67890 !!! ---", "ok"])
def test_texts_without_scorable_letters_are_unknown(english, text):
    assert english.identify([text]) == [("unknown", 0.0)]


@pytest.mark.parametrize("keep, fragment", [(["en", "xx"], "'xx'"), (["fy"], "'fy'"), (["EN"], "'EN'")])
def test_codes_lingua_does_not_know_are_one_clear_error(keep, fragment):
    with pytest.raises(LlmlabError) as caught:
        LanguageIdentifier(LanguageConfig(keep=keep))
    message = str(caught.value)
    assert fragment in message and "ISO 639-1" in message and "\n" not in message
    assert " en " in caught.value.fix


def test_an_empty_keep_list_is_an_error():
    with pytest.raises(LlmlabError, match="language.keep is empty"):
        LanguageIdentifier(LanguageConfig(keep=[]))


def test_prefix_is_bounded_and_cut_at_a_space():
    text = "word " * 200
    cut = prefix(text)
    assert len(cut) <= PREFIX_CHARS and cut.endswith("word") and text.startswith(cut)
    assert prefix("short text") == "short text"
    assert prefix("x" * 1000) == "x" * PREFIX_CHARS  # no space: a hard cut


def test_a_document_is_judged_by_its_opening(english):
    document = SENTENCES["en"] + " " + SENTENCES["en"] + " " + SENTENCES["fr"] * 20
    assert english.identify([document])[0][0] == "en"
    assert english.identify([SENTENCES["fr"] * 20 + SENTENCES["en"] * 3])[0][0] == "fr"


def test_missing_lingua_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "lingua", None)
    with pytest.raises(LlmlabError, match=r"pip install 'llmlab\[curate\]'"):
        LanguageIdentifier(LanguageConfig())


def test_real_english_data_is_kept(english):
    dialogues = [json.loads(line)["dialogue"] for line in require_data("dialogsum/dev.jsonl").open()][:300]
    lines = require_data("tinyshakespeare.txt").read_text().split("\n\n")
    passages = ["\n\n".join(lines[i : i + 8]) for i in range(0, 800, 8)]
    results = english.identify(dialogues + passages)
    dropped = [text[:80] for text, result in zip(dialogues + passages, results) if english.reason(*result)]
    assert not dropped
