"""Intent metrics (Minder et al., ICLR 2025, §2–3): greedy top-1 at each prompt's last token; context, prior and pair
accuracy; the registered task's held-out metrics."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import nullcontext
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from workbench.data import final_position_logits, right_pad
from workbench.errors import ConfigError
from workbench.tasks.intent.generation import IntentPair, IntentPrompt, IntentSplit, flat


def batches(prompts: Sequence[IntentPrompt], batch_size: int) -> Iterator[list[IntentPrompt]]:
    """Consecutive chunks of ``batch_size`` prompts (order kept)."""
    if batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {batch_size}")
    for i in range(0, len(prompts), batch_size):
        yield list(prompts[i : i + batch_size])


@torch.no_grad()
def predict(model: nn.Module, prompts: Sequence[IntentPrompt], *, batch_size: int = 16, pad_id: int = 0,
            adapter: Any = None) -> Int[Tensor, " n_prompts"]:
    """Greedy top-1 token at each prompt's last token; ``adapter`` (an Intervention, e.g. the LoRA adapter
    that makes the tuned model) is attached around every forward pass when given."""
    out = []
    for batch in batches(prompts, batch_size):
        with adapter.attach(model) if adapter is not None else nullcontext():
            out.append(final_position_logits(model, *right_pad([p.input_ids for p in batch], pad_id)).argmax(-1).cpu())
    return torch.cat(out)


def accuracies(pairs: Sequence[IntentPair], top1: Int[Tensor, " n_prompts"]) -> dict[str, float]:
    """Context, prior and pair accuracy (fractions) from top-1 predictions in :func:`flat` order; also how
    often each intent's prompt produced the *other* intent's answer."""
    if len(top1) != 2 * len(pairs) or not pairs:
        raise ConfigError(f"need 2 predictions per pair: {len(top1)} predictions for {len(pairs)} pairs")
    t = top1.view(len(pairs), 2).tolist()
    ctx_ok = [p[0] == pair.context.context_answer_id for p, pair in zip(t, pairs)]
    pri_ok = [p[1] == pair.prior.prior_answer_id for p, pair in zip(t, pairs)]
    n = len(pairs)
    return {"context_accuracy": sum(ctx_ok) / n, "prior_accuracy": sum(pri_ok) / n,
            "pair_accuracy": sum(a and b for a, b in zip(ctx_ok, pri_ok)) / n,
            "context_prompt_gives_prior": sum(p[0] == pair.prior.prior_answer_id for p, pair in zip(t, pairs)) / n,
            "prior_prompt_gives_context": sum(p[1] == pair.context.context_answer_id for p, pair in zip(t, pairs)) / n,
            "n_pairs": n}


def evaluate_split(model: Any, split: IntentSplit, *, pad_id: int = 0, batch_size: int = 16) -> dict[str, float]:
    """Held-out metrics: :func:`accuracies` of the held-out pairs and ``accuracy``, the mean of context and prior accuracy."""
    top1 = predict(model, flat(split.heldout), batch_size=batch_size, pad_id=pad_id)
    acc = accuracies(split.heldout, top1)
    return {"accuracy": (acc["context_accuracy"] + acc["prior_accuracy"]) / 2, **acc}
