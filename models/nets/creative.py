"""The style-ambiguity (creativity) loss of CAN (Elgammal et al. 2017, "CAN: Creative Adversarial Networks").

The discriminator of a CAN has two heads on one trunk: real/fake, and a class ("style") head trained on real
images only. The generator is pushed to look real AND to leave the class head uncertain among the known
classes, so its images deviate from every known style. `style_ambiguity(logits, form)` is that generator term,
from the class head's logits (B, K) of generated images, averaged over the batch:

- "multiclass": the cross-entropy of the posterior p = softmax(logits) against the uniform distribution,
  -(1/K) sum_k log p_k. Its minimum, at p uniform, is log K.
- "binary": the paper's one-vs-rest form, each class's posterior p_k a binary prediction with target 1/K,
  -(1/K) sum_k [(1/K) log p_k + (1 - 1/K) log(1 - p_k)] (the paper sums over k; the mean keeps both forms on
  one scale). Its minimum, at p uniform, is the binary entropy H(1/K).

Both grow without bound as the posterior approaches one class: at logits (s, 0, .., 0) the multi-class form is
log(e^s + K - 1) - s/K. Computed from logits with log-sum-exp, so a confident head never gives inf or NaN.
"""
from __future__ import annotations

import torch
from torch.nn import functional as F

FORMS = ("multiclass", "binary")


def _log_one_minus_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log(1 - softmax(logits)_k) (B, K), stably: the log-sum-exp of the other classes minus that of all."""
    k = logits.shape[1]
    eye = torch.eye(k, dtype=torch.bool, device=logits.device)  # (K, K)
    others = logits.unsqueeze(1).masked_fill(eye, float("-inf"))  # (B, K, K): row k without class k
    return torch.logsumexp(others, dim=2) - torch.logsumexp(logits, dim=1, keepdim=True)


def style_ambiguity(logits: torch.Tensor, form: str = "multiclass") -> torch.Tensor:
    """The generator's style-ambiguity loss from class logits (B, K), K >= 2 -> scalar (mean over the batch)."""
    if logits.ndim != 2 or logits.shape[1] < 2:
        raise ValueError(f"style_ambiguity needs class logits (B, K) with K >= 2, got {tuple(logits.shape)}")
    k = logits.shape[1]
    log_p = F.log_softmax(logits, dim=1)  # (B, K)
    if form == "multiclass":
        return -log_p.mean(dim=1).mean()
    if form == "binary":
        per_class = log_p / k + (1.0 - 1.0 / k) * _log_one_minus_softmax(logits)  # (B, K)
        return -per_class.mean(dim=1).mean()
    raise ValueError(f"style_ambiguity form {form!r}; choose one of {', '.join(FORMS)}")
