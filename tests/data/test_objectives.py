"""Masked LM and span corruption against the published algorithms (BERT, T5), by statistics over many draws."""

import re

import numpy as np
import pytest
import torch

from llmlab.data.objectives import (
    IGNORE,
    Batch,
    _generator,
    causal_lm_batch,
    check_objective,
    mask_tokens,
    merge_span_corruption,
    mlm_batch,
    ordinary_tokens,
    random_segmentation,
    random_spans_noise_mask,
    seq2seq_batch,
    span_batch,
    span_corrupt,
    span_lengths,
)
from llmlab.errors import LlmlabError
from llmlab.tokenizer import EOS, TextTokenizer, train_tokenizer
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


# -- exact behaviour of each piece, on hand-made inputs ------------------------------------------------


def _raises_exactly(message: str):
    """The whole one-line message of the LlmlabError (`what — fix`), not just a fragment of it."""
    return pytest.raises(LlmlabError, match=f"^{re.escape(message)}$")


@pytest.mark.parametrize(
    "family,objective,message",
    [
        (
            "decoder",
            "xyz",
            "unknown objective 'xyz' — choose one of: clm, mlm, seq2seq, span",
        ),
        (
            "encoder",
            "clm",
            "objective 'clm' does not train encoder models — use --objective mlm with --family encoder,"
            " or --family decoder for clm",
        ),
        (
            "encoder-decoder",
            "mlm",
            "objective 'mlm' does not train encoder-decoder models — use --objective span or seq2seq"
            " with --family encoder-decoder, or --family encoder for mlm",
        ),
        (
            "decoder",
            "seq2seq",
            "objective 'seq2seq' does not train decoder models — use --objective clm with --family decoder,"
            " or --family encoder-decoder for seq2seq",
        ),
    ],
)
def test_nonsense_pairs_are_refused_with_the_whole_fix(family, objective, message):
    with _raises_exactly(message):
        check_objective(family, objective)


def test_moving_a_batch_moves_every_field_and_keeps_absent_ones_absent():
    inputs, labels = torch.tensor([[5, 6, 0]]), torch.tensor([[7, 8]])
    attention, decoder = torch.tensor([[True, True, False]]), torch.tensor([[2, 7]])
    moved = Batch(inputs, labels, attention, decoder).to(torch.device("meta"))
    fields = (moved.inputs, moved.labels, moved.attention_mask, moved.decoder_inputs)
    assert all(t is not None and t.device.type == "meta" for t in fields)
    assert moved.attention_mask.dtype == torch.bool and moved.attention_mask.shape == (1, 3)
    assert moved.decoder_inputs.dtype == torch.long and moved.decoder_inputs.shape == (1, 2)
    bare = Batch(inputs, labels).to(torch.device("meta"))
    assert bare.inputs.device.type == "meta" and bare.attention_mask is None and bare.decoder_inputs is None


def test_generators_of_different_steps_draw_different_streams():
    streams = {
        tuple(torch.rand(4, generator=_generator(seed, step, micro, 1)).tolist())
        for seed in (0, 1)
        for step in range(100)
        for micro in (0, 1)
    }
    assert len(streams) == 400  # 2**62 seeds: no two (seed, step, micro) collide


def test_a_short_row_still_masks_exactly_one_token():
    # [CLS] a b c [SEP]: round(0.15 * 3) = 0 -> at least one; [CLS] 7 tokens [SEP]: round(1.05) = 1
    ids = torch.tensor([[1, 10, 11, 12, 2, 0, 0, 0, 0], [1, 10, 11, 12, 13, 14, 15, 16, 2]])
    special = ids < 4
    for seed in range(20):
        _, labels = mask_tokens(ids, special, 3, torch.arange(4, 20), torch.Generator().manual_seed(seed))
        assert (labels != IGNORE).sum(dim=1).tolist() == [1, 1]


def test_bert_split_is_half_open_at_80_and_90_percent(monkeypatch):
    """Selected tokens with draw u become [MASK] for u in [0, .8), random for [.8, .9), stay for [.9, 1)."""
    below = lambda x: torch.nextafter(torch.tensor(x), torch.tensor(0.0)).item()  # noqa: E731
    draws = torch.tensor([[0.0, below(0.8), 0.8, below(0.9), 0.9, below(1.0)]], dtype=torch.float32)
    monkeypatch.setattr(torch, "rand", lambda shape, generator=None: draws.expand(shape).clone())
    ids = torch.full((1, 6), 5)
    inputs, labels = mask_tokens(
        ids, torch.zeros_like(ids, dtype=torch.bool), 3, torch.tensor([7]), torch.Generator(), probability=1.0
    )
    assert labels.tolist() == [[5] * 6]
    assert inputs.tolist() == [[3, 3, 7, 7, 5, 5]]


def test_the_random_pool_is_every_non_special_id_as_long():
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    pool = ordinary_tokens(tokenizer)
    assert pool.dtype == torch.long
    assert pool.tolist() == [i for i in range(tokenizer.vocab_size) if i not in tokenizer.special_ids]
    from tokenizers import Tokenizer, models

    only_specials = Tokenizer(models.BPE())
    only_specials.add_special_tokens([EOS])
    empty = ordinary_tokens(TextTokenizer(only_specials))
    assert empty.dtype == torch.long and empty.numel() == 0  # an index tensor even when empty


def test_mlm_batches_select_15_percent_by_default():
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    ids = np.asarray(tokenizer.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    assert not set(ids.tolist()) & tokenizer.special_ids
    batch = mlm_batch(ids, tokenizer, 4, 42, seed=0, step=0)  # 40 window tokens per row
    assert (batch.labels != IGNORE).sum(dim=1).tolist() == [6] * 4  # round(0.15 * 40)


def _without(tokenizer: TextTokenizer, role: str) -> TextTokenizer:
    setattr(tokenizer, f"{role}_id", None)
    return tokenizer


@pytest.mark.parametrize(
    "role,name",
    [("cls", "[CLS]"), ("sep", "[SEP]"), ("mask", "[MASK] or <mask>")],
)
def test_mlm_batches_need_cls_sep_and_mask(role, name):
    tokenizer = _without(train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder"), role)
    ids = np.asarray(tokenizer.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    message = f"the tokenizer has no {name} token, needed for masked-LM training"
    message += " — use a checkpoint of a family that has it"
    with _raises_exactly(message):
        mlm_batch(ids, tokenizer, 2, 16, seed=0, step=0)


def test_span_batches_need_eos_and_sentinels():
    no_eos = _without(train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder"), "eos")
    ids = np.asarray(no_eos.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    with _raises_exactly(
        "the tokenizer has no <|endoftext|> or </s> or <|end_of_text|> token, needed for span corruption"
        " — use a checkpoint of a family that has it"
    ):
        span_batch(ids, no_eos, 2, 32, 0, seed=0, step=0)
    decoder = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    assert decoder.eos_id is not None and not decoder.sentinel_ids
    with _raises_exactly("the tokenizer has no <extra_id_N> sentinels — train an encoder-decoder tokenizer"):
        span_batch(ids, decoder, 2, 32, 0, seed=0, step=0)


def test_noise_counts_are_clamped_to_at_least_one_token_and_one_kept():
    rng = np.random.default_rng(0)
    for length in (3, 5, 6):  # round(0.15 * length) is 0 or 1: one noise token, in one span
        mask = random_spans_noise_mask(length, 0.15, 3.0, rng)
        assert mask.sum() == 1 and not mask[0]
    # every token noise asked for: all but the first (kept) token, in one span as asked
    assert random_spans_noise_mask(10, 1.0, 10.0, rng).tolist() == [False] + [True] * 9
    mask = random_spans_noise_mask(12, 0.5, 6.0, rng)  # 6 noise tokens in round(6 / 6) = 1 span
    assert mask.sum() == 6 and np.count_nonzero(np.diff(mask.astype(int)) == 1) == 1


def test_random_segmentation_can_cut_anywhere():
    rng = np.random.default_rng(0)
    assert random_segmentation(3, 3, rng).tolist() == [1, 1, 1]
    assert random_segmentation(5, 1, rng).tolist() == [5]
    seen = set()
    for _ in range(300):
        lengths = random_segmentation(4, 2, rng)
        assert lengths.sum() == 4 and (lengths >= 1).all()
        seen.add(tuple(lengths.tolist()))
    assert seen == {(1, 3), (2, 2), (3, 1)}  # the cut can fall after any of the first three items


def test_span_corruption_of_a_span_at_the_start_with_every_sentinel_used():
    tokens = np.array([10, 11, 12, 13, 14, 15], dtype=np.int32)
    mask = np.array([1, 1, 0, 0, 1, 0], dtype=bool)
    sentinels, eos = [99, 98], 1  # exactly as many sentinels as spans
    inputs, targets = span_corrupt(tokens, mask, sentinels, eos)
    assert inputs.tolist() == [99, 12, 13, 98, 15, 1]
    assert targets.tolist() == [99, 10, 11, 98, 14, 1]
    assert inputs.dtype == np.int32 and targets.dtype == np.int32  # the ids keep their dtype
    merged = merge_span_corruption(inputs, targets, sentinels, eos)
    assert merged.tolist() == tokens.tolist() and merged.dtype == np.int32


def test_span_corruption_refuses_more_spans_than_sentinels():
    tokens = np.arange(10, 17)
    mask = np.array([0, 1, 0, 1, 0, 1, 0], dtype=bool)  # three spans
    with _raises_exactly("3 noise spans but the tokenizer has 2 sentinels — use a shorter --block-size"):
        span_corrupt(tokens, mask, [99, 98], 1)


def test_span_batches_follow_a_non_default_mean_span_length():
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    ids = np.asarray(tokenizer.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    raw, target_length = span_lengths(64, 0.15, 2.0)
    noise = round(raw * 0.15)
    assert raw - noise + round(noise / 2.0) + 1 == 64  # the helper's own definition, with mean 2
    assert (raw, target_length) != span_lengths(64, 0.15, 3.0)
    batch = span_batch(ids, tokenizer, 3, 64, tokenizer.pad_id, seed=0, step=0, mean_noise_span_length=2.0)
    assert batch.inputs.shape == (3, 64) and batch.labels.shape == (3, target_length)
    spans = [sum(1 for t in row if t in set(tokenizer.sentinel_ids)) for row in batch.labels.tolist()]
    assert spans == [round(noise / 2.0)] * 3


def test_micro_defaults_to_zero_for_every_objective():
    encoder = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    t5 = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder-decoder")
    ids_e = np.asarray(encoder.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    ids_t = np.asarray(t5.encode_document(SAMPLE_TEXT * 20), dtype=np.int64)
    pairs = [np.arange(10 * k, 10 * k + k + 1) for k in range(1, 9)]
    makers = {
        "clm": lambda **kw: causal_lm_batch(ids_e, 6, 16, 7, 3, **kw),
        "mlm": lambda **kw: mlm_batch(ids_e, encoder, 6, 32, 7, 3, **kw),
        "span": lambda **kw: span_batch(ids_t, t5, 6, 32, t5.pad_id, 7, 3, **kw),
        "seq2seq": lambda **kw: seq2seq_batch(pairs, pairs, 6, 16, 0, 1, 2, 7, 3, **kw),
    }
    for name, make in makers.items():
        default, zero, one = make(), make(micro=0), make(micro=1)
        assert torch.equal(default.inputs, zero.inputs) and torch.equal(default.labels, zero.labels), name
        assert not (one.inputs.shape == zero.inputs.shape and torch.equal(one.inputs, zero.inputs)), name


def test_seq2seq_batches_cut_pad_and_shift_exactly():
    sources = [np.array([10]), np.array([20, 21, 22, 23, 24, 25]), np.array([30, 31])]
    targets = [np.array([110, 111, 112]), np.array([120]), np.array([130, 131, 132, 133, 134, 135, 136])]
    pad, eos, start, max_length = 0, 1, 2, 4
    cut_sources = [[10, eos], [20, 21, 22, eos], [30, 31, eos]]  # max_length - 1 tokens, then EOS
    cut_targets = [[110, 111, 112, eos], [120, eos], [130, 131, 132, eos]]
    picked = set()
    for step in range(30):
        batch = seq2seq_batch(sources, targets, 3, max_length, pad, eos, start, seed=5, step=step)
        picks = [int(row[0]) // 10 - 1 for row in batch.inputs]
        picked.update(picks)
        src = [cut_sources[k] for k in picks]
        tgt = [cut_targets[k] for k in picks]
        width, target_width = max(map(len, src)), max(map(len, tgt))
        assert batch.inputs.tolist() == [s + [pad] * (width - len(s)) for s in src]
        assert batch.attention_mask.tolist() == [[True] * len(s) + [False] * (width - len(s)) for s in src]
        labels = [t + [IGNORE] * (target_width - len(t)) for t in tgt]
        assert batch.labels.tolist() == labels
        assert batch.decoder_inputs.tolist() == [[start] + [pad if x == IGNORE else x for x in r[:-1]] for r in labels]
        assert batch.dims == (3, width, target_width)
        part = seq2seq_batch(sources, targets, 3, max_length, pad, eos, start, seed=5, step=step, rows=slice(1, 3))
        assert [int(row[0]) // 10 - 1 for row in part.inputs] == picks[1:]
    assert picked == {0, 1, 2}  # every pair is drawn, the first one included
    one = seq2seq_batch(sources[:1], targets[:1], 2, max_length, pad, eos, start, seed=0, step=0)
    assert one.inputs.tolist() == [[10, eos]] * 2 and one.labels.tolist() == [[110, 111, 112, eos]] * 2


def test_span_corruption_keeps_unsigned_token_ids_intact():
    """uint16 ids (a corpus stored compactly) must not meet a negative placeholder that wraps to 65535."""
    tokens = np.array([5, 6, 7, 8, 9, 10], dtype=np.uint16)
    noise = np.array([False, True, True, False, True, False])
    inputs, targets = span_corrupt(tokens, noise, [99, 98], eos_id=1)
    assert inputs.tolist() == [5, 99, 8, 98, 10, 1] and targets.tolist() == [99, 6, 7, 98, 9, 1]
    assert inputs.dtype == targets.dtype == np.uint16
