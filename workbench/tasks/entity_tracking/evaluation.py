"""Entity tracking metrics (Prakash et al., ICLR 2024, §2) at the final position: top-1 accuracy over the
vocabulary, accuracy among the prompt's objects, logit difference (nats); :func:`evaluate` on a list of prompts and
:func:`evaluate_split` (the registered task's held-out metrics)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor

from workbench.errors import ConfigError
from workbench.tasks.entity_tracking.generation import BoxPrompt, EntityTrackingSplit, batches, to_tensors


def accuracy(logits: Float[Tensor, "batch d_vocab"], answer_ids: Int[Tensor, " batch"]) -> float:
    """Top-1 accuracy over the full vocabulary at the final position (Prakash et al. 2024, §2).

    logits: [batch, d_vocab] final-position logits; answer_ids: [batch].
    """
    return (logits.argmax(-1) == answer_ids.to(logits.device)).float().mean().item()


def _object_logits(logits, answer_ids, object_ids):
    object_ids = object_ids.to(logits.device)
    is_answer = object_ids == answer_ids.to(logits.device)[:, None]
    if not bool(is_answer.any(-1).all()):
        raise ConfigError("every answer id must appear among that row's object_ids")
    return logits.gather(-1, object_ids), is_answer


def accuracy_among_objects(
    logits: Float[Tensor, "batch d_vocab"],
    answer_ids: Int[Tensor, " batch"],
    object_ids: Int[Tensor, "batch n_boxes"],
) -> float:
    """Accuracy with argmax restricted to the prompt's objects (Prakash et al. 2024, §2).

    logits: [batch, d_vocab]; answer_ids: [batch]; object_ids: [batch, n_boxes].
    """
    obj_logits, is_answer = _object_logits(logits, answer_ids, object_ids)
    picked = obj_logits.argmax(-1, keepdim=True)
    return is_answer.gather(-1, picked).squeeze(-1).float().mean().item()


def logit_difference(
    logits: Float[Tensor, "batch d_vocab"],
    answer_ids: Int[Tensor, " batch"],
    object_ids: Int[Tensor, "batch n_boxes"],
) -> Float[Tensor, " batch"]:
    """Correct-object logit minus the max logit among the prompt's other objects, in nats.

    Prakash et al. 2024, §2. logits: [batch, d_vocab]; answer_ids: [batch];
    object_ids: [batch, n_boxes]. Returns [batch]; positive means the answer wins.
    """
    obj_logits, is_answer = _object_logits(logits, answer_ids, object_ids)
    correct = logits.gather(-1, answer_ids.to(logits.device)[:, None]).squeeze(-1)
    others = obj_logits.masked_fill(is_answer, float("-inf")).max(-1).values
    return correct - others


@torch.no_grad()
def evaluate(model: torch.nn.Module, prompts: Sequence[BoxPrompt], batch_size: int = 32) -> dict[str, float]:
    """Held-out metrics: top-1 accuracy over the vocabulary, accuracy among the prompt's objects, mean
    logit difference (nats, correct object minus the best other object)."""
    totals = {"accuracy": 0.0, "accuracy_among_objects": 0.0, "logit_difference": 0.0}
    n = 0
    for batch in batches(prompts, batch_size):
        ids, answers, objects = to_tensors(batch)
        logits = model(input_ids=ids.to(model.device)).logits[:, -1].float().cpu()
        k = len(batch)
        totals["accuracy"] += accuracy(logits, answers) * k
        totals["accuracy_among_objects"] += accuracy_among_objects(logits, answers, objects) * k
        totals["logit_difference"] += float(logit_difference(logits, answers, objects).sum())
        n += k
    return {key: value / n for key, value in totals.items()}


def evaluate_split(model: Any, split: EntityTrackingSplit, *, pad_id: int = 0, batch_size: int = 32) -> dict[str, float]:
    """:func:`evaluate` on ``split.heldout`` (equal-length batches: no padding, so ``pad_id`` is unused)."""
    return evaluate(model, split.heldout, batch_size=batch_size)
