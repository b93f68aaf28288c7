"""Task heads on an encoder: exported to transformers' BERT task classes with the same logits, and
imported back with their labels."""

import pytest
import torch
import transformers

from llmlab.checkpoint.folder import save_checkpoint
from llmlab.cli import main
from llmlab.config import ModelConfig
from llmlab.errors import LlmlabError
from llmlab.hf.importer import import_hf
from llmlab.model import build_model
from llmlab.tokenizer import train_tokenizer
from tests.helpers import SAMPLE_TEXT

CASES = {  # task -> (labels, the transformers class, its problem_type)
    "classify": (["negative", "neutral", "positive"], "BertForSequenceClassification", "single_label_classification"),
    "multilabel": (["sport", "politics"], "BertForSequenceClassification", "multi_label_classification"),
    "regress": ([], "BertForSequenceClassification", "regression"),
    "tag": (["O", "B-PER", "I-PER", "B-LOC", "I-LOC"], "BertForTokenClassification", None),
}


@pytest.mark.parametrize("task", list(CASES))
def test_task_heads_export_with_transformers_logits_and_import_back(task, tmp_path):
    labels, hf_class, problem = CASES[task]
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="encoder")
    torch.manual_seed(0)
    config = ModelConfig.from_preset("bert-nano", vocab_size=tokenizer.vocab_size, n_layer=2, block_size=64,
                                     mlm_head=False, task=task, labels=labels)  # fmt: skip
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    hf = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    assert hf.architectures == [hf_class] and getattr(hf, "problem_type", None) == problem
    if labels:
        assert hf.id2label == dict(enumerate(labels)) and hf.label2id == {n: i for i, n in enumerate(labels)}
    theirs = getattr(transformers, hf_class).from_pretrained(tmp_path / "hf").eval()
    x = torch.randint(5, tokenizer.vocab_size, (3, 20))
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[1, 14:] = False  # a padded row
    with torch.no_grad():
        ours = model.task_logits(x, mask)
        expected = theirs(input_ids=x, attention_mask=mask.long()).logits
    assert ours.shape == expected.shape == ((3, 20, len(labels)) if task == "tag" else (3, max(1, len(labels))))
    keep = mask if task == "tag" else torch.ones(3, dtype=torch.bool)  # padded positions' tags are not compared
    assert (ours[keep] - expected[keep]).abs().max() <= 1e-4
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    assert back.model.config.task == task and back.model.config.labels == labels
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.model.state_dict()[name], tensor), name


def test_task_heads_are_checked():
    with pytest.raises(LlmlabError, match="at least two labels"):
        ModelConfig.from_preset("bert-nano", task="classify", labels=["only"])
    with pytest.raises(LlmlabError, match="a tag head is for encoders, not family 'decoder'"):
        ModelConfig.from_preset("gpt2-nano", task="tag", labels=["O", "B-X"])
    with pytest.raises(LlmlabError, match="is for encoders and decoders, not family 'encoder-decoder'"):
        ModelConfig.from_preset("t5-nano", task="classify", labels=["a", "b"])
    with pytest.raises(LlmlabError, match="task must be one of"):
        ModelConfig.from_preset("bert-nano", task="summarise", labels=["a", "b"])
    with pytest.raises(LlmlabError, match="no task head"):
        encoder = build_model(ModelConfig.from_preset("bert-nano", vocab_size=32))
        encoder.task_logits(torch.zeros(1, 4, dtype=torch.long))


@pytest.mark.parametrize("preset,task,labels", [("gpt2-nano", "classify", ["no", "yes"]),
                                                ("llama-nano", "regress", [])])  # fmt: skip
def test_a_decoders_last_token_head_exports_with_transformers_logits(preset, task, labels, tmp_path):
    """GPT-2 / Llama `...ForSequenceClassification`: `score` on each row's last real token."""
    tokenizer = train_tokenizer([SAMPLE_TEXT], kind="char", family="decoder")
    torch.manual_seed(0)
    config = ModelConfig.from_preset(preset, vocab_size=tokenizer.vocab_size, n_layer=2, block_size=64, task=task,
                                     labels=labels, tie_embeddings=preset.startswith("gpt2"))  # fmt: skip
    model = build_model(config).eval()
    save_checkpoint(tmp_path / "ckpt", model, tokenizer)
    assert main(["export", str(tmp_path / "ckpt"), str(tmp_path / "hf")]) == 0
    hf_config = transformers.AutoConfig.from_pretrained(tmp_path / "hf")
    prefix = "GPT2" if preset.startswith("gpt2") else "Llama"
    assert hf_config.architectures == [f"{prefix}ForSequenceClassification"]
    theirs = getattr(transformers, f"{prefix}ForSequenceClassification").from_pretrained(tmp_path / "hf").eval()
    pad = hf_config.pad_token_id
    x = torch.randint(0, tokenizer.vocab_size - 1, (3, 16))
    x[x >= pad] += 1  # any token but the pad, which is how transformers finds each row's end
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[0, 9:] = False  # right padding, as llmlab batches rows
    x[~mask] = pad
    with torch.no_grad():
        ours, expected = model.task_logits(x, mask), theirs(input_ids=x).logits
    assert ours.shape == expected.shape == (3, max(1, len(labels)))
    assert (ours - expected).abs().max() <= 1e-4
    back = import_hf(tmp_path / "hf", tmp_path / "back")
    assert back.model.config.task == task and back.model.config.labels == labels
    assert torch.equal(back.model.task_head.score.weight, model.task_head.score.weight)
