"""Streaming statistics for dataset-level diffing: running means with confidence intervals over rows, and a
streaming top-k that keeps only ``k`` items however many batches pass.

Every accumulator holds O(size of one statistic) memory (never O(corpus)); :meth:`RowMean.add` takes one
batch's per-row values and can be called any number of times. Sums are float64, so a streamed result
equals a one-batch computation up to float64 rounding.
"""

from __future__ import annotations

import heapq
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor


def t_quantile(n: int, level: float = 0.95) -> float:
    """Two-sided Student-t quantile for ``n`` samples (``n - 1`` degrees of freedom); ``nan`` for ``n < 2``."""
    if n < 2:
        return float("nan")
    from scipy.stats import t

    return float(t.ppf(0.5 + level / 2, n - 1))


@dataclass
class RowMean:
    """Mean over rows of a per-row statistic of any shape, with a 95% confidence interval.

    The CI is ``mean ± t₀.₉₇₅,ₙ₋₁ · s / √n`` with ``s`` the sample standard deviation (ddof 1) of the per-row
    values and ``n`` the number of rows: rows are the independent units (positions of one row are not).
    """

    total: Tensor | None = None
    total_sq: Tensor | None = None
    n: int = 0

    def add(self, values: Float[Tensor, " rows *stat"]) -> None:
        """Add one batch of per-row values (``rows`` first)."""
        v = values.detach().to("cpu", torch.float64)
        s, s2 = v.sum(0), (v * v).sum(0)
        self.total = s if self.total is None else self.total + s
        self.total_sq = s2 if self.total_sq is None else self.total_sq + s2
        self.n += v.shape[0]

    def result(self) -> dict[str, Any]:
        """``{"mean", "ci_low", "ci_high", "std", "n_rows"}`` (lists shaped like the statistic; CI ``nan`` when n < 2)."""
        if self.n == 0 or self.total is None:
            return {"mean": [], "ci_low": [], "ci_high": [], "std": [], "n_rows": 0}
        mean = self.total / self.n
        var = ((self.total_sq - self.n * mean * mean) / max(self.n - 1, 1)).clamp_min(0.0)
        std = var.sqrt() if self.n > 1 else torch.full_like(mean, float("nan"))
        half = t_quantile(self.n) * std / math.sqrt(self.n)
        return {"mean": mean.tolist(), "ci_low": (mean - half).tolist(), "ci_high": (mean + half).tolist(),
                "std": std.tolist(), "n_rows": self.n}


@dataclass
class TokenMean:
    """Token-weighted sum and count of a statistic (e.g. mean KL over every position of the corpus)."""

    total: Tensor | float = 0.0
    count: Tensor | float = 0.0

    def add(self, total: Tensor | float, count: Tensor | float) -> None:
        to64 = lambda x: x.detach().to("cpu", torch.float64) if isinstance(x, Tensor) else float(x)
        self.total = self.total + to64(total)
        self.count = self.count + to64(count)

    def mean(self) -> Any:
        """``total / count`` (a float or nested list; ``nan`` / ``[]`` before any data)."""
        c = self.count
        if isinstance(c, Tensor):
            return (self.total / c.clamp_min(1)).tolist()
        if isinstance(self.total, Tensor):
            return (self.total / c).tolist() if c else []
        return float(self.total) / c if c else float("nan")


@dataclass(order=True)
class _Item:
    key: float
    order: int
    payload: Any = field(compare=False)


class StreamingTopK:
    """The ``k`` largest keys seen so far, each with a payload; ties keep the earliest item.

    Memory is O(k): :meth:`push` drops an item as soon as ``k`` larger ones are kept.
    """

    def __init__(self, k: int) -> None:
        self.k = int(k)
        self._heap: list[_Item] = []
        self._seen = 0

    def threshold(self) -> float:
        """The smallest kept key once ``k`` items are kept (a candidate must beat it), else ``-inf``."""
        return self._heap[0].key if len(self._heap) >= self.k else float("-inf")

    def push(self, key: float, payload: Any) -> None:
        item = _Item(float(key), -self._seen, payload)  # earlier items win ties (larger -order)
        self._seen += 1
        if self.k <= 0:
            return
        if len(self._heap) < self.k:
            heapq.heappush(self._heap, item)
        elif item > self._heap[0]:
            heapq.heapreplace(self._heap, item)

    def items(self) -> list[tuple[float, Any]]:
        """``(key, payload)`` pairs, largest key first."""
        return [(i.key, i.payload) for i in sorted(self._heap, reverse=True)]
