"""Spurious-cue metrics (Casademunt et al. 2025, §5): accuracy among the two options and the logit difference
(nats) at the last position; the registered task's held-out and out-of-distribution metrics."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from workbench.tasks.spurious_cue.generation import CuePrompt, SpuriousCueSplit, to_tensors


def option_logit_diff(logits: Float[Tensor, "batch d_vocab"], answer_ids: Int[Tensor, " batch"], other_ids: Int[Tensor, " batch"]) -> Float[Tensor, " batch"]:
    """Logit of the grammatical option minus the other option's (nats); > 0 means correct."""
    return logits.gather(-1, answer_ids[:, None].to(logits.device)).squeeze(-1) - logits.gather(-1, other_ids[:, None].to(logits.device)).squeeze(-1)


@torch.no_grad()
def evaluate(model: nn.Module, prompts: Sequence[CuePrompt], batch_size: int = 64) -> dict[str, float]:
    """Accuracy among the two options and mean logit difference (nats) at the last position.

    Run it with whatever intervention should be active attached (``with iv.attach(model): ...``).
    """
    diffs = []
    device = next(model.parameters()).device
    for i in range(0, len(prompts), batch_size):
        ids, ans, oth = to_tensors(prompts[i : i + batch_size])
        logits = model(input_ids=ids.to(device), logits_to_keep=1).logits[:, -1].float()
        diffs.append(option_logit_diff(logits, ans, oth).cpu())
    d = torch.cat(diffs)
    return {"accuracy": float((d > 0).float().mean()), "logit_diff": float(d.mean())}


def evaluate_split(model: Any, split: SpuriousCueSplit, *, pad_id: int = 0, batch_size: int = 64) -> dict[str, float]:
    """``accuracy`` / ``logit_diff`` on ``split.heldout`` (cues agree) and ``ood_accuracy`` / ``ood_logit_diff`` on
    ``split.ood`` (cues disagree); equal-length prompts, so ``pad_id`` is unused."""
    held, ood = evaluate(model, split.heldout, batch_size), evaluate(model, split.ood, batch_size)
    return {**held, "ood_accuracy": ood["accuracy"], "ood_logit_diff": ood["logit_diff"]}
