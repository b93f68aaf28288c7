"""The distillation loss, written here because it is the subject being taught (Hinton et al., 2015;
generalised JSD as in GKD, Agarwal et al., 2024): at each labelled position the student's distribution is
pulled toward the teacher's, both softened by a temperature, mixed with the ordinary language-model loss.

    loss = alpha * T^2 * divergence(teacher_T, student_T) + (1 - alpha) * cross-entropy(student, labels)

forward KL(teacher || student) covers every mode of the teacher (the classic choice); reverse
KL(student || teacher) seeks its modes; JSD(beta) interpolates (beta 0.5: symmetric). T^2 keeps the soft
term's gradients the size of the hard term's as T grows.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from llmlab.data.objectives import IGNORE, Batch
from llmlab.family import family_spec
from llmlab.training.distributed import unwrap

DIVERGENCES = ("forward", "reverse", "jsd")


def divergence(student: torch.Tensor, teacher: torch.Tensor, temperature: float, kind: str,
               beta: float = 0.5) -> torch.Tensor:  # fmt: skip
    """(N,) divergence at each of N positions between (N, V) logits, both divided by the temperature."""
    s = F.log_softmax(student.float() / temperature, dim=-1)
    t = F.log_softmax(teacher.float() / temperature, dim=-1)
    if kind == "forward":
        return (t.exp() * (t - s)).sum(-1)
    if kind == "reverse":
        return (s.exp() * (s - t)).sum(-1)
    mixture = torch.logsumexp(torch.stack([s + math.log(1 - beta), t + math.log(beta)]), dim=0)
    return beta * (t.exp() * (t - mixture)).sum(-1) + (1 - beta) * (s.exp() * (s - mixture)).sum(-1)


def top_k_forward_kl(student: torch.Tensor, values: torch.Tensor, ids: torch.Tensor,
                     temperature: float) -> torch.Tensor:  # fmt: skip
    """(N,) forward KL from the teacher's distribution renormalised over its top k tokens ((N, k) logits
    `values` at token `ids`) to the student's (N, V) logits: the student's full softmax, read at those k."""
    t = F.log_softmax(values.float() / temperature, dim=-1)
    s = F.log_softmax(student.float() / temperature, dim=-1).gather(-1, ids)
    return (t.exp() * (t - s)).sum(-1)


def labelled_logits(model: nn.Module, batch: Batch) -> torch.Tensor:
    """(N, V) logits at the batch's labelled positions, for any family (as `lm_loss` computes them)."""
    spec = family_spec(unwrap(model).config)
    selected = batch.labels != IGNORE
    if spec.masked_lm:
        return model(batch.inputs, batch.attention_mask, select=selected)
    if spec.seq2seq:
        return model(batch.inputs, batch.decoder_inputs, batch.attention_mask)[selected]
    return model(batch.inputs)[selected]


def distillation_loss(teacher: nn.Module, temperature: float, alpha: float, kind: str, model: nn.Module,
                      batch: Batch, normalizer: float | None = None) -> tuple[torch.Tensor, dict]:  # fmt: skip
    """The recipe's loss (`functools.partial` closes over the frozen teacher): the mix above, as a mean over
    labelled positions or their sum / `normalizer`; the soft and hard parts are logged apart."""
    student = labelled_logits(model, batch)
    labels = batch.labels[batch.labels != IGNORE]
    cached = getattr(batch, "teacher_values", None)
    if cached is not None and batch.teacher_ids is None:  # whole rows, read from the cache
        soft = divergence(student, cached, temperature, "forward") * temperature**2
    elif cached is not None:  # the teacher's top-k, read from the cache (distill/teacher_cache.py)
        soft = top_k_forward_kl(student, cached, batch.teacher_ids, temperature) * temperature**2
    else:
        with torch.no_grad():
            target = labelled_logits(teacher, batch)
        soft = divergence(student, target, temperature, kind) * temperature**2
    hard = F.cross_entropy(student.float(), labels, reduction="none")
    scale = 1 / labels.numel() if normalizer is None else 1 / normalizer
    loss = (alpha * soft + (1 - alpha) * hard).sum() * scale
    return loss, {"distill": soft.sum().detach() * scale, "ce": hard.sum().detach() * scale}
