"""Prefix-shared exact patching: positions before the first patched one are the target run's, so compute them once.

In a causal model, the activations at positions ``< p`` of a patched run depend only on tokens and activations at
positions ``< p``. When no variant patches anything before position ``p`` (the common case: patching at the last
token), every variant's prefix is the unpatched target run's. :func:`probes.patching.run_patched` then runs the
target's prefix once with ``use_cache=True`` and each chunk of variants only on positions ``p..`` on top of a copy of
that key/value cache, tiled over the variants — one token per variant instead of the whole prompt when ``p`` is
the last position. Results equal the full recomputation to floating-point tolerance (tested against it and
against hand-written hooks).

Not shared (the full run is used): recorded activations (they need every position), gradient runs, masks that
broadcast over positions with any element set, and models whose forward takes no key/value cache.
"""

from __future__ import annotations

import copy
import inspect
from collections.abc import Sequence
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn


def cache_argument(model: nn.Module) -> str | None:
    """The name under which ``model``'s forward takes a key/value cache: ``"cache"`` (transformers >= 5.x),
    ``"past_key_values"`` (earlier releases), or ``None`` when it takes none."""
    try:
        params = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return None
    return next((name for name in ("cache", "past_key_values") if name in params), None)


def takes_cache(model: nn.Module) -> bool:
    """Whether ``model``'s forward accepts a key/value cache (Hugging Face causal LMs do)."""
    return cache_argument(model) is not None


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


def tiled_cache(cache: Any, n_variants: int, batch: int) -> Any:
    """A fresh copy of ``cache`` (batch ``batch``) repeated for ``n_variants`` variants, variant-major (row
    ``v * batch + i`` holds prompt ``i``), matching ``input_ids.repeat(n_variants, 1)``."""
    out = copy.deepcopy(cache)
    index = torch.arange(batch).repeat(n_variants)
    device = _cache_device(out)
    out.reorder_cache(index.to(device) if device is not None else index)
    return out


def _cache_device(cache: Any) -> torch.device | None:
    for layer in getattr(cache, "layers", []):
        keys = getattr(layer, "keys", None)
        if isinstance(keys, Tensor):
            return keys.device
    return None
