"""Where entity tracking fails: held-out accuracy by the queried box's place in the context and by number of boxes.

A mean accuracy of 0.92 can hide a tune that fails on one kind of prompt. In "The apple is in Box F, the key is in
Box C, the ring is in Box A. Box C contains the" the queried box (C) is the *middle* one of three; a prompt queries
the ``first`` box (``query_index == 0``), the ``last`` one (``query_index == n_boxes - 1``) or one in the ``middle``
(any other). :func:`accuracy_breakdown` groups the prompts both ways and gives, per group and per model, the number
of prompts and the two accuracies of :func:`~workbench.tasks.entity_tracking.evaluate` (top-1 over the vocabulary,
and among the prompt's objects), from each model's final-position logits (:func:`final_logits`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from workbench.errors import ConfigError
from workbench.tasks.entity_tracking.generation import BoxPrompt, to_tensors

__all__ = ["POSITIONS", "accuracy_breakdown", "breakdown_lines", "final_logits", "query_position"]

POSITIONS = ("first", "middle", "last")
_METRICS = ("accuracy", "accuracy_among_objects")


def query_position(prompt: BoxPrompt) -> str:
    """``"first"``, ``"middle"`` or ``"last"``: where the queried box is among the prompt's boxes (context order)."""
    if prompt.query_index == 0:
        return "first"
    return "last" if prompt.query_index == prompt.n_boxes - 1 else "middle"


@torch.no_grad()
def final_logits(model: torch.nn.Module, prompts: Sequence[BoxPrompt], batch_size: int = 32) -> Float[Tensor, "n d_vocab"]:
    """Final-position logits of ``model`` as it is now (hooks included) on every prompt, ``[len(prompts), d_vocab]``
    float32 on the CPU, in the order of ``prompts`` (prompts of one token length run together).

    Raises:
        ConfigError: no prompts, or a bad ``batch_size``.
    """
    if not prompts:
        raise ConfigError("final_logits needs at least one prompt")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an int >= 1, got {batch_size!r}")
    device = next(model.parameters()).device
    by_length: dict[int, list[int]] = {}
    for i, p in enumerate(prompts):
        by_length.setdefault(p.length, []).append(i)
    out: Tensor | None = None
    for idx in by_length.values():
        for start in range(0, len(idx), batch_size):
            chunk = idx[start : start + batch_size]
            ids = to_tensors([prompts[i] for i in chunk])[0].to(device)
            logits = model(input_ids=ids).logits[:, -1].float().cpu()
            if out is None:
                out = torch.empty(len(prompts), logits.shape[-1])
            out[chunk] = logits
    return out


def _hits(prompts: Sequence[BoxPrompt], logits: Tensor) -> dict[str, list[bool]]:
    """Per prompt: top-1 over the vocabulary is the answer; argmax among the prompt's objects is the answer."""
    top = logits.argmax(-1).tolist()
    among = [p.object_token_ids[int(logits[i, list(p.object_token_ids)].argmax())] == p.answer_token_id
             for i, p in enumerate(prompts)]
    return {"accuracy": [t == p.answer_token_id for t, p in zip(top, prompts)], "accuracy_among_objects": among}


def accuracy_breakdown(prompts: Sequence[BoxPrompt], logits: Mapping[str, Tensor]) -> dict[str, list[dict[str, Any]]]:
    """Accuracy of each model by the queried box's position and by number of boxes, with counts.

    Args:
        prompts: the evaluated prompts.
        logits: model name (e.g. ``"base"``, ``"tuned"``) -> its final-position logits ``[len(prompts), d_vocab]``
            (:func:`final_logits`), row ``i`` for ``prompts[i]``.

    Returns:
        ``{"by_query_position": rows, "by_n_boxes": rows}``, JSON-ready; one row per group: ``{"query_position":
        "first" | "middle" | "last"}`` (all three, in that order) or ``{"n_boxes": int}`` (each count present, ascending),
        then ``"n_prompts"`` and, per model, ``"<name>_accuracy"`` and ``"<name>_accuracy_among_objects"`` (fractions of
        the group's prompts; ``None`` for a group without prompts). Weighted by ``n_prompts``, each table's accuracies
        average to :func:`~workbench.tasks.entity_tracking.evaluate`'s on the same prompts.

    Raises:
        ConfigError: no prompts, no model, or a logits tensor that is not ``[len(prompts), d_vocab]`` (naming it).
    """
    if not prompts:
        raise ConfigError("accuracy_breakdown needs at least one prompt")
    if not logits:
        raise ConfigError("accuracy_breakdown needs the logits of at least one model, e.g. {'base': final_logits(model, prompts)}")
    hits = {}
    for name, t in logits.items():
        if not isinstance(t, Tensor) or t.ndim != 2 or t.shape[0] != len(prompts):
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ConfigError(f"logits[{name!r}] must be a [n_prompts={len(prompts)}, d_vocab] tensor of final-position logits, got {shape}")
        hits[name] = _hits(prompts, t.float())

    def rows(key: str, groups: Sequence[Any], group_of) -> list[dict[str, Any]]:
        out = []
        for g in groups:
            members = [i for i, p in enumerate(prompts) if group_of(p) == g]
            row: dict[str, Any] = {key: g, "n_prompts": len(members)}
            for name, h in hits.items():
                for metric in _METRICS:
                    row[f"{name}_{metric}"] = sum(h[metric][i] for i in members) / len(members) if members else None
            out.append(row)
        return out

    return {"by_query_position": rows("query_position", POSITIONS, query_position),
            "by_n_boxes": rows("n_boxes", sorted({p.n_boxes for p in prompts}), lambda p: p.n_boxes)}


def breakdown_lines(breakdown: Mapping[str, Any], names: Sequence[str] = ("base", "tuned"),
                    metric: str = "accuracy") -> list[tuple[str, str]]:
    """``(group, "base 0.905 → tuned 0.619")`` lines of an :func:`accuracy_breakdown` for a report or the console,
    e.g. ``("queried box first (21 prompts)", ...)``, then ``("3 boxes (64 prompts)", ...)``; ``-`` for no prompts.
    Two ``names`` are joined by an arrow, any other number by commas.

    Raises:
        ConfigError: ``metric`` not one of accuracy / accuracy_among_objects.
    """
    if metric not in _METRICS:
        raise ConfigError(f"metric must be one of {_METRICS}, got {metric!r}")
    out = []
    for key, label in (("by_query_position", "queried box {} ({} prompts)"), ("by_n_boxes", "{} boxes ({} prompts)")):
        for row in breakdown.get(key, []):
            group = row.get("query_position", row.get("n_boxes"))
            shown = [f"{n} {'-' if row.get(f'{n}_{metric}') is None else format(row[f'{n}_{metric}'], '.3f')}" for n in names]
            out.append((label.format(group, row["n_prompts"]), (" → " if len(names) == 2 else ", ").join(shown)))
    return out
