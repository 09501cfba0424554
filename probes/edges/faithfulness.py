"""Faithfulness curves of edge circuits: how much of the clean − corrupt metric gap the top-n edges recover.

A circuit of ``n`` edges keeps those edges at their clean values and patches every other edge to its corrupt value
(exact edge patching, :mod:`probes.edges.patching`). Its normalised faithfulness is
``(metric(circuit) − metric(corrupt)) / (metric(clean) − metric(corrupt))`` — 1 when the circuit recovers the whole
clean behaviour, 0 when it does no better than the corrupt run (Hanna, Pezzelle, Belinkov 2024 "Have Faith in
Faithfulness" §4; Wang et al. 2023 "IOI" §4 for size-matched random baselines). :func:`faithfulness_curve` reports it
for the top-``n`` edges by ``|score|`` as ``n`` grows, beside ``n_random`` random edge sets of each size.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor, nn

from probes.edges.eap import EdgeScores, Metric
from probes.edges.patching import run_variants
from probes.edges.run import check_count, input_embeddings, prepare, sender_run
from workbench.errors import ConfigError

__all__ = ["FaithfulnessCurve", "default_sizes", "faithfulness_curve", "keep_masks"]


@dataclass(frozen=True)
class FaithfulnessCurve:
    """Normalised faithfulness (fraction of the clean − corrupt gap recovered; 1 = clean, 0 = corrupt) per circuit size.

    ``n_edges[i]`` edges kept: ``recovered[i]`` for the top-n by ``|score|``; ``random[j][i]`` for random set ``j``, with
    ``random_mean`` / ``random_std`` over the sets (population std). ``metric[i]`` is the top-n circuit's mean metric;
    ``clean_metric`` / ``corrupt_metric`` the unpatched runs' (metric units). ``None`` where the gap is 0.
    """

    n_edges: list[int]
    recovered: list[float | None]
    metric: list[float]
    random: list[list[float | None]]
    random_mean: list[float | None]
    random_std: list[float | None]
    clean_metric: float
    corrupt_metric: float
    n_total_edges: int
    method: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def default_sizes(n_total: int) -> list[int]:
    """0, 1, 2, 5, 10, 20, 50 … (1-2-5 steps) below ``n_total``, and ``n_total`` itself."""
    sizes, k = [0], 0
    while True:
        for step in (1, 2, 5):
            n = step * 10 ** k
            if n >= n_total:
                return sorted(set(sizes + [n_total]))
            sizes.append(n)
        k += 1


def keep_masks(scores: EdgeScores, sizes: Sequence[int], n_random: int, seed: int) -> tuple[Tensor, Tensor]:
    """``(top, random)`` masks of kept edges: ``Bool[Tensor, "size n_senders n_receivers"]`` for the top-n by ``|score|``
    and ``Bool[Tensor, "n_random size n_senders n_receivers"]`` for random sets (``torch.Generator`` seeded ``seed + j``)."""
    g = scores.graph
    adj = g.adjacency
    flat = scores.scores.T[adj.T]  # receiver-major, Graph.edges() order
    where = adj.T.nonzero()  # (receiver, sender) of each flat edge
    order = torch.sort(flat.abs(), descending=True, stable=True).indices

    def mask(idx: Tensor) -> Tensor:
        m = torch.zeros(adj.shape, dtype=torch.bool)
        m[where[idx, 1], where[idx, 0]] = True
        return m

    top = torch.stack([mask(order[:n]) for n in sizes])
    perms = [torch.randperm(len(flat), generator=torch.Generator().manual_seed(seed + j)) for j in range(n_random)]
    rand = torch.stack([torch.stack([mask(p[:n]) for n in sizes]) for p in perms]) if n_random else torch.zeros(
        (0, len(sizes), *adj.shape), dtype=torch.bool)
    return top, rand


def _ratio(value: float, clean: float, corrupt: float) -> float | None:
    gap = clean - corrupt
    return (value - corrupt) / gap if gap else None


def _spread(values: list[float | None]) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    mean = sum(vals) / len(vals)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in vals) / len(vals))


def faithfulness_curve(model: nn.Module | Any, scores: EdgeScores, clean_ids: Int[Tensor, "batch pos"],
                       corrupt_ids: Int[Tensor, "batch pos"], metric: Metric, *, n_edges: Sequence[int] | None = None,
                       n_random: int = 5, seed: int = 0, max_batch: int = 16) -> FaithfulnessCurve:
    """The faithfulness of the top-``n`` edges of ``scores`` for each ``n`` in ``n_edges``, with random edge sets.

    Args:
        model: the model (or :class:`probes.patch_sites.Side`) the circuit is evaluated on — usually the one ``scores``
            came from; a ModelPair comparison evaluates each side's circuit on that side.
        scores: :class:`~probes.edges.eap.EdgeScores` whose graph matches ``model`` (same layers, heads, receivers).
        n_edges: circuit sizes (ints in ``0 .. n_total_edges``); default :func:`default_sizes`.
        n_random: random edge sets per size (0: none); ``seed``: their first generator seed.
        max_batch: sequences (variants × prompts) per forward pass.

    Returns:
        :class:`FaithfulnessCurve` (fractions of the gap; metric units for ``metric`` / ``clean_metric`` /
        ``corrupt_metric``).

    Raises:
        ConfigError: before any forward pass — ``scores`` of another graph, sizes out of range or not ints, negative
            ``n_random``, ``max_batch`` < 1, and everything :func:`probes.edges.patching.patch_edges` refuses.
    """
    if not isinstance(scores, EdgeScores):
        raise ConfigError(f"scores must be EdgeScores (from eap / eap_ig), got {type(scores).__name__}")
    check_count(n_random, "n_random", 0)
    check_count(max_batch, "max_batch")
    side, graph, clean_ids, corrupt_ids = prepare(model, clean_ids, corrupt_ids, metric, scores.graph.receiver_kind)
    if graph != scores.graph:
        raise ConfigError(f"the scores' graph {scores.graph} does not match the model's {graph}")
    total = graph.n_edges
    sizes = default_sizes(total) if n_edges is None else list(n_edges)
    if isinstance(n_edges, (str, int)) or not sizes or any(
            isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= total for n in sizes):
        raise ConfigError(f"n_edges must be a non-empty list of ints in 0..{total} (the graph's edges), got {n_edges!r}")
    top, rand = keep_masks(scores, sizes, n_random, seed)
    keep = torch.cat([top, rand.flatten(0, 1)])
    with side.context(), torch.no_grad():
        corrupt_run = sender_run(side.model, graph, input_embeddings(side.model, corrupt_ids))
        clean_run = sender_run(side.model, graph, input_embeddings(side.model, clean_ids), check=False)
        clean, corrupt = float(metric(clean_run.logits).mean()), float(metric(corrupt_run.logits).mean())
        values = run_variants(side.model, graph, clean_ids, corrupt_run, graph.adjacency & ~keep, metric, max_batch,
                              clean_run).mean(1).tolist()
    k = len(sizes)
    top_vals, rand_vals = values[:k], [values[k + j * k:k + (j + 1) * k] for j in range(n_random)]
    random = [[_ratio(v, clean, corrupt) for v in row] for row in rand_vals]
    spread = [_spread([random[j][i] for j in range(n_random)]) for i in range(k)]
    return FaithfulnessCurve(sizes, [_ratio(v, clean, corrupt) for v in top_vals], top_vals, random,
                             [s[0] for s in spread], [s[1] for s in spread], clean, corrupt, total, scores.method)
