"""Exact edge patching: run the clean prompts with chosen edges carrying their sender's corrupt output.

For a set ``E`` of patched edges, every receiver ``v`` reads ``x_v − Σ_{u: (u→v) ∈ E} (z_u^current − z_u^corrupt)``
instead of ``x_v``, where ``z_u^current`` is ``u``'s output in the same (patched) forward pass and ``z_u^corrupt`` its
output on the corrupt prompts; the residual stream itself is untouched, so every other edge carries its current value
(Conmy et al. 2023 "Towards Automated Circuit Discovery" §2 (ACDC's edge patching); Hanna et al. 2024 "Have Faith in
Faithfulness" §2, the intervention whose effect EAP / EAP-IG estimate). Patching every edge gives the corrupt run,
patching none the clean run (``tests/test_edges_faithfulness.py``).

Many edge sets (variants) run at once, ``max_batch`` sequences per forward: the clean prompts are repeated once per
variant along the batch axis and only the senders some variant patches are kept (``[senders, variant, batch, pos,
d_model]``), so memory grows with the patched senders, not the graph.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from probes.edges.eap import Metric
from probes.edges.graph import Graph
from probes.edges.run import (
    SenderRun,
    check_count,
    edge_hooks,
    final_logits,
    input_embeddings,
    prepare,
    sender_run,
)
from workbench.errors import ConfigError

__all__ = ["edge_patch_effect", "edge_patch_effects", "patch_edges", "run_variants"]

EdgeSet = Iterable[str] | Bool[Tensor, "n_senders n_receivers"]


def _first_layers(graph: Graph, masks: Tensor) -> list[int]:
    """Per variant, the lowest layer with a patched receiver (the logits count as the last layer): below it the variant's
    run is the clean run."""
    layer = torch.tensor([min(r.layer, graph.n_layers - 1) for r in graph.receiver_nodes])
    patched = masks.any(1)  # [variant, receiver]
    return [int(layer[p].min()) if bool(p.any()) else graph.n_layers - 1 for p in patched]


@torch.no_grad()
def run_variants(model: nn.Module, graph: Graph, clean_ids: Int[Tensor, "batch pos"], corrupt: SenderRun,
                 masks: Bool[Tensor, "variant n_senders n_receivers"], metric: Metric, max_batch: int = 16,
                 clean: SenderRun | None = None) -> Float[Tensor, "variant batch"]:
    """The metric of the clean run with each variant's edges patched (``masks[v]``), ``max_batch`` sequences per forward.

    ``corrupt`` / ``clean``: :func:`probes.edges.run.sender_run` on the corrupt / clean prompts. With ``clean`` (and a
    model :func:`workbench_kernels.forward_from_layer.supports`), variants are grouped by their lowest patched layer and run
    from the clean residual stream there (layers below are the clean run's: same results, less compute). The caller runs
    this inside the model side's context; inputs are checked upstream.
    """
    from workbench_kernels import forward_from_layer

    b = clean_ids.shape[0]
    per = max(1, max_batch // b)
    embeds = input_embeddings(model, clean_ids)
    skip = clean is not None and forward_from_layer.supports(model)
    firsts = _first_layers(graph, masks) if skip else [0] * masks.shape[0]
    values: dict[int, Tensor] = {}
    for first in sorted(set(firsts)):
        group = [i for i, f in enumerate(firsts) if f == first]
        for c0 in range(0, len(group), per):
            idx = group[c0:c0 + per]
            start = clean.resid[first] if skip and first > 0 else None
            logits = _run_chunk(model, graph, embeds, masks[idx], corrupt, clean if skip else None, first, start)
            for j, i in enumerate(idx):
                values[i] = metric(logits[j]).cpu()
    return torch.stack([values[i] for i in range(masks.shape[0])])


def _run_chunk(model: nn.Module, graph: Graph, embeds: Tensor, m: Tensor, corrupt: SenderRun, clean: SenderRun | None,
               first: int, start: Tensor | None) -> Float[Tensor, "variant batch d_vocab"]:
    """One forward pass of the variants ``m`` ``[variant, n_senders, n_receivers]``; from layer ``first`` on the
    residual stream ``start`` when given (then senders below ``first`` keep their ``clean`` outputs)."""
    from workbench_kernels import forward_from_layer

    v, b = m.shape[0], embeds.shape[0]
    active = m.any(0).any(1).nonzero().squeeze(1)  # senders some variant patches somewhere
    n_senders = len(graph.senders)
    slot = torch.full((n_senders,), -1, dtype=torch.long)
    slot[active] = torch.arange(len(active))
    corr = corrupt.outputs[active]
    diff = corr.new_empty((len(active), v, *corr.shape[1:]))  # z_u^current − z_u^corrupt per active sender and variant
    if clean is not None:  # senders in skipped layers keep their clean outputs; the others are overwritten as they run
        diff[:] = (clean.outputs[active] - corr).unsqueeze(1)
    plan: dict[int, tuple[int, Tensor]] = {}
    for r in range(len(graph.receivers)):
        w = m[:, active, r]
        cols = w.any(0).nonzero()
        if len(cols):  # upstream senders are a prefix, so their slots are too: patch with diff[:k]
            k = int(cols.max()) + 1
            plan[r] = (k, w[:, :k].to(corr.dtype).to(corr.device))

    def on_senders(first_sender: int, outputs: Tensor) -> None:
        s = slot[first_sender:first_sender + outputs.shape[0]]
        keep = (s >= 0).nonzero().squeeze(1)
        if len(keep):
            diff[s[keep]] = outputs[keep.to(outputs.device)].unflatten(1, (v, b)) - corr[s[keep]].unsqueeze(1)

    def receiver(r: int, x: Tensor) -> Tensor:
        if r not in plan:
            return x
        k, w = plan[r]
        return x - torch.einsum("va,avbpd->vbpd", w, diff[:k]).reshape(x.shape)

    with edge_hooks(model, graph, on_senders if len(active) else None, receiver):
        if start is None:
            return final_logits(model, embeds.repeat(v, 1, 1)).unflatten(0, (v, b))
        logits = forward_from_layer.run_from_layer(model, start.repeat(v, 1, 1), first)[:, -1]
        return logits.to(torch.promote_types(logits.dtype, torch.float32)).unflatten(0, (v, b))


def _corrupt_and_masks(model: nn.Module | Any, edge_sets: Sequence[EdgeSet], clean_ids: Any, corrupt_ids: Any, metric: Metric,
                       receivers: str, max_batch: int) -> tuple[Any, Graph, Tensor, Tensor, SenderRun, SenderRun]:
    """Checks (all before any forward pass), then the two unpatched runs: ``(side, graph, clean_ids, masks, corrupt,
    clean)``."""
    check_count(max_batch, "max_batch")
    side, graph, clean_ids, corrupt_ids = prepare(model, clean_ids, corrupt_ids, metric, receivers)
    masks = graph.check_sets(edge_sets)
    with side.context():
        corrupt = sender_run(side.model, graph, input_embeddings(side.model, corrupt_ids))
        clean = sender_run(side.model, graph, input_embeddings(side.model, clean_ids), check=False)
    return side, graph, clean_ids, masks, corrupt, clean


def patch_edges(model: nn.Module | Any, edge_sets: Sequence[EdgeSet], clean_ids: Int[Tensor, "batch pos"],
                corrupt_ids: Int[Tensor, "batch pos"], metric: Metric, *, receivers: str = "layer",
                max_batch: int = 16) -> Float[Tensor, "variant batch"]:
    """The metric of the clean prompts with each set of edges patched to its corrupt value (one variant per set).

    Args:
        model: a Hugging Face causal LM or a :class:`probes.patch_sites.Side` (forwards run inside its context).
        edge_sets: each a list of edge names (``"a0.h1->m2"``) or a ``Bool[Tensor, "n_senders n_receivers"]`` mask over
            :class:`~probes.edges.graph.Graph` (``Graph.of(model, receivers)``).
        clean_ids, corrupt_ids: ``[batch, pos]`` token ids of equal shape, no padding.
        metric: final-position logits ``[batch, d_vocab]`` → ``[batch]``.
        max_batch: sequences (variants × prompts) per forward pass.

    Returns:
        ``metric(patched)``, ``[variant, batch]`` (metric units; not an effect — subtract the clean metric for one).

    Raises:
        ConfigError: before any forward pass — unknown or impossible edge names, a mask of the wrong shape, no edge sets,
            mismatched id shapes, a non-callable metric, ``max_batch`` < 1, unknown ``receivers``, an unsupported
            architecture.
    """
    side, graph, clean_ids, masks, corrupt, clean = _corrupt_and_masks(model, edge_sets, clean_ids, corrupt_ids, metric,
                                                                       receivers, max_batch)
    with side.context():
        return run_variants(side.model, graph, clean_ids, corrupt, masks, metric, max_batch, clean)


def edge_patch_effects(model: nn.Module | Any, edges: Sequence[str], clean_ids: Int[Tensor, "batch pos"],
                       corrupt_ids: Int[Tensor, "batch pos"], metric: Metric, *, receivers: str = "layer",
                       max_batch: int = 16) -> Float[Tensor, "edge batch"]:
    """Exact effect of patching each edge alone: ``metric(clean, u→v patched) − metric(clean)`` per edge and prompt —
    what :func:`probes.edges.eap.eap` / :func:`~probes.edges.eap.eap_ig` estimate (metric units).

    Raises:
        ConfigError: as :func:`patch_edges` (before any forward pass), or ``edges`` given as one string.
    """
    if isinstance(edges, str):
        raise ConfigError(f"edges must be a list of edge names, got one string {edges!r} (wrap it: [{edges!r}])")
    side, graph, clean_ids, masks, corrupt, clean = _corrupt_and_masks(model, [[e] for e in edges], clean_ids, corrupt_ids,
                                                                       metric, receivers, max_batch)
    with side.context():
        return run_variants(side.model, graph, clean_ids, corrupt, masks, metric, max_batch, clean) - metric(clean.logits).cpu()


def edge_patch_effect(model: nn.Module | Any, edge: str, clean_ids: Int[Tensor, "batch pos"],
                      corrupt_ids: Int[Tensor, "batch pos"], metric: Metric, *, receivers: str = "layer") -> float:
    """Mean over prompts of :func:`edge_patch_effects` for one edge (metric units). Raises as :func:`patch_edges`."""
    return float(edge_patch_effects(model, [edge], clean_ids, corrupt_ids, metric, receivers=receivers)[0].mean())
