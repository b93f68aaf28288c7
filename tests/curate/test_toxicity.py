"""Toxicity filter: offensive text scores high, clean real data is rarely dropped, whole-document scoring."""

from __future__ import annotations

import json
import sys

import pytest

from llmlab.curate import toxicity
from llmlab.curate.config import ToxicityConfig
from llmlab.curate.toxicity import offensive_probability, toxicity_reason
from llmlab.errors import LlmlabError
from tests.helpers import require_data

CLEAN = ["Thank you for the lovely dinner, we should do it again soon.", "The train leaves at nine tomorrow morning."]
OFFENSIVE = ["Shut up, you fucking idiot, nobody cares about your shit.", "Fuck you and your whole family, asshole."]


def test_batched_probabilities_separate_clean_from_offensive():
    probabilities = offensive_probability(CLEAN + OFFENSIVE)
    assert len(probabilities) == 4 and all(isinstance(p, float) for p in probabilities)
    assert max(probabilities[:2]) < 0.2 and min(probabilities[2:]) > 0.95


def test_an_empty_batch_is_empty():
    assert offensive_probability([]) == []


def test_threshold_is_inclusive():
    cfg = ToxicityConfig(threshold=0.9)
    assert toxicity_reason(0.9, cfg) == "toxicity"
    assert toxicity_reason(0.95, cfg) == "toxicity"
    assert toxicity_reason(0.8999, cfg) is None
    assert toxicity_reason(0.0, ToxicityConfig(threshold=0.0)) == "toxicity"


def dialogues(split: str) -> list[str]:
    return [json.loads(line)["dialogue"] for line in require_data(f"dialogsum/{split}.jsonl").open()]


def test_the_whole_document_is_scored_so_one_line_in_a_long_one_is_diluted():
    """The chosen rule (see the module docstring): density of offensive words, not any offensive line."""
    long_clean = max(dialogues("dev"), key=len)
    line, short, long = offensive_probability([OFFENSIVE[0], CLEAN[0] + "\n" + OFFENSIVE[0], long_clean + OFFENSIVE[0]])
    assert line > 0.95 and short > 0.9
    assert long < 0.9 < line


def test_the_default_threshold_rarely_drops_clean_real_data():
    cfg = ToxicityConfig()
    texts = dialogues("dev") + dialogues("test")
    reviews = require_data("rt-polarity/pos.txt").read_text(encoding="latin-1").splitlines()[:2000]
    dialogue_drops = sum(toxicity_reason(p, cfg) is not None for p in offensive_probability(texts))
    review_drops = sum(toxicity_reason(p, cfg) is not None for p in offensive_probability(reviews))
    assert dialogue_drops <= 0.005 * len(texts)  # measured: 8 of 12,460 training dialogues (0.06%)
    assert review_drops <= 0.01 * len(reviews)  # measured: 36 of 10,662 sentences (0.34%)


def test_missing_package_names_the_extra(monkeypatch):
    monkeypatch.setattr(toxicity, "_predict_prob", None)
    monkeypatch.setitem(sys.modules, "profanity_check", None)
    with pytest.raises(LlmlabError, match=r"pip install 'llmlab\[curate\]'"):
        offensive_probability(["hello"])
