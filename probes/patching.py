"""Activation, attribution and path patching — on one model or across a :class:`~workbench.pair.ModelPair`.

One engine, :func:`run_patched`, runs a model on ``batch`` prompts for ``n_variants`` patch *variants* at once:
the input is repeated ``n_variants`` times along the batch axis and every hook overwrites, per variant, the
activation elements its boolean mask selects with source values (``torch.where``). Everything else is a thin
specialisation that builds masks from :class:`~workbench.sites.Site` objects:

* :func:`activation_patch` — run ``target`` inputs, overwrite each site (or set of sites) with its activation
  on ``source`` inputs, possibly from another model (Meng et al. 2022 "ROME" §2.1 causal tracing; Prakash et
  al. 2024 §3). CMAP — cross-model activation patching — is ``activation_patch(base, groups, ids, ids,
  source_model=tuned)`` (Prakash et al. 2024 §5): the base model runs with chosen heads' outputs taken from
  the tuned model on the same input.
* :func:`attribution_patch` — the first-order estimate ``∂metric/∂a · (a_source − a_target)`` from one forward
  and backward pass (Nanda 2023, "Attribution patching"; Syed et al. 2023 "Attribution patching outperforms
  automated circuit discovery" eq. 1).
* :func:`probes.path_patching.path_patch` (its own module, on this engine) — the effect of a sender on receivers
  with everything else frozen (Wang et al. 2023 "IOI" §3.1 / appendix B; Prakash et al. 2024 §3): step 1 runs
  ``target`` with the sender set to its ``source`` value and every other attention head frozen at its ``target``
  value (MLPs recompute, as in IOI) and records the receivers' query / key / value inputs; step 2 runs ``target``
  with only those receiver inputs patched. With ``receivers="logits"`` step 1's logits are the answer (the
  sender's effect through the residual stream).

Every function returns the **effect** ``metric(patched) − metric(unpatched target)`` per variant and prompt,
``Float[Tensor, "variant batch"]``, in the metric's units (nats for a logit difference).

Sides, inputs, masks and site lists (:func:`~probes.patch_sites.head_sites`, ...) live in :mod:`probes.patch_sites`.
Token ids may be tensors or ``list[list[int]]`` (:func:`~probes.patch_sites.as_ids`). Positions: a Site's ``pos`` is
``None`` (all positions), an int (negative counts from the end) or the name
of a per-prompt position given in ``positions={"query_label": LongTensor[batch]}`` — nothing is hard-coded.
Prompts must have equal token length (position-wise patching and means need it; padding would shift
positions): :func:`~probes.patch_sites.equal_length_ids` tokenizes and refuses unequal lengths.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.patch_sites import (
    Positions,
    Side,
    SiteSet,
    as_id_pair,
    as_ids,
    as_side,
    as_site_sets,
    check_metric,
    check_same_dims,
    site_from_hook_name,
    variant_masks,
)
from probes.patching_remote import (
    activation_patch_nnsight,
    attribution_patch_nnsight,
    wants_nnsight,
)
from probes.shared_prefix import (
    cache_argument,
    common_prefix_patch,
    first_differing_position,
    first_patched_layers,
    layer_groups,
    prefix_cache,
    shares_layers,
    suffix,
    takes_cache,
    target_suffix,
    tiled_cache,
)
from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.hooked import hooks

from workbench_kernels import forward_from_layer

Metric = Callable[[Float[Tensor, "batch d_vocab"]], Float[Tensor, " batch"]]

__all__ = ["HeadScores", "Metric", "PatchLayer", "activation_patch", "as_head_scores", "attribution_patch", "cache",
           "mean_activations", "run_patched"]


# ----------------------------------------------------------------------------- the engine
@dataclass
class PatchLayer:
    """Overwrite activation elements where ``masks[hook]`` is True with ``source[hook]``.

    ``masks[hook]``: ``Bool[Tensor, "variant batch pos *head"]`` — variant and batch axes may be 1 (broadcast).
    ``source[hook]``: ``Float[Tensor, "batch pos *head_d"]`` (batch may be 1, e.g. position-wise means), or with
    a leading variant axis when ``per_variant``. Layers apply in order, so a later layer overrides an earlier.
    """

    masks: dict[str, Tensor]
    source: dict[str, Tensor]
    per_variant: bool = False

    def __post_init__(self) -> None:
        missing = set(self.masks) - set(self.source)
        if missing:
            raise ConfigError(f"patch masks without source values: {sorted(missing)}")


def _hooks(model: nn.Module, names: Sequence[str], fn_for: Callable[[str], Callable[[Tensor], Tensor | None]]):
    """The hook scope with ``fn_for(name)`` at each TransformerLens hook name."""
    return hooks(model, [(site_from_hook_name(name), fn_for(name)) for name in names])


def _final_logits(model: nn.Module, ids: Tensor, **kw: Any) -> Float[Tensor, "batch d_vocab"]:
    return model(input_ids=ids, logits_to_keep=1, **kw).logits[:, -1].float()


def run_patched(model: nn.Module | Side, input_ids: Int[Tensor, "batch pos"], layers: Sequence[PatchLayer], n_variants: int,
                record: Sequence[str] = (), max_batch: int = 256, grad: bool = False, share_prefix: bool = True
                ) -> tuple[Float[Tensor, "variant batch d_vocab"], dict[str, Tensor]]:
    """Run ``n_variants`` patched copies of ``input_ids`` in chunks of at most ``max_batch`` sequences.

    With ``share_prefix`` (default), what every variant shares is computed once: positions before the first position
    where the variants' patches differ (the target's run there, with the patch they all apply, if any, reused through its
    key/value cache) and, per variant, the decoder layers below its first patched layer (variants grouped by that layer run from the target's residual stream
    there). See :mod:`probes.shared_prefix`; same results as ``share_prefix=False`` to fp tolerance.

    Returns:
        final-position logits ``[variant, batch, d_vocab]`` and, for each hook name in ``record``, its (patched)
        activation ``[variant, batch, pos, ...]`` in TransformerLens layout.
    """
    logits, rec, _ = _run(model, input_ids, layers, n_variants, record, max_batch, grad, share_prefix)
    return logits, rec


def _run(model: nn.Module | Side, input_ids: Tensor, layers: Sequence[PatchLayer], n_variants: int, record: Sequence[str],
         max_batch: int, grad: bool, share_prefix: bool) -> tuple[Tensor, dict[str, Tensor], Tensor | None]:
    """:func:`run_patched`, plus the unpatched target's final logits ``[batch, d_vocab]`` when layer sharing ran the
    target anyway (to record the residual streams the variants start from), else ``None``."""
    side = as_side(model)
    input_ids = as_ids(side, input_ids)
    if isinstance(n_variants, bool) or not isinstance(n_variants, int) or n_variants < 1:
        raise ConfigError(f"n_variants must be an int >= 1, got {n_variants!r}")
    device = next(side.model.parameters()).device
    b, seq = input_ids.shape
    per = max(1, max_batch // b)
    names = list(dict.fromkeys([n for layer in layers for n in layer.masks] + list(record)))
    rec: dict[str, list[Tensor]] = {n: [] for n in record}
    all_masks = [m for layer in layers for m in layer.masks.values()]
    shared = share_prefix and bool(all_masks) and not record and not grad
    start = first_differing_position(layers, seq) if shared and takes_cache(side.model) else 0
    common = common_prefix_patch(layers, start, seq) if start else {}  # what every variant patches before start
    groups = (layer_groups(first_patched_layers([layer.masks for layer in layers], n_variants, Dims.of(side.model).n_layers))
              if shared and not common and shares_layers(side.model) else [(0, torch.arange(n_variants))])
    masks = [{n: suffix(m, start, 2, seq) for n, m in layer.masks.items()} for layer in layers]
    sources = [{n: suffix(s, start, 2 if layer.per_variant else 1, seq) for n, s in layer.source.items()} for layer in layers]
    chunk: dict[str, Any] = {}

    def select(idx: Tensor) -> None:
        """The masks and sources of the variants ``idx`` at each hook, leaving out those that patch nothing there."""
        sel: dict[str, list[tuple[Tensor, Tensor]]] = {}
        for layer, mask_of, source_of in zip(layers, masks, sources):
            for name, mask in mask_of.items():
                mask = mask[idx] if mask.shape[0] > 1 else mask
                if bool(mask.any()):  # an all-False mask is a no-op: skip its torch.where
                    src = source_of[name][idx] if layer.per_variant else source_of[name].unsqueeze(0)
                    sel.setdefault(name, []).append((mask, src))
        chunk.update(n=len(idx), sel=sel)

    def fn_for(name: str) -> Callable[[Tensor], Tensor | None]:
        def fn(x: Tensor) -> Tensor | None:
            v = x.unflatten(0, (chunk["n"], b))
            patches = chunk["sel"].get(name, ())
            for mask, src in patches:
                mask = mask.to(x.device)
                mask = mask.reshape(mask.shape + (1,) * (v.ndim - mask.ndim))
                v = torch.where(mask, src.to(device=x.device, dtype=x.dtype), v)
            if name in rec:
                rec[name].append(v.detach() if not grad else v)
            return v.flatten(0, 1) if patches else None
        return fn

    parts: list[Tensor] = []
    ctx = nullcontext() if grad else torch.no_grad()
    with ctx, side.context():
        if common:  # the prefix with the patch every variant applies there, once
            chunk.update(n=1, sel=common)
            with _hooks(side.model, list(common), fn_for):
                prefix = prefix_cache(side.model, input_ids[:, :start].to(device))
        else:
            prefix = prefix_cache(side.model, input_ids[:, :start].to(device)) if start else None  # unpatched, once
        arg = cache_argument(side.model) if prefix is not None else None
        needed = [first for first, _ in groups if first > 0]
        hidden, clean = (target_suffix(side.model, input_ids[:, start:].to(device), needed,
                                       {} if prefix is None else {arg: tiled_cache(prefix, 1, b)}) if needed else ({}, None))
        with _hooks(side.model, names, fn_for):
            for first, members in groups:
                for c0 in range(0, len(members), per):
                    idx = members[c0:c0 + per]
                    select(idx)
                    kw = {} if prefix is None else {arg: tiled_cache(prefix, len(idx), b, first)}
                    if first == 0:
                        ids = input_ids[:, start:].to(device).repeat(len(idx), 1)
                        logits = _final_logits(side.model, ids, **kw)
                    else:
                        state = hidden[first].repeat(len(idx), 1, 1)
                        logits = forward_from_layer.run_from_layer(side.model, state, first, cache=kw.get(arg), cache_argument=arg or "cache")
                        logits = logits[:, -1].float()
                    parts.append(logits.unflatten(0, (len(idx), b)))
    order = torch.cat([members for _, members in groups])  # variant order of the concatenated parts
    return torch.cat(parts)[order.argsort()], {n: torch.cat(v) for n, v in rec.items()}, clean


@torch.no_grad()
def cache(model: nn.Module | Side, input_ids: Int[Tensor, "batch pos"], hook_names: Sequence[str]) -> dict[str, Tensor]:
    """Activations at ``hook_names`` (TransformerLens layout, e.g. ``blocks.3.attn.hook_z`` → ``[batch, pos, n_heads, d_head]``)."""
    input_ids = as_ids(model, input_ids)
    _, rec = run_patched(model, input_ids, [], 1, record=list(dict.fromkeys(hook_names)), max_batch=max(1, input_ids.shape[0]))
    return {n: t[0] for n, t in rec.items()}


@torch.no_grad()
def mean_activations(model: nn.Module | Side, input_ids: Int[Tensor, "batch pos"], hook_names: Sequence[str],
                     max_batch: int = 64) -> dict[str, Float[Tensor, "1 pos ..."]]:
    """Position-wise means over a reference set of equal-length prompts (for mean ablation; Wang et al. 2023 §3)."""
    input_ids = as_ids(model, input_ids)
    sums: dict[str, Tensor] = {}
    for i in range(0, input_ids.shape[0], max_batch):
        for n, t in cache(model, input_ids[i:i + max_batch], hook_names).items():
            sums[n] = sums.get(n, 0) + t.double().sum(0, keepdim=True)
    return {n: (s / input_ids.shape[0]).float() for n, s in sums.items()}


def _baseline(model: Side, ids: Tensor, metric: Metric) -> Tensor:
    logits, _ = run_patched(model, ids, [], 1, max_batch=max(1, ids.shape[0]))
    return metric(logits[0])


def _effects(logits: Tensor, metric: Metric, base: Tensor) -> Float[Tensor, "variant batch"]:
    return torch.stack([metric(v) for v in logits]) - base


# ----------------------------------------------------------------------------- the three patchings
def _masks_and_source(model, sites, target_ids, source_ids, source_model, positions, metric) -> tuple[Side, dict, dict, Tensor]:
    """Checks shared by activation / attribution patching; the variant masks, the source activations, the target ids."""
    side = as_side(model)
    check_metric(metric)
    src_side = as_side(source_model) if source_model is not None else side
    target_ids, source_ids = as_id_pair(target_ids, source_ids, side)
    if src_side is not side:
        check_same_dims(side.model, src_side.model)
    masks = variant_masks(sites, *target_ids.shape, Dims.of(side.model), positions)
    return side, masks, cache(src_side, source_ids, list(masks)), target_ids


def activation_patch(model: nn.Module | Side, sites: Sequence[SiteSet], target_ids: Int[Tensor, "batch pos"],
                     source_ids: Int[Tensor, "batch pos"], metric: Metric, *, source_model: nn.Module | Side | None = None,
                     positions: Positions | None = None, max_batch: int = 256, backend: str = "hooks",
                     share_prefix: bool = True) -> Float[Tensor, "variant batch"]:
    """Activation patching: the effect on ``metric`` of overwriting each site (or site set) in a run on ``target_ids``
    with its value on ``source_ids`` — from ``source_model`` if given (CMAP, Prakash et al. 2024 §5), else the same model.

    Args:
        sites: one variant per entry, a Site or a list of Sites patched together (a head group for CMAP).
        target_ids, source_ids: equal-shape ``[batch, pos]`` token ids, a tensor or ``list[list[int]]``.
        metric: final-position logits ``[batch, d_vocab]`` → per-prompt values ``[batch]``.
        backend: ``"hooks"`` or ``"nnsight"`` (:mod:`probes.patching_remote`; also taken for an nnsight model).
        share_prefix: reuse the target's key/value cache below the first patched position (see :func:`run_patched`).

    Returns:
        ``metric(patched) − metric(target)``, ``[variant, batch]``.

    Raises:
        ConfigError: mismatched id shapes, sites out of range, unknown position names.
        MismatchError: ``source_model`` has different layer / head shapes.
    """
    if wants_nnsight(model, backend):
        return activation_patch_nnsight(model, sites, target_ids, source_ids, metric, source_model=source_model,
                                        positions=positions, max_batch=max_batch)
    side, masks, source, target_ids = _masks_and_source(model, sites, target_ids, source_ids, source_model, positions, metric)
    logits, _, clean = _run(side, target_ids, [PatchLayer(masks, source)], len(as_site_sets(sites)), (), max_batch, False,
                            share_prefix)
    return _effects(logits, metric, _baseline(side, target_ids, metric) if clean is None else metric(clean))


def attribution_patch(model: nn.Module | Side, sites: Sequence[SiteSet], target_ids: Int[Tensor, "batch pos"],
                      source_ids: Int[Tensor, "batch pos"], metric: Metric, *, source_model: nn.Module | Side | None = None,
                      positions: Positions | None = None, backend: str = "hooks") -> Float[Tensor, "variant batch"]:
    """Attribution patching: the linear estimate of :func:`activation_patch`'s effect,
    ``Σ_elements ∂metric/∂a · (a_source − a_target)`` over each variant's masked elements, from one forward and
    backward pass on ``target_ids`` plus one forward on ``source_ids`` (Nanda 2023; Syed et al. 2023 eq. 1).

    Returns / raises: as :func:`activation_patch` (the estimate of the effect, ``[variant, batch]``).
    """
    if wants_nnsight(model, backend):
        return attribution_patch_nnsight(model, sites, target_ids, source_ids, metric, source_model=source_model,
                                         positions=positions)
    side, masks, source, target_ids = _masks_and_source(model, sites, target_ids, source_ids, source_model, positions, metric)
    acts: dict[str, Tensor] = {}

    def fn_for(name: str) -> Callable[[Tensor], Tensor | None]:
        def fn(x: Tensor) -> Tensor:
            x = x.detach().requires_grad_(True) if not x.requires_grad else x
            x.retain_grad()
            acts[name] = x
            return x
        return fn

    m = side.model
    device = next(m.parameters()).device
    with torch.enable_grad(), side.context(), _hooks(m, list(masks), fn_for):
        embeds = m.get_input_embeddings()(target_ids.to(device)).detach().requires_grad_(True)
        logits = m(inputs_embeds=embeds, logits_to_keep=1).logits[:, -1].float()
        metric(logits).sum().backward()
    out = torch.zeros(len(as_site_sets(sites)), target_ids.shape[0])
    for name, mask in masks.items():
        a = acts[name]
        prod = (a.grad * (source[name].to(a.device) - a.detach())).sum(-1).cpu()  # [batch, pos, *head]
        out += (prod.unsqueeze(0) * mask).flatten(2).sum(-1)
    return out


@dataclass(frozen=True)
class HeadScores:
    """Per-head scores ``[n_layers, n_heads]`` (mean over prompts) with the units of the metric."""

    scores: Float[Tensor, "n_layers n_heads"]
    label: str = "Δ metric"
    extra: dict = field(default_factory=dict)

    def top(self, k: int, largest: bool = False) -> list[tuple[int, int]]:
        """The ``k`` (layer, head) pairs with the most negative (or, ``largest``, most positive) score."""
        flat = self.scores.flatten()
        idx = flat.topk(min(k, flat.numel()), largest=largest).indices
        n_heads = self.scores.shape[1]
        return [(int(i) // n_heads, int(i) % n_heads) for i in idx]


def as_head_scores(effects: Float[Tensor, "variant batch"], dims: Dims, label: str = "Δ metric") -> HeadScores:
    """Reshape per-head effects from :func:`~probes.patch_sites.head_sites` order (all layers) into a ``[n_layers, n_heads]`` grid."""
    if effects.shape[0] != dims.n_layers * dims.n_heads:
        raise ConfigError(f"expected {dims.n_layers * dims.n_heads} head effects, got {effects.shape[0]}")
    return HeadScores(effects.mean(1).reshape(dims.n_layers, dims.n_heads), label)
