"""Arithmetic metrics: teacher-forced exact match of every answer token; the registered task's held-out accuracy."""

from __future__ import annotations

from typing import Any

import torch

from workbench.data import Example
from workbench.errors import ConfigError
from workbench.tasks.arithmetic.generation import ArithmeticSplit


@torch.no_grad()
def exact_match(model: torch.nn.Module, examples: list[Example], max_batch: int = 64) -> float:
    """Share of problems whose every answer token is the greedy (teacher-forced) prediction.

    Problems with the same prompt and answer lengths run together (no padding, so each one's logits are those of
    running it alone, up to batched-matmul rounding), and only the positions that predict answer tokens are
    unembedded (``logits_to_keep``). :func:`workbench.datafiles.evaluate.evaluate_examples` gives the same share on
    right-padded batches of any lengths (plus the answer loss); this one keeps the studies' numbers those of one
    problem at a time.

    Raises:
        ConfigError: no examples, or ``max_batch`` < 1.
    """
    if not examples or max_batch < 1:
        raise ConfigError(f"exact_match needs examples and max_batch >= 1 (got {len(examples)} examples, max_batch {max_batch})")
    device = next(model.parameters()).device
    groups: dict[tuple[int, int], list[Example]] = {}
    for ex in examples:
        groups.setdefault((len(ex.prompt_ids), len(ex.answer_ids)), []).append(ex)
    hits = 0
    for (_, n_answer), group in groups.items():
        for i in range(0, len(group), max_batch):
            chunk = group[i:i + max_batch]
            ids = torch.tensor([list(ex.prompt_ids) + list(ex.answer_ids) for ex in chunk], device=device)
            # logits_to_keep = n_answer + 1: the last kept position predicts past the answer; drop it
            predicted = model(input_ids=ids, logits_to_keep=n_answer + 1).logits[:, :-1].argmax(-1)
            answers = torch.tensor([list(ex.answer_ids) for ex in chunk], device=device)
            hits += int((predicted == answers).all(-1).sum())
    return hits / len(examples)


def evaluate_split(model: Any, split: ArithmeticSplit, *, pad_id: int = 0, batch_size: int = 1) -> dict[str, float]:
    """``{"accuracy": exact match}`` on ``split.heldout`` (batched by lengths: no padding, so ``pad_id`` is unused)."""
    return {"accuracy": exact_match(model, split.heldout)}
