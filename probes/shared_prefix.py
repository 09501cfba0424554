"""What every patch variant shares with the unpatched target run, computed once: the prefix of positions before the
first patched one (its key/value cache) and of layers below the first patched layer (the residual stream entering it).

In a causal model, the activations at positions ``< p`` of a patched run depend only on tokens and activations at
positions ``< p``. When no variant patches anything before position ``p`` (the common case: patching at the last
token), every variant's prefix is the unpatched target run's. :func:`probes.patching.run_patched` then runs the
target's prefix once with ``use_cache=True`` and each chunk of variants only on positions ``p..`` on top of a copy of
that key/value cache, tiled over the variants — one token per variant instead of the whole prompt when ``p`` is
the last position. Results equal the full recomputation to floating-point tolerance (tested against it and
against hand-written hooks).

Layers are shared too: a variant that patches nothing below decoder layer ``l`` has the target's residual stream
entering layer ``l``. The variants are grouped by their first patched layer (:func:`first_patched_layers`); the target
runs once more (on the positions after the prefix, on a copy of its cache) recording the residual stream entering
every group's ``l`` (:func:`target_suffix`; that run's logits are also the unpatched baseline), and each group then runs
only layers ``l..`` (:func:`workbench_kernels.forward_from_layer.run_from_layer`), batched over its variants, on a cache tiled in
layers ``l..`` only (the cached positions ``< p`` of those layers are the target's too). For the all-heads sweep that
halves the layer work. A variant's group is the lowest layer any of its masks touches, so a patch inside layer ``l``
(``attn.hook_z``, ``mlp.hook_post``, ``hook_resid_post``...) starts its variant at ``l`` with the clean stream.

The prefix may also be patched: when every variant applies the same patch at positions ``< p`` (a mean ablation of all
heads except the circuit's, whose heads sit at the last few positions: faithfulness), that prefix is run once with that
common patch (:func:`first_differing_position`, :func:`common_prefix_patch`) and the variants run from ``p`` on top of its
cache; layers are then not shared.

Not shared (the full run is used): recorded activations (they need every position), gradient runs, masks that
broadcast over positions with any element set (positions only), and models whose forward takes no key/value cache
(positions only). Layers are shared only where :func:`workbench_kernels.forward_from_layer.supports` the model (the Hugging Face
Llama / Qwen2 / Qwen3 / Mistral / Gemma families); for any other model only positions are shared, which is logged once
(:func:`workbench_kernels.choose`; ``path_taken("shared_prefix")`` says which path the last sweep took).
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn

from probes.patch_sites import site_from_hook_name
from workbench.hooked import record
from workbench.sites import Site

from workbench_kernels import forward_from_layer
from workbench_kernels.paths import choose


def cache_argument(model: nn.Module) -> str | None:
    """The name under which ``model``'s forward takes a key/value cache: ``"cache"`` (transformers >= 5.x),
    ``"past_key_values"`` (earlier releases), or ``None`` when it takes none."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def takes_cache(model: nn.Module) -> bool:
    """Whether ``model``'s forward accepts a key/value cache (Hugging Face causal LMs do) that its layers honour.

    A model with TransformerLens bridge components booted into it (:func:`workbench.hooked.to_bridge`) takes the
    argument but its bridged attention does not attend over the cached prefix, so it counts as taking none
    (prefix-shared results would be wrong; the full run is used)."""
    return cache_argument(model) is not None and not bridged(model)


def bridged(model: nn.Module) -> bool:
    """Whether any submodule of ``model`` is a TransformerLens bridge component (has an ``original_component``)."""
    return any(isinstance(getattr(m, "original_component", None), nn.Module) for m in model.modules())


def first_patched_position(masks: Sequence[Bool[Tensor, "variant batch pos *head"]], seq_len: int) -> int:
    """The first position any mask sets (``variant batch pos *head`` layout), capped at ``seq_len - 1`` (the last
    position is always run, for its logits); 0 when a mask broadcasts over positions (pos axis of size 1 or
    missing) and sets anything, since then every position may be patched."""
    first = seq_len - 1
    for mask in masks:
        if mask.ndim < 3 or mask.shape[2] != seq_len:
            if bool(mask.any()):
                return 0
            continue
        hit = mask.movedim(2, 0).reshape(seq_len, -1).any(1)
        if bool(hit.any()):
            first = min(first, int(hit.nonzero()[0]))
    return max(first, 0)


def first_differing_position(layers: Sequence[Any], seq_len: int) -> int:
    """The first position at which the variants' patches differ (``PatchLayer`` s of :func:`probes.patching.run_patched`),
    capped at ``seq_len - 1``: before it every variant applies the same patch (or none), so the variants share that prefix
    of the run. A layer with per-variant sources differs wherever its masks set anything; a mask with a variant axis of 1
    is the same for every variant; 0 when a mask broadcasts over positions and sets anything
    (:func:`first_patched_position` of the masks of where variants differ)."""
    differs = []
    for layer in layers:
        for mask in layer.masks.values():
            if layer.per_variant or mask.ndim < 3 or mask.shape[2] != seq_len:
                differs.append(mask)
            elif mask.shape[0] > 1:
                differs.append(mask != mask[:1])
    return first_patched_position(differs, seq_len)


def common_prefix_patch(layers: Sequence[Any], start: int, seq_len: int) -> dict[str, list[tuple[Tensor, Tensor]]]:
    """The patch every variant applies at positions ``< start`` (``start`` from :func:`first_differing_position`): per hook
    name, ``[(mask [1, batch, start, *head], source [1, batch or 1, start, ...])]`` in layer order, leaving out masks that
    set nothing there."""
    out: dict[str, list[tuple[Tensor, Tensor]]] = {}
    for layer in layers:
        for name, mask in layer.masks.items():
            if mask.ndim < 3 or mask.shape[2] != seq_len:
                continue  # sets nothing (else start would be 0)
            m = mask[:1].narrow(2, 0, start)
            if not bool(m.any()):
                continue  # per-variant layers set nothing before start by construction
            src = layer.source[name]
            src = src.narrow(1, 0, start) if src.ndim > 1 and src.shape[1] == seq_len else src
            out.setdefault(name, []).append((m, src.unsqueeze(0)))
    return out


def suffix(t: Tensor, start: int, axis: int, seq_len: int) -> Tensor:
    """``t`` from position ``start`` on along ``axis`` when that axis spans the sequence (else ``t`` unchanged: it
    broadcasts over positions)."""
    if start == 0 or t.ndim <= axis or t.shape[axis] != seq_len:
        return t
    return t.narrow(axis, start, seq_len - start)


@torch.no_grad()
def prefix_cache(model: nn.Module, prefix_ids: Int[Tensor, "batch prefix"]) -> Any:
    """The key/value cache of ``model`` on ``prefix_ids`` (a transformers ``Cache``), run without any patch."""
    out = model(input_ids=prefix_ids, use_cache=True, logits_to_keep=1)
    return getattr(out, "cache", None) if getattr(out, "cache", None) is not None else out.past_key_values


def tiled_cache(cache: Any, n_variants: int, batch: int, first_layer: int = 0) -> Any:
    """A copy of ``cache`` (batch ``batch``) whose layers ``first_layer..`` are repeated for ``n_variants`` variants,
    variant-major (row ``v * batch + i`` holds prompt ``i``), matching ``input_ids.repeat(n_variants, 1)``.

    Layers below ``first_layer`` keep the untiled tensors (a run from layer ``first_layer`` reads only their lengths,
    :mod:`workbench_kernels.forward_from_layer`). ``cache`` itself is never changed: each layer object is copied (a forward replaces
    its tensors by concatenation), the tensors are repeated once (a stride-0 view when ``batch`` is 1).
    """
    out = copy.copy(cache)
    layers = []
    for i, layer in enumerate(cache.layers):
        new = copy.copy(layer)
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if i >= first_layer and isinstance(t, Tensor) and t.numel():
                setattr(new, name, t.expand(n_variants, *t.shape[1:]) if batch == 1 else t.repeat(n_variants, *[1] * (t.ndim - 1)))
        layers.append(new)
    out.layers = layers
    return out


def first_patched_layers(masks: dict[str, Bool[Tensor, "variant batch pos *head"]] | Sequence[dict[str, Tensor]],
                         n_variants: int, n_layers: int) -> Int[Tensor, " variant"]:
    """Per variant, the lowest decoder layer any of its masks sets (hook names ``blocks.{l}.*``; a mask with a variant
    axis of 1 applies to every variant); ``n_layers - 1`` for a variant that patches nothing (it runs the last layer only)."""
    first = torch.full((n_variants,), n_layers - 1, dtype=torch.long)
    for group in ([masks] if isinstance(masks, dict) else masks):
        for name, mask in group.items():
            hit = mask.reshape(mask.shape[0], -1).any(1) if mask.ndim else mask.reshape(1)
            layer = torch.tensor(site_from_hook_name(name).layer)
            if hit.shape[0] == 1:
                hit = hit.expand(n_variants)
            first = torch.where(hit, torch.minimum(first, layer), first)
    return first


@torch.no_grad()
def target_suffix(model: nn.Module, suffix_ids: Int[Tensor, "batch suffix"], layers: Sequence[int], cache_kw: dict[str, Any]
                  ) -> tuple[dict[int, Float[Tensor, "batch suffix d_model"]], Float[Tensor, "batch d_vocab"]]:
    """One unpatched run of the target on the positions after the prefix (on top of ``cache_kw``'s copy of the prefix
    cache, if any): ``{layer: residual stream entering layer}`` for each layer (>= 1) a group of variants starts from,
    and the final-position logits (the unpatched baseline, fp32).

    The stream is read as layer ``layer - 1``'s output (``hook_resid_post``, after any hook on that layer), not as layer
    ``layer``'s input: hooks on the input of ``layer`` (a tuned side's intervention there, the patch itself) fire
    again when the variants run from it, and must not be counted twice."""
    sites = [Site(layer - 1, "hook_resid_post") for layer in dict.fromkeys(layers)]
    with record(model, sites) as rec:
        logits = model(input_ids=suffix_ids, logits_to_keep=1, **cache_kw).logits[:, -1].float()
    return {s.layer + 1: rec[s] for s in sites}, logits


def layer_groups(first: Int[Tensor, " variant"]) -> list[tuple[int, Tensor]]:
    """``[(layer, variant indices)]`` for each distinct first patched layer, in increasing layer order."""
    return [(int(layer), (first == layer).nonzero().flatten()) for layer in torch.unique(first)]


def shares_layers(model: nn.Module) -> bool:
    """Whether layer-prefix sharing runs ``model`` (:func:`workbench_kernels.forward_from_layer.supports` it); when it
    does not, the positions-only path is recorded and its reason logged once (:func:`workbench_kernels.choose`)."""
    if forward_from_layer.supports(model):
        choose("shared_prefix", "layers and positions")
        return True
    kind = getattr(getattr(model, "config", None), "model_type", type(model).__name__)
    choose("shared_prefix", "positions only", f"layer-prefix sharing is not checked for {kind!r} or bridged models")
    return False
