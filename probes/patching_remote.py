"""Remote-capable patching: activation and attribution patching as nnsight traces (``backend="nnsight"`` in
:mod:`probes.patching`), the form a remote NDIF server runs for models beyond one machine.

Same inputs, same masks (:func:`probes.patch_sites.variant_masks`), same effects ``[variant, batch]`` as the hook
path; only the runner differs: each patched forward pass is an ``nnsight`` trace that reads every patched site's
activation in forward order, overwrites the masked elements with source values (``torch.where``) and assigns the
result back to the envoy's ``.input`` / ``.output``. Attribution patching reads the activations in the trace and
their gradients in a nested ``with loss.backward():`` block (in reverse forward order, as nnsight requires).

Why a second backend: nnsight traces can run on a remote NDIF server for models beyond one machine. Every
function here takes ``remote=True``, which is passed to ``trace(..., remote=True)`` on an
``nnsight.LanguageModel("<hub id>")`` that NDIF hosts (an ``NDIF_API_KEY`` and network access are needed; the masks
and source activations would travel with the request, the logits come back as saved values). That route is **not**
exercised anywhere in this repository: there is no network here, so whether NDIF's serialiser accepts this trace
body (it calls the small helpers below and ``metric``) is unverified. A Side with a context (our hook-based
interventions, e.g. a tuned LoFiT side) cannot run remotely — its hooks live on local modules — and is refused.
What is tested (``tests/test_patching_remote.py``): local traces on the real SmolLM2 and on a tiny model give the
hook path's results; cross-model (CMAP) patching with the source on a tuned Side.

Sites are the usual :class:`~workbench.sites.Site` objects; the envoy path of each comes from
:data:`workbench.hooked.SITE_MODULES` (``attn.hook_z`` is ``o_proj``'s input, ``hook_resid_post`` a decoder
layer's output, ...), on Llama-style models (``model.model.layers[l]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.patch_sites import (
    Positions,
    Side,
    SiteSet,
    as_id_pair,
    as_site_sets,
    check_metric,
    site_from_hook_name,
    variant_masks,
)
from workbench.architecture import Dims
from workbench.errors import ConfigError, MismatchError
from workbench.hooked import SITE_MODULES, to_nnsight
from workbench.sites import HEAD_HOOKS

#: Order in which a decoder layer reaches each hook (nnsight serves values only in forward order).
FORWARD_ORDER = {"hook_resid_pre": 0, "attn.hook_q": 1, "attn.hook_k": 2, "attn.hook_v": 3, "attn.hook_z": 4,
                 "hook_attn_out": 5, "mlp.hook_post": 6, "hook_mlp_out": 7, "hook_resid_post": 8}


BACKENDS = ("hooks", "nnsight")


def is_nnsight(model: Any) -> bool:
    """Whether ``model`` is an nnsight model (``nnsight.TransformersModel`` / ``LanguageModel`` / any ``Envoy``)."""
    return any(c.__module__.startswith("nnsight.") and c.__name__ == "Envoy" for c in type(model).__mro__)


def wants_nnsight(model: Any, backend: str) -> bool:
    """Whether a patching call runs through nnsight: ``backend="nnsight"``, or an nnsight model passed as ``model``.

    Raises:
        ConfigError: an unknown ``backend``.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return backend == "nnsight" or is_nnsight(model)


class NnsightSide:
    """An nnsight model, the Hugging Face module it wraps, and the context the module must run under (a Side's
    intervention, e.g. the tuned side of a ModelPair: its hooks sit on the wrapped modules, so traces see them)."""

    def __init__(self, model: Any, tokenizer: Any = None) -> None:
        context = nullcontext
        if isinstance(model, Side):
            model, context = model.model, model.context
        if is_nnsight(model):
            self.nn, self.hf = model, model._module
        elif isinstance(model, nn.Module):
            if tokenizer is None:
                raise ConfigError("backend='nnsight' on a plain model needs its tokenizer: pass workbench.hooked.to_nnsight(model, "
                                  "tokenizer) as the model, or call probes.patching_remote.*_nnsight(..., tokenizer=tok)")
            self.nn, self.hf = to_nnsight(model, tokenizer), model
        else:
            raise ConfigError(f"backend='nnsight' needs an nn.Module, a Side or an nnsight model, got {type(model).__name__}")
        self.context = context
        self.dims = Dims.of(self.hf)


def _envoy(nn_model: Any, hook: str, layer: int) -> tuple[Any, str]:
    path, kind = SITE_MODULES[hook]
    envoy = nn_model.model.layers[layer]
    for part in filter(None, path.split(".")):
        envoy = getattr(envoy, part)
    return envoy, kind


def _order(names: Sequence[str]) -> list[str]:
    sites = {n: site_from_hook_name(n) for n in names}
    return sorted(sites, key=lambda n: (sites[n].layer, FORWARD_ORDER[sites[n].hook]))


def _read(nn_model: Any, name: str) -> tuple[Any, str, Tensor]:
    site = site_from_hook_name(name)
    envoy, kind = _envoy(nn_model, site.hook, site.layer)
    value = envoy.input if kind == "input" else envoy.output
    return envoy, kind, value if isinstance(value, Tensor) else value[0]


def _to_site(x: Tensor, hook: str, dims: Dims) -> Tensor:
    """Flat module activation → the Site's TransformerLens layout (as :func:`workbench.hooked.add_hook`)."""
    if hook not in HEAD_HOOKS:
        return x
    return x.unflatten(-1, (dims.n_heads, -1) if hook == "attn.hook_z" else (-1, dims.d_head))


def _write(envoy: Any, kind: str, new: Tensor) -> None:
    if kind == "input":
        envoy.input = new
        return
    old = envoy.output
    envoy.output = new if isinstance(old, Tensor) else (new, *old[1:])


def _trace(side: NnsightSide, ids: Tensor, remote: bool):
    if remote and side.context is not nullcontext:
        raise ConfigError("remote=True runs on NDIF's copy of the model, where our hook-based interventions (a Side's "
                          "context) do not exist; patch a plain model remotely")
    return side.nn.trace(ids, remote=True) if remote else side.nn.trace(ids)


def _device(side: NnsightSide) -> torch.device:
    return side.hf.get_input_embeddings().weight.device if side.hf.get_input_embeddings().weight.device.type != "meta" \
        else torch.device("cpu")


@torch.no_grad()
def cache_nnsight(model: Any, input_ids: Int[Tensor, "batch pos"], hook_names: Sequence[str], *, remote: bool = False,
                  tokenizer: Any = None) -> dict[str, Tensor]:
    """Activations at ``hook_names`` in TransformerLens layout, read in one nnsight trace."""
    side = model if isinstance(model, NnsightSide) else NnsightSide(model, tokenizer)
    saved: dict[str, Any] = {}
    with side.context(), _trace(side, input_ids.to(_device(side)), remote):
        for name in _order(hook_names):
            saved[name] = _read(side.nn, name)[2].save()
    return {n: _to_site(saved[n], site_from_hook_name(n).hook, side.dims) for n in hook_names}


def _final_metric_logits(side: NnsightSide, ids: Tensor, patches: dict[str, tuple[Tensor, Tensor]], n_variants: int,
                         b: int, remote: bool) -> Tensor:
    """One trace on ``ids`` (``n_variants`` copies of a ``b``-prompt batch) with ``patches[name] = (mask, source)``;
    returns final-position logits ``[n_variants, b, d_vocab]`` (fp32)."""
    dims = side.dims
    with side.context(), _trace(side, ids, remote):
        for name in _order(patches):
            envoy, kind, x = _read(side.nn, name)
            mask, src = patches[name]
            v = _to_site(x, site_from_hook_name(name).hook, dims).unflatten(0, (n_variants, b))
            mask = mask.to(v.device).reshape(mask.shape + (1,) * (v.ndim - mask.ndim))
            v = torch.where(mask, src.to(device=v.device, dtype=v.dtype).unsqueeze(0), v)
            _write(envoy, kind, v.flatten(0, 1).flatten(-2) if site_from_hook_name(name).hook in HEAD_HOOKS else v.flatten(0, 1))
        logits = side.nn.output.logits[:, -1].float().save()
    return logits.unflatten(0, (n_variants, b))


def _prepare(model, sites, target_ids, source_ids, source_model, positions, metric, tokenizer):
    check_metric(metric)
    side = NnsightSide(model, tokenizer)
    src = side if source_model is None else NnsightSide(source_model, tokenizer)
    target_ids, source_ids = as_id_pair(target_ids, source_ids, side.hf)
    if src is not side and any(getattr(src.dims, k) != getattr(side.dims, k) for k in ("n_layers", "n_heads", "d_head")):
        raise MismatchError(f"source model dimensions {src.dims} differ from the patched model's {side.dims}")
    masks = variant_masks(sites, *target_ids.shape, side.dims, positions)
    return side, src, target_ids, source_ids, masks


@torch.no_grad()
def activation_patch_nnsight(model: Any, sites: Sequence[SiteSet], target_ids: Int[Tensor, "batch pos"],
                             source_ids: Int[Tensor, "batch pos"], metric: Any, *, source_model: Any = None,
                             positions: Positions | None = None, max_batch: int = 256, remote: bool = False,
                             tokenizer: Any = None) -> Float[Tensor, "variant batch"]:
    """:func:`probes.patching.activation_patch` run through nnsight traces (``backend="nnsight"``).

    ``model`` / ``source_model``: an ``nn.Module`` (wrapped with :func:`workbench.hooked.to_nnsight`), a
    :class:`~probes.patch_sites.Side` or an nnsight model. ``remote=True`` sends each trace to NDIF (untested here).
    Returns ``metric(patched) − metric(target)``, ``[variant, batch]``.
    """
    side, src, target_ids, source_ids, masks = _prepare(model, sites, target_ids, source_ids, source_model, positions,
                                                        metric, tokenizer)
    source = cache_nnsight(src, source_ids, list(masks), remote=remote)
    n_variants, b = len(as_site_sets(sites)), target_ids.shape[0]
    device = _device(side)
    base = metric(_final_metric_logits(side, target_ids.to(device), {}, 1, b, remote)[0])
    per = max(1, max_batch // b)
    outs = []
    for c0 in range(0, n_variants, per):
        c1 = min(n_variants, c0 + per)
        patches = {n: (m[c0:c1] if m.shape[0] > 1 else m, source[n]) for n, m in masks.items()}
        logits = _final_metric_logits(side, target_ids.to(device).repeat(c1 - c0, 1), patches, c1 - c0, b, remote)
        outs.append(torch.stack([metric(v) for v in logits]) - base)
    return torch.cat(outs)


def attribution_patch_nnsight(model: Any, sites: Sequence[SiteSet], target_ids: Int[Tensor, "batch pos"],
                              source_ids: Int[Tensor, "batch pos"], metric: Any, *, source_model: Any = None,
                              positions: Positions | None = None, remote: bool = False,
                              tokenizer: Any = None) -> Float[Tensor, "variant batch"]:
    """:func:`probes.patching.attribution_patch` run through nnsight: one traced forward on ``target_ids`` whose
    input embeddings are made a leaf that needs a gradient (so a frozen model has a graph), the metric's backward in
    a nested ``with loss.backward():`` block reading each site's ``.grad``, and one traced forward on ``source_ids``.
    Returns ``Σ ∂metric/∂a · (a_source − a_target)`` over each variant's masked elements, ``[variant, batch]``.
    """
    side, src, target_ids, source_ids, masks = _prepare(model, sites, target_ids, source_ids, source_model, positions,
                                                        metric, tokenizer)
    source = cache_nnsight(src, source_ids, list(masks), remote=remote)
    names = _order(masks)
    acts: dict[str, Any] = {}
    grads: dict[str, Any] = {}
    with torch.enable_grad(), side.context(), _trace(side, target_ids.to(_device(side)), remote):
        emb = side.nn.model.embed_tokens.output
        side.nn.model.embed_tokens.output = emb.detach().requires_grad_(True)
        live = {}
        for name in names:
            live[name] = _read(side.nn, name)[2]
            acts[name] = live[name].detach().save()
        loss = metric(side.nn.output.logits[:, -1].float()).sum()
        with loss.backward():
            for name in reversed(names):
                grads[name] = live[name].grad.save()
    out = torch.zeros(len(as_site_sets(sites)), target_ids.shape[0])
    for name, mask in masks.items():
        hook = site_from_hook_name(name).hook
        a, g = _to_site(acts[name], hook, side.dims), _to_site(grads[name], hook, side.dims)
        prod = (g * (source[name].to(a.device) - a)).sum(-1).cpu()  # [batch, pos, *head]
        out += (prod.unsqueeze(0) * mask).flatten(2).sum(-1)
    return out
