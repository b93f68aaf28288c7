"""The curation config: defaults are the published thresholds, and a bad file is one clear line."""

from __future__ import annotations

import pytest

from llmlab.curate.config import CurateConfig, config_from_dict, load_config
from llmlab.errors import LlmlabError


def test_defaults_are_the_published_thresholds():
    cfg = CurateConfig()
    g = cfg.quality.gopher
    assert (g.min_words, g.max_words, g.min_mean_word_length, g.max_mean_word_length) == (50, 100_000, 3, 10)
    assert (g.max_symbol_word_ratio, g.max_bullet_lines, g.max_ellipsis_lines) == (0.1, 0.9, 0.3)
    assert g.min_alpha_words == 0.8
    assert g.max_duplicate_ngram_chars == [0.15, 0.14, 0.13, 0.12, 0.11, 0.10]
    assert (cfg.quality.c4.min_sentences, cfg.quality.c4.min_words_per_line) == (5, 3)
    assert (cfg.dedup.bands, cfg.dedup.rows, cfg.dedup.ngram, cfg.decontaminate.ngram) == (14, 8, 5, 13)


def test_a_subset_overrides_and_ints_become_floats():
    cfg = config_from_dict({"dedup": {"threshold": 1}, "language": {"keep": ["en", "fr"]}})
    assert cfg.dedup.threshold == 1.0 and isinstance(cfg.dedup.threshold, float)
    assert cfg.language.keep == ["en", "fr"] and cfg.dedup.bands == 14


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        ({"dedupe": {}}, "unknown stage 'dedupe'"),
        ({"quality": {"gopher": {"min_word": 3}}}, "unknown key 'quality.gopher.min_word'"),
        ({"dedup": {"threshold": 1.5}}, "dedup.threshold = 1.5 is out of range"),
        ({"dedup": {"bands": 0}}, "dedup.bands = 0 is out of range"),
        ({"dedup": {"bands": 2.5}}, "dedup.bands must be a int"),
        ({"dedup": {"exact": "yes"}}, "dedup.exact must be a bool"),
        ({"quality": {"profile": "poetry"}}, "quality.profile = 'poetry' is not allowed"),
        ({"quality": {"gopher": {"max_top_ngram_chars": [0.2, 0.1]}}}, "needs 3 values"),
        ({"quality": {"gopher": {"max_top_ngram_chars": [0.2, 1.1, 0.1]}}}, "out of range"),
        ({"quality": {"gopher": {"min_words": 500, "max_words": 100}}}, "min_words exceeds max_words"),
        ({"language": {"keep": "en"}}, "language.keep must be a list"),
        ({"decontaminate": {"action": "delete"}}, "decontaminate.action = 'delete' is not allowed"),
        ({"quality": 3}, "quality must be a mapping"),
        ([1, 2], "the top level must be a mapping"),
    ],
)
def test_bad_settings_name_their_key(data, fragment):
    with pytest.raises(LlmlabError, match="c.yaml: ") as caught:
        config_from_dict(data, "c.yaml")
    assert fragment in str(caught.value)


def test_yaml_files(tmp_path):
    path = tmp_path / "curate.yaml"
    path.write_text("dedup:\n  threshold: 0.8\n")
    assert load_config(path).dedup.threshold == 0.8
    path.write_text("dedup: [unclosed\n")
    with pytest.raises(LlmlabError, match="cannot read curation config"):
        load_config(path)
    with pytest.raises(LlmlabError, match="cannot read curation config"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("")
    assert load_config(path) == CurateConfig()
