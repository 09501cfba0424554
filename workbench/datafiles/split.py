"""A held-out split of one data source, and the overlap between a train and an eval source.

:func:`hold_out` draws ``round(eval_fraction * n)`` rows (at least 1, at most ``n - 1``) for evaluation with a
seeded permutation (``random.Random(seed)``), the same rows on every run. :func:`overlap` counts the eval rows
that also occur in train: identical rows (every canonical field equal) and identical prompts (the prompt text;
for chats the turns before the first assistant turn; for text rows the whole text).
"""

from __future__ import annotations

import json
import random
from typing import Any

from workbench.datafiles.rows import DataRows
from workbench.errors import ConfigError

__all__ = ["hold_out", "overlap", "prompt_key", "row_key"]


def hold_out(rows: DataRows, eval_fraction: float, seed: int = 0) -> tuple[DataRows, DataRows]:
    """``(train, eval)``: a seeded random ``eval_fraction`` of the rows held out, the rest for training.

    Args:
        eval_fraction: share of rows to hold out, ``0 < eval_fraction < 1``.
        seed: the permutation's seed.

    Raises:
        ConfigError: a fraction outside (0, 1), or fewer than 2 rows (nothing to hold out).
    """
    if isinstance(eval_fraction, bool) or not isinstance(eval_fraction, (int, float)) or not 0 < eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be a number strictly between 0 and 1, got {eval_fraction!r}")
    n = len(rows)
    if n < 2:
        raise ConfigError(f"{rows.source}: {n} row(s); holding out an eval split needs at least 2 (or pass --eval-data)")
    n_eval = min(n - 1, max(1, round(eval_fraction * n)))
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = sorted(order[:n_eval])
    kept = sorted(order[n_eval:])
    return rows.subset(kept), rows.subset(held)


def row_key(row: dict[str, Any]) -> str:
    """A canonical string of a row's fields (equal rows, equal keys)."""
    return json.dumps(row, sort_keys=True, ensure_ascii=False)


def prompt_key(row: dict[str, Any]) -> str:
    """The part of a row the model is prompted with (see the module docstring)."""
    if "messages" in row:
        msgs = row["messages"]
        first = next(i for i, m in enumerate(msgs) if m["role"] == "assistant")
        return json.dumps(msgs[:first], sort_keys=True, ensure_ascii=False)
    return row.get("prompt", row.get("text", ""))


def overlap(train: DataRows, eval_rows: DataRows) -> dict[str, Any]:
    """How much of ``eval_rows`` also occurs in ``train``.

    Returns:
        ``{"identical_rows": int, "identical_prompts": int, "n_eval_rows": int, "same_shape": bool}``: the
        number of eval rows equal to some train row, and of eval rows whose prompt is some train row's prompt.
    """
    rows_seen = {row_key(r) for r in train.rows}
    prompts_seen = {prompt_key(r) for r in train.rows}
    return {"identical_rows": sum(row_key(r) in rows_seen for r in eval_rows.rows),
            "identical_prompts": sum(prompt_key(r) in prompts_seen for r in eval_rows.rows),
            "n_eval_rows": len(eval_rows), "same_shape": train.shape == eval_rows.shape}
