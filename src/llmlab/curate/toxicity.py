"""Offensive-text filter: alt-profanity-check's linear model (TF-IDF + calibrated linear SVM, shipped in the
package, offline) scores each whole document.

Why the whole document and not the maximum over its lines, sentences or windows: the model was trained
on short comments and is close to a weighted word list ("stupid", "sucks", "idiot", "hell", even "thy"
and "thou"), and its TF-IDF vector is length-normalised, so a whole document's score is the density of
such words. Measured at the 0.9 default on clean text, whole documents drop 0.06% of DialogSum dialogues,
0.34% of rt-polarity sentences and 3.6% of 2,000-character Shakespeare passages; the maximum over lines
drops 1.0%, 0.34% and 22%, over sentences 1.8%, 0.5% and 23%, over 100-word windows 0.10%, 0.34% and
4.6% (and 29% of 20,000-character passages). Whole documents are also the cheapest (one vector each).
The price: this finds offensive documents, not a single offensive line in a long one (one insulting line
put into a dialogue is caught 99.6% of the time under 400 characters, 31% at 800-1,500, 2% beyond; three
such lines 97-100% at any length).
"""

from __future__ import annotations

from llmlab.curate.config import ToxicityConfig
from llmlab.errors import LlmlabError

_predict_prob = None


def _model():
    """alt-profanity-check's scorer, loaded once per process (about 1 s: a joblib-pickled scikit-learn model)."""
    global _predict_prob
    if _predict_prob is None:
        try:
            from profanity_check import predict_prob
        except ImportError:
            raise LlmlabError("the toxicity filter needs alt-profanity-check", "pip install 'llmlab[curate]'") from None
        _predict_prob = predict_prob
    return _predict_prob


def offensive_probability(texts: list[str]) -> list[float]:
    """The model's probability that each whole text is offensive, in [0, 1] (one batched call)."""
    if not texts:
        return []
    return [float(p) for p in _model()(list(texts))]


def toxicity_reason(probability: float, cfg: ToxicityConfig) -> str | None:
    """The reason "toxicity" when the probability reaches the threshold, else None (keep)."""
    return "toxicity" if probability >= cfg.threshold else None
