"""Base vs tuned edge scores of a :class:`~workbench.pair.ModelPair`, and how scores agree with exact patching.

* :func:`compare_pair` — EAP or EAP-IG on both sides (the tuned side inside ``pair.tuned_context()``): the change of
  every edge's score (``tuned − base``, the edge's weight in the attribution graph, metric units) and the edges gained /
  lost among each side's top ``n`` by ``|score|`` — the edge-level form of "is the same circuit doing the task?"
  (Prakash et al. 2024 "Fine-Tuning Enhances Existing Mechanisms" §5, asked of heads there).
* :func:`score_correlation` — Pearson and Spearman correlation (scipy) between estimated and exact effects of a sample
  of edges (Syed et al. 2023 §4 / Hanna et al. 2024 §4 compare attribution with exact patching the same way).
* :func:`comparison_figures` — plotly figures (:mod:`workbench.plots.edges`): the score difference as a receiver ×
  sender heatmap, and faithfulness curves.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from probes.edges.eap import EdgeScores, Metric, eap_ig
from probes.edges.faithfulness import FaithfulnessCurve
from probes.edges.run import check_count
from probes.patch_sites import Side, check_same_dims
from workbench.errors import ConfigError

__all__ = ["EdgeComparison", "compare_pair", "comparison_figures", "score_correlation"]


@dataclass(frozen=True)
class EdgeComparison:
    """Scores of the same graph on the base and the tuned model, and the top-``top_n`` edge sets compared.

    ``gained``: in the tuned top-n, not in the base's; ``lost``: the reverse; ``shared``: in both (each by decreasing
    tuned, base, tuned ``|score|``).
    """

    base: EdgeScores
    tuned: EdgeScores
    top_n: int
    gained: list[str]
    lost: list[str]
    shared: list[str]

    @property
    def delta(self) -> Tensor:
        """``Float[Tensor, "n_senders n_receivers"]``: tuned − base score per edge (0 off the graph's edges)."""
        return self.tuned.scores - self.base.scores

    def largest_changes(self, k: int = 20) -> list[dict[str, Any]]:
        """The ``k`` edges whose score changed most (``|tuned − base|``), with both scores and the change."""
        g = self.base.graph
        flat = self.delta.T[g.adjacency.T]
        names = g.edges()
        order = torch.sort(flat.abs(), descending=True, stable=True).indices[:check_count(k, "k", 0)]
        return [{"edge": names[i], "base": self.base.score(names[i]), "tuned": self.tuned.score(names[i]),
                 "delta": float(flat[i])} for i in order.tolist()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: metrics of both sides, the top-n sets compared, the largest changes."""
        return {"method": self.base.method, "steps": self.base.steps, "top_n": self.top_n,
                "base_metric": {"clean": self.base.clean_metric, "corrupt": self.base.corrupt_metric},
                "tuned_metric": {"clean": self.tuned.clean_metric, "corrupt": self.tuned.corrupt_metric},
                "gained": self.gained, "lost": self.lost, "shared": self.shared,
                "largest_changes": self.largest_changes()}


def compare_scores(base: EdgeScores, tuned: EdgeScores, top_n: int = 100) -> EdgeComparison:
    """Compare two score sets of the same graph. Raises ConfigError for different graphs or ``top_n`` < 0."""
    if base.graph != tuned.graph:
        raise ConfigError(f"cannot compare scores of different graphs: {base.graph} vs {tuned.graph}")
    check_count(top_n, "top_n", 0)
    b, t = base.top(top_n), tuned.top(top_n)
    bs, ts = set(b), set(t)
    return EdgeComparison(base, tuned, top_n, [e for e in t if e not in bs], [e for e in b if e not in ts],
                          [e for e in t if e in bs])


def compare_pair(pair: Any, clean_ids: Int[Tensor, "batch pos"], corrupt_ids: Int[Tensor, "batch pos"], metric: Metric, *,
                 steps: int = 5, top_n: int = 100, receivers: str = "layer", max_batch: int = 32) -> EdgeComparison:
    """EAP-IG (``steps`` ≥ 1; 1 = EAP) on both sides of a ModelPair and their comparison.

    Raises:
        ConfigError: ``pair`` is not a ModelPair, ``top_n`` < 0, or as :func:`probes.edges.eap.eap_ig` (before any
            forward pass). MismatchError: the two models have different layer / head shapes.
    """
    if not all(hasattr(pair, a) for a in ("base", "tuned", "tuned_context")):
        raise ConfigError(f"pair must be a workbench.pair.ModelPair, got {type(pair).__name__}")
    check_count(top_n, "top_n", 0)
    check_same_dims(pair.base, pair.tuned)
    kw = dict(steps=steps, receivers=receivers, max_batch=max_batch)
    base = eap_ig(Side.of(pair, "base"), clean_ids, corrupt_ids, metric, **kw)
    tuned = eap_ig(Side.of(pair, "tuned"), clean_ids, corrupt_ids, metric, **kw)
    return compare_scores(base, tuned, top_n)


def score_correlation(estimated: Sequence[float] | Tensor, exact: Sequence[float] | Tensor) -> dict[str, float]:
    """``{"pearson", "spearman", "n"}`` between estimated and exact edge effects (scipy.stats).

    Raises:
        ConfigError: different lengths, fewer than 3 values, or a constant series (correlation undefined).
    """
    from scipy import stats

    a = torch.as_tensor(estimated, dtype=torch.float64).flatten()
    b = torch.as_tensor(exact, dtype=torch.float64).flatten()
    if a.shape != b.shape or a.numel() < 3:
        raise ConfigError(f"need two equal-length series of at least 3 values, got {a.numel()} and {b.numel()}")
    if float(a.std()) == 0 or float(b.std()) == 0:
        raise ConfigError("a constant series has no correlation")
    return {"pearson": float(stats.pearsonr(a.numpy(), b.numpy())[0]),
            "spearman": float(stats.spearmanr(a.numpy(), b.numpy())[0]), "n": int(a.numel())}


def comparison_figures(comparison: EdgeComparison, curves: Mapping[str, FaithfulnessCurve] | None = None,
                       title: str = "Edge scores, tuned − base") -> dict[str, Any]:
    """``{"delta_heatmap": Figure, "faithfulness": Figure}`` (the latter only with ``curves``, e.g. ``{"base": …,
    "tuned": …}``): receivers (forward order, layers upward) on y, senders on x, diverging scale centred at 0."""
    from workbench.plots.edges import edge_heatmap, faithfulness_curves

    g = comparison.base.graph
    unit = comparison.base.label
    figs = {"delta_heatmap": edge_heatmap(comparison.delta.T.tolist(), list(g.senders), list(g.receivers), title,
                                          f"tuned − base: {unit}", mask=g.adjacency.T.tolist())}
    if curves:
        figs["faithfulness"] = faithfulness_curves({k: c.to_dict() for k, c in curves.items()},
                                                   "Faithfulness of the top-n edges")
    return figs
