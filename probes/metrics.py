"""Patching metrics: final-position logits ``[batch, d_vocab]`` → one value per prompt ``[batch]``.

Each constructor binds the per-prompt token ids and returns a :data:`probes.patching.Metric`. The patching
functions repeat prompts along the batch axis per variant and call the metric once per variant, so the
bound ids always line up with the prompts.
"""

from __future__ import annotations

from jaxtyping import Float, Int
from torch import Tensor

from workbench.data import as_token_ids
from workbench.errors import ConfigError


def _ids(x: Tensor | list, name: str, ndim: int) -> Tensor:
    return as_token_ids(x, name, ndim=ndim)  # tensors or lists; ConfigError naming the argument


def logit_diff(correct: Int[Tensor, " batch"], wrong: Int[Tensor, "batch k"]):
    """Logit difference (nats): the correct token's logit minus the largest logit among ``wrong`` tokens.

    ``wrong`` may include the correct id (it is skipped), so the prompt's candidate list can be passed as is.
    Wang et al. 2023 §2 (logit difference); Prakash et al. 2024 §2 (max over the other objects).
    """
    correct, wrong = _ids(correct, "correct", 1), _ids(wrong, "wrong", 2)

    def metric(logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, " batch"]:
        c, w = correct.to(logits.device), wrong.to(logits.device)
        others = logits.gather(-1, w).masked_fill(w == c[:, None], float("-inf")).max(-1).values
        return logits.gather(-1, c[:, None]).squeeze(-1) - others

    return metric


def prob_correct(correct: Int[Tensor, " batch"]):
    """Probability of the correct token (softmax over the full vocabulary), in [0, 1]."""
    correct = _ids(correct, "correct", 1)

    def metric(logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, " batch"]:
        return logits.float().softmax(-1).gather(-1, correct.to(logits.device)[:, None]).squeeze(-1)

    return metric


def accuracy(correct: Int[Tensor, " batch"], candidates: Int[Tensor, "batch k"] | None = None):
    """1.0 where the correct token has the highest logit (among ``candidates`` if given, else the vocabulary)."""
    correct = _ids(correct, "correct", 1)
    candidates = None if candidates is None else _ids(candidates, "candidates", 2)
    if candidates is not None and not bool((candidates == correct[:, None]).any(-1).all()):
        raise ConfigError("every correct id must be among that prompt's candidates")

    def metric(logits: Float[Tensor, "batch d_vocab"]) -> Float[Tensor, " batch"]:
        c = correct.to(logits.device)
        if candidates is None:
            return (logits.argmax(-1) == c).float()
        cand = candidates.to(logits.device)
        return (cand.gather(-1, logits.gather(-1, cand).argmax(-1, keepdim=True)).squeeze(-1) == c).float()

    return metric
