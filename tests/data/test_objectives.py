"""Masked LM and span corruption against the published algorithms (BERT, T5), by statistics over many draws."""

import numpy as np
import pytest
import torch

from llmlab.data.objectives import (
    IGNORE,
    check_objective,
    mask_tokens,
    merge_span_corruption,
    mlm_batch,
    random_spans_noise_mask,
    span_batch,
    span_corrupt,
    span_lengths,
)
from llmlab.errors import LlmlabError
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT


def test_bert_masking_statistics_over_many_draws():
    vocab, mask_id, specials = 1000, 3, {0, 1, 2, 3}
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(4, vocab, (512, 128), generator=generator)
    ids[:, 0], ids[:, -1] = 1, 2  # [CLS] ... [SEP]
    ids[:, 60] = 2  # a separator inside the row
    ids[:8, 100:] = 0  # padding at the end of some rows
    special = torch.isin(ids, torch.tensor(sorted(specials)))
    pool = torch.arange(4, vocab)
    inputs, labels = mask_tokens(ids, special, mask_id, pool, generator)

    selected = labels != IGNORE
    ordinary = int((~special).sum())
    assert abs(int(selected.sum()) / ordinary - 0.15) < 0.01  # 15% of the non-special tokens
    assert not (selected & special).any()  # special and padding tokens are never selected
    assert torch.equal(inputs[special], ids[special])  # ... nor altered
    assert torch.equal(labels[selected], ids[selected])  # labels are the original tokens
    assert torch.equal(inputs[~selected], ids[~selected])  # nothing else changes

    chosen = inputs[selected]
    original = ids[selected]
    n = len(chosen)
    masked = (chosen == mask_id).float().sum() / n
    kept = (chosen == original).float().sum() / n
    random = 1 - masked - kept
    assert abs(masked - 0.8) < 0.02 and abs(kept - 0.1) < 0.02 and abs(random - 0.1) < 0.02
    swapped = chosen[(chosen != mask_id) & (chosen != original)]
    assert bool((swapped >= 4).all())  # random replacements are ordinary tokens
    per_row = selected[8:].sum(dim=1)  # rows without padding: round(15% of 125) each, as in BERT
    assert bool((per_row == round(0.15 * 125)).all())


def test_mlm_batches_wrap_rows_and_are_reproducible():
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    ids = np.asarray(tokenizer.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    a = mlm_batch(ids, tokenizer, 4, 32, seed=1, step=5)
    b = mlm_batch(ids, tokenizer, 4, 32, seed=1, step=5)
    c = mlm_batch(ids, tokenizer, 4, 32, seed=1, step=6)
    assert torch.equal(a.inputs, b.inputs) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.labels, c.labels)
    assert a.inputs.shape == (4, 32)
    assert bool((a.inputs[:, 0] == tokenizer.cls_id).all()) and bool((a.inputs[:, -1] == tokenizer.sep_id).all())
    assert bool((a.labels[:, [0, -1]] == IGNORE).all())


def test_t5_length_helper_matches_the_published_numbers():
    assert span_lengths(512) == (568, 114)
    raw, target = span_lengths(128)
    assert raw - round(raw * 0.15) + round(round(raw * 0.15) / 3) + 1 == 128


def test_span_corruption_statistics_and_exact_reconstruction():
    rng = np.random.default_rng(0)
    sentinels = list(range(32099, 31999, -1))  # <extra_id_0> is the last id, then downward
    eos = 1
    lengths, counts, firsts = [], [], []
    for _ in range(500):
        tokens = rng.integers(2, 32000, size=568)
        mask = random_spans_noise_mask(568, 0.15, 3.0, rng)
        assert mask.sum() == 85  # round(0.15 * 568) noise tokens
        starts = mask & ~np.concatenate([[False], mask[:-1]])
        assert starts.sum() == 28  # round(85 / 3) spans
        assert not mask[0]  # the first span is kept, as in T5's layout
        firsts.append(mask.argmax())
        counts.append(starts.sum())
        run_lengths = np.diff(np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(int), [0]]))))[::2]
        lengths.extend(run_lengths.tolist())
        inputs, targets = span_corrupt(tokens, mask, sentinels, eos)
        assert len(inputs) == 512 and len(targets) == 114
        assert inputs[-1] == eos and targets[-1] == eos
        used = [t for t in targets if t in set(sentinels)]
        assert used == sentinels[: len(used)] == [t for t in inputs if t in set(sentinels)]
        assert targets[0] == sentinels[0]  # the target starts with the first sentinel
        assert np.array_equal(merge_span_corruption(inputs, targets, sentinels, eos), tokens)
    assert abs(np.mean(lengths) - 85 / 28) < 0.01  # mean span length ~ 3
    assert len(set(firsts)) > 20  # span positions vary


def test_span_batches_use_the_tokenizers_descending_sentinels():
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    assert tokenizer.sentinel_ids[:3] == [tokenizer.vocab_size - 1, tokenizer.vocab_size - 2, tokenizer.vocab_size - 3]
    ids = np.asarray(tokenizer.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    batch = span_batch(ids, tokenizer, 3, 64, tokenizer.pad_id, seed=0, step=0)
    _, target_length = span_lengths(64)
    assert batch.inputs.shape == (3, 64) and batch.labels.shape == (3, target_length)
    assert bool((batch.decoder_inputs[:, 0] == tokenizer.pad_id).all())
    assert torch.equal(batch.decoder_inputs[:, 1:], batch.labels[:, :-1])  # teacher forcing: shifted right
    assert batch.labels[0, 0] == tokenizer.sentinel_ids[0]


@pytest.mark.parametrize(
    "family,objective,message",
    [
        ("encoder", "clm", "does not train encoder"),
        ("decoder", "span", "does not train decoder"),
        ("decoder", "xyz", "unknown"),
    ],
)
def test_nonsense_family_objective_pairs_are_refused(family, objective, message):
    with pytest.raises(LlmlabError, match=message):
        check_objective(family, objective)
    assert check_objective("encoder", None) == "mlm" and check_objective("encoder-decoder", None) == "span"


def test_a_ranks_rows_are_exactly_those_rows_of_the_whole_batch():
    """Each rank reads only its share of a global batch, drawn exactly as one process draws it."""
    from llmlab.data.objectives import causal_lm_batch, seq2seq_batch

    encoder = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    t5 = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    ids_e = np.asarray(encoder.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    ids_t = np.asarray(t5.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    sources = [np.arange(3, 3 + n) for n in range(2, 14)]
    makers = {
        "clm": lambda rows: causal_lm_batch(ids_e, 6, 16, 7, 3, 1, rows),
        "mlm": lambda rows: mlm_batch(ids_e, encoder, 6, 32, 7, 3, 1, 0.15, rows),
        "span": lambda rows: span_batch(ids_t, t5, 6, 32, t5.pad_id, 7, 3, 1, 0.15, 3.0, rows),
        "seq2seq": lambda rows: seq2seq_batch(sources, sources, 6, 16, 0, 1, 0, 7, 3, 1, rows),
    }
    for name, make in makers.items():
        whole = make(None)
        for start in (0, 2, 4):
            part = make(slice(start, start + 2))
            if name == "seq2seq":  # padded to its own longest row: compare the real tokens
                for r in range(2):
                    real = part.labels[r] != IGNORE
                    assert torch.equal(part.labels[r][real], whole.labels[start + r][whole.labels[start + r] != IGNORE])
                continue
            assert torch.equal(part.inputs, whole.inputs[start : start + 2]), name
            assert torch.equal(part.labels, whole.labels[start : start + 2]), name
