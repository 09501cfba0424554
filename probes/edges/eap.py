"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG): one score per graph edge.

* :func:`eap` — Syed, Rager, Conmy 2023 "Attribution Patching Outperforms Automated Circuit Discovery" §3 (eq. 1
  applied per edge): ``score(u→v) = (z_u^corrupt − z_u^clean) · ∂metric/∂x_v``, the first-order estimate of the change
  in the metric when only the edge ``u→v`` carries ``u``'s corrupt output, summed over positions and ``d_model``,
  averaged over prompts. One corrupt forward (sender outputs), one clean forward and one backward (gradients at
  every receiver input ``x_v``, the input of that receiver's norm only) for every edge at once.
* :func:`eap_ig` — Hanna, Pezzelle, Belinkov 2024 "Have Faith in Faithfulness" §3: the gradient is averaged over
  ``steps`` = m points on the straight line between the corrupt and the clean *input embeddings*,
  ``e_k = e_corrupt + (k / m)(e_clean − e_corrupt)``, k = 1..m (the right-hand Riemann sum, so m = 1 is the clean
  end and EAP-IG equals EAP exactly); ``Δz`` stays the clean / corrupt difference. m forwards and backwards. (Some
  versions of the authors' code sum k = 0..m−1 instead, the left-hand sum, which never evaluates the clean end.)

Scores are in the metric's units (nats for :func:`probes.metrics.logit_diff`) and estimate
``metric(clean with u→v patched to corrupt) − metric(clean)``; :mod:`probes.edges.patching` measures that exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.edges.graph import Graph
from probes.edges.run import (
    check_count,
    edge_hooks,
    final_logits,
    input_embeddings,
    prepare,
    sender_collector,
    sender_run,
)

Metric = Callable[[Float[Tensor, "batch d_vocab"]], Float[Tensor, " batch"]]

__all__ = ["EdgeScores", "chunk_metric", "eap", "eap_ig", "sample_edges"]


@dataclass(frozen=True)
class EdgeScores:
    """Edge scores of one model on one set of prompts.

    ``scores``: ``Float[Tensor, "n_senders n_receivers"]`` (0 where :attr:`Graph.adjacency` has no edge), mean over
    prompts of the estimated Δ metric; ``clean_metric`` / ``corrupt_metric``: the metric's mean on the clean / corrupt
    prompts (the unpatched runs); ``method``: ``"eap"`` or ``"eap-ig"``.
    """

    graph: Graph
    scores: Tensor
    method: str
    steps: int
    clean_metric: float
    corrupt_metric: float
    n_prompts: int
    label: str = "estimated Δ metric"
    extra: dict = field(default_factory=dict)

    def score(self, edge: str) -> float:
        """The score of one edge (``"a0.h1->m2"``). Raises ConfigError for an unknown edge."""
        return float(self.scores[self.graph.edge_index(edge)])

    def ranked(self) -> list[str]:
        """Every edge, largest ``|score|`` first (ties in :meth:`Graph.edges` order)."""
        flat, names = self._flat()
        order = torch.sort(flat.abs(), descending=True, stable=True).indices
        return [names[i] for i in order.tolist()]

    def top(self, n: int) -> list[str]:
        """The ``n`` edges with the largest ``|score|``. Raises ConfigError unless ``0 <= n``."""
        return self.ranked()[:check_count(n, "n", 0)]

    def as_dict(self) -> dict[str, float]:
        """``{edge: score}`` over every edge, in :meth:`Graph.edges` order."""
        flat, names = self._flat()
        return dict(zip(names, flat.tolist()))

    def _flat(self) -> tuple[Tensor, list[str]]:
        mask = self.graph.adjacency
        return self.scores.T[mask.T], self.graph.edges()  # receiver-major, as Graph.edges()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: method, steps, metrics, graph shape and every edge's score."""
        g = self.graph
        return {"method": self.method, "steps": self.steps, "clean_metric": self.clean_metric,
                "corrupt_metric": self.corrupt_metric, "n_prompts": self.n_prompts, "label": self.label,
                "graph": {"n_layers": g.n_layers, "n_heads": g.n_heads, "n_kv_heads": g.n_kv_heads,
                          "receivers": g.receiver_kind, "n_edges": g.n_edges},
                "scores": self.as_dict(), **self.extra}


def _gradients(model: nn.Module, graph: Graph, embeds: Tensor, metric: Metric, senders: dict | None
               ) -> tuple[Float[Tensor, "n_receivers batch pos d_model"], Float[Tensor, " batch"]]:
    """∂Σ_batch metric / ∂x_v at every receiver input on ``embeds`` (one forward, one backward); with ``senders`` the
    sender outputs of this run go into ``senders["senders"]``."""
    xs: dict[int, Tensor] = {}

    def receiver(r: int, x: Tensor) -> Tensor:
        xs[r] = x.clone()  # a node of its own: its gradient is this receiver's alone
        return xs[r]

    n_r = len(graph.receivers)
    with torch.enable_grad(), edge_hooks(model, graph, sender_collector(graph, senders) if senders is not None else None,
                                         receiver):
        e = embeds.detach().requires_grad_(True)
        values = metric(final_logits(model, e))
        grads = torch.autograd.grad(values.sum(), [xs[r] for r in range(n_r)], allow_unused=True)
    dtype = torch.promote_types(xs[0].dtype, torch.float32)  # fp32, or fp64 for an fp64 model
    out = torch.stack([torch.zeros(xs[0].shape, dtype=dtype) if g is None else g.detach().to(dtype).cpu() for g in grads])
    return out, values.detach().to(torch.promote_types(values.dtype, torch.float32)).cpu()


def _scores(graph: Graph, delta: Tensor, grads: Tensor) -> Float[Tensor, "n_senders n_receivers"]:
    """Σ over prompts, positions and d_model of ``delta[s] · grads[r]``, zero off the graph's edges."""
    s = torch.einsum("sx,rx->sr", delta.flatten(1).to(grads.dtype).cpu(), grads.flatten(1))
    return s * graph.adjacency


def _validate(model: nn.Module | Any, clean_ids: Any, corrupt_ids: Any, metric: Metric, receivers: str, steps: int,
              max_batch: int) -> tuple[Any, Graph, Tensor, Tensor]:
    check_count(steps, "steps")
    check_count(max_batch, "max_batch")
    return prepare(model, clean_ids, corrupt_ids, metric, receivers)


def eap_ig(model: nn.Module | Any, clean_ids: Int[Tensor, "batch pos"], corrupt_ids: Int[Tensor, "batch pos"],
           metric: Metric, *, steps: int = 5, receivers: str = "layer", max_batch: int = 32) -> EdgeScores:
    """EAP-IG edge scores (Hanna et al. 2024 §3): gradients averaged over ``steps`` input-embedding interpolations.

    Args:
        model: a Hugging Face causal LM or a :class:`probes.patch_sites.Side` (e.g. ``Side.of(pair, "tuned")``: every
            forward runs inside its context).
        clean_ids, corrupt_ids: ``[batch, pos]`` token ids of equal shape (tensors or ``list[list[int]]``), no padding.
        metric: final-position logits ``[batch, d_vocab]`` → ``[batch]`` (e.g. :func:`probes.metrics.logit_diff`).
        steps: m ≥ 1 interpolation points ``k / m``, k = 1..m (m = 1: EAP).
        receivers: ``"layer"`` (one attention receiver per layer) or ``"head"`` (each head's q / k / v input).
        max_batch: prompts per forward pass (the scores are summed over chunks, then averaged).

    Returns:
        :class:`EdgeScores`, ``scores[s, r]`` the mean over prompts of the estimated Δ metric (metric units).

    Raises:
        ConfigError: before any forward pass — ``steps`` or ``max_batch`` not an int ≥ 1, mismatched id shapes, a
            non-callable metric, unknown ``receivers``, an unsupported architecture; after the corrupt run — a residual
            stream that is not the sum of the sender outputs (:func:`probes.edges.run.sender_run`).
    """
    side, graph, clean_ids, corrupt_ids = _validate(model, clean_ids, corrupt_ids, metric, receivers, steps, max_batch)
    m = side.model
    total: Tensor | float = 0.0
    clean_sum = corrupt_sum = 0.0
    b = clean_ids.shape[0]
    with side.context():
        for c0 in range(0, b, max_batch):
            clean, corrupt = clean_ids[c0:c0 + max_batch], corrupt_ids[c0:c0 + max_batch]
            cm = chunk_metric(metric, c0, clean.shape[0], b)
            with torch.no_grad():
                e_clean, e_corrupt = input_embeddings(m, clean), input_embeddings(m, corrupt)
            corrupt_run = sender_run(m, graph, e_corrupt)
            corrupt_sum += float(cm(corrupt_run.logits).sum())
            grads, clean_senders = 0.0, {}
            for k in range(1, steps + 1):
                e = e_clean if k == steps else e_corrupt + (k / steps) * (e_clean - e_corrupt)  # k = m: exactly clean
                g, values = _gradients(m, graph, e, cm, clean_senders if k == steps else None)
                grads = grads + g
            clean_sum += float(values.sum())
            total += _scores(graph, corrupt_run.outputs - clean_senders["senders"], grads / steps)
    return EdgeScores(graph, total / b, "eap" if steps == 1 else "eap-ig", steps, clean_sum / b, corrupt_sum / b, b)


def eap(model: nn.Module | Any, clean_ids: Int[Tensor, "batch pos"], corrupt_ids: Int[Tensor, "batch pos"],
        metric: Metric, *, receivers: str = "layer", max_batch: int = 32) -> EdgeScores:
    """EAP edge scores (Syed et al. 2023 §3, eq. 1 per edge): ``(z_u^corrupt − z_u^clean) · ∂metric/∂x_v`` on the clean
    run. Same arguments, result and errors as :func:`eap_ig` with ``steps=1`` (which it is)."""
    return eap_ig(model, clean_ids, corrupt_ids, metric, steps=1, receivers=receivers, max_batch=max_batch)


def chunk_metric(metric: Metric, start: int, n: int, total: int) -> Metric:
    """``metric`` for prompts ``start .. start + n - 1``: the metric binds per-prompt ids for all ``total`` prompts, so a
    chunk's logits are placed into a full-size batch (other rows: the chunk's first row) and the chunk's rows read."""
    if n == total:
        return metric

    def fn(logits: Tensor) -> Tensor:
        full = logits[:1].expand(total, -1).clone()
        full[start:start + n] = logits
        return metric(full)[start:start + n]
    return fn


def sample_edges(scores: EdgeScores, n_top: int, n_random: int, seed: int = 0) -> list[str]:
    """A sample of edges for comparing scores with exact patching: the ``n_top`` largest ``|score|`` plus ``n_random``
    others drawn uniformly (``torch.Generator`` seeded with ``seed``). Raises ConfigError for negative counts."""
    ranked = scores.ranked()
    top = ranked[:check_count(n_top, "n_top", 0)]
    rest = ranked[n_top:]
    g = torch.Generator().manual_seed(seed)
    pick = torch.randperm(len(rest), generator=g)[:check_count(n_random, "n_random", 0)].tolist()
    return top + [rest[i] for i in sorted(pick)]
