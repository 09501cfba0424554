"""What a patch touches: the model :class:`Side` to run, equal-length inputs, and boolean masks over Site activations.

Split out of :mod:`probes.patching` (which re-exports all of it). A Site's ``pos`` is ``None`` (all positions), an
int (negative counts from the end) or the name of a per-prompt position given in
``positions={"query_label": LongTensor[batch]}``; :func:`site_mask` turns it into the elements of the activation it
names, :func:`variant_masks` stacks those per patch variant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
from jaxtyping import Bool, Int
from torch import Tensor, nn

from workbench.architecture import Dims
from workbench.errors import ConfigError, MismatchError
from workbench.sites import HEAD_HOOKS, Site

Positions = Mapping[str, Int[Tensor, " batch"]]
SiteSet = Site | Sequence[Site]


# ----------------------------------------------------------------------------- models and inputs
@dataclass(frozen=True)
class Side:
    """A model to run plus the context under which it computes what it should (e.g. a tuned intervention)."""

    model: nn.Module
    context: Callable[[], AbstractContextManager] = nullcontext

    @classmethod
    def of(cls, pair: Any, role: str) -> Side:
        """``Side.of(pair, "base" | "tuned")`` for a :class:`~workbench.pair.ModelPair`."""
        if role == "base":
            return cls(pair.base)
        if role == "tuned":
            return cls(pair.tuned, pair.tuned_context)
        raise ConfigError(f"role must be 'base' or 'tuned', got {role!r}")


def as_side(model: nn.Module | Side) -> Side:
    """``model`` as a :class:`Side` (a bare model runs under no extra context)."""
    return model if isinstance(model, Side) else Side(model)


def check_same_dims(a: nn.Module, b: nn.Module) -> None:
    """Raises MismatchError unless two models have the same layers / heads / d_head (cross-model patching)."""
    da, db = Dims.of(a), Dims.of(b)
    if da != db:
        raise MismatchError(f"cannot patch across models of different shapes: {da} vs {db}")


def equal_length_ids(tokenizer: Any, prompts: Sequence[str], prepend_bos: bool) -> Int[Tensor, "batch pos"]:
    """Tokenize prompts that must all have the same token length (no padding).

    Raises:
        ConfigError: the prompts tokenize to different lengths (the message lists them).
    """
    ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if prepend_bos:
        ids = [[tokenizer.bos_token_id, *x] for x in ids]
    lengths = sorted({len(x) for x in ids})
    if len(lengths) != 1:
        raise ConfigError(f"prompts have unequal token lengths {lengths}; patching needs equal lengths "
                          "(positions and position-wise means would not line up; padding shifts them)")
    return torch.tensor(ids, dtype=torch.long)


def _check_ids(target: Tensor, source: Tensor | None) -> None:
    if target.ndim != 2:
        raise ConfigError(f"input ids must be [batch, pos], got shape {tuple(target.shape)}")
    if source is not None and source.shape != target.shape:
        raise ConfigError(f"target and source ids must have the same [batch, pos] shape, got "
                          f"{tuple(target.shape)} vs {tuple(source.shape)} (unequal prompt lengths?)")


# ----------------------------------------------------------------------------- masks
def site_mask(site: Site, batch: int, seq_len: int, dims: Dims, positions: Positions | None = None) -> Bool[Tensor, "batch pos *head"]:
    """The elements of ``site``'s activation that it names: ``[batch, pos, heads]`` for head hooks, else ``[batch, pos]``.

    Raises:
        ConfigError: layer / head out of range, a position outside the prompt, or an unknown position name.
    """
    site.validate(dims.n_layers, dims.n_heads, n_kv_heads=dims.n_kv_heads)
    heads = dims.heads_at(site.hook) if site.hook in HEAD_HOOKS else None
    mask = torch.zeros((batch, seq_len) + ((heads,) if heads else ()), dtype=torch.bool)
    head = slice(None) if site.head is None else site.head
    if site.pos is None:
        if heads:
            mask[:, :, head] = True
        else:
            mask[:] = True
    elif isinstance(site.pos, int):
        if not -seq_len <= site.pos < seq_len:
            raise ConfigError(f"{site}: position {site.pos} outside prompts of length {seq_len}")
        if heads:
            mask[:, site.pos, head] = True
        else:
            mask[:, site.pos] = True
    else:
        if positions is None or site.pos not in positions:
            raise ConfigError(f"{site}: position name {site.pos!r} not given (positions: {sorted(positions or {})})")
        pos = torch.as_tensor(positions[site.pos], dtype=torch.long).reshape(-1)
        if pos.shape[0] != batch or bool(((pos < -seq_len) | (pos >= seq_len)).any()):
            raise ConfigError(f"position {site.pos!r} must hold one index in [-{seq_len}, {seq_len}) per prompt "
                              f"({batch}), got {pos.tolist()}")
        rows = torch.arange(batch)
        if heads:
            mask[rows, pos, head] = True
        else:
            mask[rows, pos] = True
    return mask


def _as_sets(sites: Sequence[SiteSet]) -> list[tuple[Site, ...]]:
    out = [(s,) if isinstance(s, Site) else tuple(s) for s in sites]
    if not out or any(not v or not all(isinstance(x, Site) for x in v) for v in out):
        raise ConfigError("sites must be a non-empty list of Sites or of non-empty Site lists")
    return out


def variant_masks(variants: Sequence[SiteSet], batch: int, seq_len: int, dims: Dims,
                  positions: Positions | None = None) -> dict[str, Bool[Tensor, "variant batch pos *head"]]:
    """Masks per hook name for a list of variants (each a Site or a set of Sites patched together)."""
    sets = _as_sets(variants)
    masks: dict[str, Tensor] = {}
    for v, sset in enumerate(sets):
        for site in sset:
            m = site_mask(site, batch, seq_len, dims, positions)
            if site.hook_name not in masks:
                masks[site.hook_name] = torch.zeros((len(sets),) + m.shape, dtype=torch.bool)
            masks[site.hook_name][v] |= m
    return masks


def _parse(hook_name: str) -> Site:
    _, layer, hook = hook_name.split(".", 2)
    return Site(int(layer), hook)


# ----------------------------------------------------------------------------- helpers for callers
def head_sites(dims: Dims, hook: str = "attn.hook_z", pos: int | str | None = None,
               layers: Sequence[int] | None = None) -> list[Site]:
    """Every head of every layer (layer-major), optionally at one position: the usual sender list."""
    return [Site(layer, hook, head=h, pos=pos) for layer in (layers if layers is not None else range(dims.n_layers))
            for h in range(dims.heads_at(hook))]


def layer_pos_sites(dims: Dims, seq_len: int, hook: str = "hook_resid_pre") -> list[Site]:
    """``Site(layer, hook, pos=p)`` for every layer and position (layer-major): activation patching by (layer, pos)."""
    return [Site(layer, hook, pos=p) for layer in range(dims.n_layers) for p in range(seq_len)]
