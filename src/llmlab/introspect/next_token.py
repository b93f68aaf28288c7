"""The picture of sampling: the next-token distribution before and after temperature, top-k and top-p.

Each stage is the same transform the generator applies (`process_logits`), so what is shown is
exactly the distribution `llmlab generate` would sample from with those settings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from llmlab.errors import LlmlabError
from llmlab.family import family_spec
from llmlab.generation.config import GenerationConfig
from llmlab.generation.generator import process_logits
from llmlab.introspect.encode import model_input
from llmlab.model import LanguageModel
from llmlab.plot import pyplot, save_figure
from llmlab.tokenizer import TextTokenizer

STAGES = ("model", "temperature", "top-k", "top-p")


@dataclass
class NextToken:
    token: str
    token_id: int
    probabilities: dict[str, float]  # stage -> probability after that stage


@dataclass
class NextTokenReport:
    rows: list[NextToken]  # the most likely tokens under the model, most likely first
    kept: dict[str, int]  # stage -> how many tokens still have probability > 0


@torch.inference_mode()
def next_token_logits(
    model: LanguageModel, tokenizer: TextTokenizer, prompt: str, target_prefix: str = ""
) -> torch.Tensor:
    """(vocab,) logits for the token after the prompt (encoder-decoder: after the decoder's start
    token and `target_prefix`)."""
    spec = family_spec(model.config)
    spec.require_generates("encoder-only models do not predict a next token", "use llmlab fill-mask with a [MASK]")
    if not spec.seq2seq:
        ids = tokenizer.encode(prompt + target_prefix) or [tokenizer.require("eos", "to start a text")]
        if len(ids) > model.config.block_size:
            ids = ids[-model.config.block_size :]
        return model(torch.tensor([ids], device=model.device), last_only=True)[0, -1].float()
    src = torch.tensor([model_input(model, tokenizer, prompt)], device=model.device)
    tgt = torch.tensor([[spec.start_id(model.config, tokenizer), *tokenizer.encode(target_prefix)]])
    return model(src, tgt.to(model.device))[0, -1].float()


def next_token_report(
    logits: torch.Tensor, tokenizer: TextTokenizer, config: GenerationConfig, show: int = 10
) -> NextTokenReport:
    """Probabilities of the `show` likeliest tokens after each stage of the sampling transform."""
    config.validate()
    if show < 1:
        raise LlmlabError(f"--show must be >= 1, got {show}", "pass e.g. 10")
    temperature = config.temperature if config.temperature > 0 else 1.0
    stages = {
        "model": logits,
        "temperature": process_logits(logits[None], temperature, 0, 1.0)[0],
        "top-k": process_logits(logits[None], temperature, config.top_k, 1.0)[0],
        "top-p": process_logits(logits[None], temperature, config.top_k, config.top_p)[0],
    }
    probs = {name: values.softmax(dim=-1) for name, values in stages.items()}
    top = probs["model"].topk(min(show, logits.shape[-1])).indices.tolist()
    rows = [NextToken(tokenizer.decode([i]), i, {name: float(p[i]) for name, p in probs.items()}) for i in top]
    kept = {name: int((p > 0).sum()) for name, p in probs.items()}
    return NextTokenReport(rows, kept)


def plot_next_token(report: NextTokenReport, out: Path, title: str) -> Path:
    """Grouped bars: each token's probability under the model and after each transform."""
    plt = pyplot()
    n = len(report.rows)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * n + 2), 4.2), dpi=110)
    width = 0.8 / len(STAGES)
    for s, stage in enumerate(STAGES):
        xs = [i + (s - (len(STAGES) - 1) / 2) * width for i in range(n)]
        ax.bar(xs, [r.probabilities[stage] for r in report.rows], width, label=f"{stage} ({report.kept[stage]} kept)")
    ax.set_xticks(range(n), [repr(r.token)[1:-1] or "∅" for r in report.rows], rotation=45, ha="right")
    ax.set_ylabel("probability")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    return save_figure(fig, out)
