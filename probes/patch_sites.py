"""What a patch touches: the model :class:`Side` to run, equal-length inputs, and boolean masks over Site activations.

The patching engines (:mod:`probes.patching`, :mod:`probes.path_patching`, :mod:`probes.patching_remote`,
:mod:`probes.dcm`, :mod:`probes.edges`) import these from here. A Site's ``pos`` is ``None`` (all positions), an
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
from workbench.data import as_token_ids, vocab_size_of
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
    """``model`` as a :class:`Side` (a bare model runs under no extra context).

    Raises:
        ConfigError: ``model`` is neither a Side nor an ``nn.Module`` (e.g. a ModelPair: use ``Side.of(pair, role)``).
    """
    if isinstance(model, Side):
        return model
    if not isinstance(model, nn.Module):
        raise ConfigError(f"expected a model (nn.Module) or a Side, got {type(model).__name__}"
                          + ("; for a ModelPair pass Side.of(pair, 'base' | 'tuned')" if hasattr(model, "tuned_info") else ""))
    return Side(model)


def check_same_dims(a: nn.Module, b: nn.Module) -> None:
    """Raises MismatchError unless two models have the same layers / heads / d_head (cross-model patching)."""
    da, db = Dims.of(a), Dims.of(b)
    if da != db:
        raise MismatchError(f"cannot patch across models of different shapes: {da} vs {db}")


def equal_length_ids(tokenizer: Any, prompts: Sequence[str], prepend_bos: bool) -> Int[Tensor, "batch pos"]:
    """Tokenize prompts that must all have the same token length (no padding).

    Raises:
        ConfigError: no prompts, a bare string instead of a list, or prompts that tokenize to different lengths
            (the message lists them).
    """
    if isinstance(prompts, str) or len(prompts) == 0 or not all(isinstance(p, str) for p in prompts):
        raise ConfigError("prompts must be a non-empty list of strings (one prompt? wrap it: [prompt])")
    ids = [list(tokenizer(p, add_special_tokens=False)["input_ids"]) for p in prompts]
    if prepend_bos:
        ids = [[tokenizer.bos_token_id, *x] for x in ids]
    lengths = sorted({len(x) for x in ids})
    if len(lengths) != 1:
        raise ConfigError(f"prompts have unequal token lengths {lengths}; patching needs equal lengths "
                          "(positions and position-wise means would not line up; padding shifts them)")
    return torch.tensor(ids, dtype=torch.long)


def as_ids(model: nn.Module | Side, ids: Any, name: str = "input_ids") -> Int[Tensor, "batch pos"]:
    """Token ids for ``model`` (a tensor or ``list[list[int]]``) as a long ``[batch, pos]`` tensor
    (:func:`workbench.data.as_token_ids`, checked against the model's vocabulary).

    Raises:
        ConfigError: not a non-empty rectangular ``[batch, pos]`` of ids in the model's vocabulary.
    """
    return as_token_ids(ids, name, vocab_size=vocab_size_of(as_side(model).model))


def as_id_pair(target: Any, source: Any, model: nn.Module | Side | None = None,
               names: tuple[str, str] = ("target_ids", "source_ids")) -> tuple[Tensor, Tensor | None]:
    """Both id arguments (``source`` may be ``None``) normalised by :func:`as_ids`, checked against ``model``'s
    vocabulary when given; ``names`` name them in messages.

    Raises:
        ConfigError: ids that are not ``[batch, pos]`` token ids, or target and source shapes that differ.
    """
    vocab = vocab_size_of(as_side(model).model) if model is not None else None
    target = as_token_ids(target, names[0], vocab_size=vocab)
    source = None if source is None else as_token_ids(source, names[1], vocab_size=vocab)
    if source is not None and source.shape != target.shape:
        raise ConfigError(f"{names[0]} and {names[1]} must have the same [batch, pos] shape, got "
                          f"{tuple(target.shape)} vs {tuple(source.shape)} (unequal prompt lengths?)")
    return target, source


def check_metric(metric: Any) -> None:
    """Raises ConfigError unless ``metric`` is callable (logits ``[batch, d_vocab]`` → ``[batch]``, see probes.metrics)."""
    if not callable(metric):
        raise ConfigError(f"metric must be a function of final-position logits [batch, d_vocab] -> [batch] "
                          f"(e.g. probes.metrics.logit_diff(...)), got {type(metric).__name__}")


def check_head_sites(sites: Sequence[Site], what: str) -> None:
    """Raises ConfigError (naming ``what``) unless ``sites`` is a list of ``attn.hook_z`` Sites with a head each
    (the components a head circuit is made of)."""
    if isinstance(sites, Site) or not isinstance(sites, Sequence):
        raise ConfigError(f"{what} must be a list of Sites, got {type(sites).__name__}")
    bad = [str(s) for s in sites if not isinstance(s, Site) or s.hook != "attn.hook_z" or s.head is None]
    if bad:
        raise ConfigError(f"{what} must be attn.hook_z sites with a head, got {bad[:4]}")


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


def as_site_sets(sites: Sequence[SiteSet]) -> list[tuple[Site, ...]]:
    """One tuple of Sites per patch variant: a lone Site is one variant, a Site in the list a one-site variant, a list
    of Sites one variant patching them together.

    Raises:
        ConfigError: not a non-empty list of Sites or of non-empty Site lists.
    """
    if isinstance(sites, Site):  # one site: one variant
        sites = [sites]
    try:
        out = [(s,) if isinstance(s, Site) else tuple(s) for s in sites]
    except TypeError:  # not iterable (an int, None ...)
        out = []
    if not out or any(not v or not all(isinstance(x, Site) for x in v) for v in out):
        raise ConfigError("sites must be a non-empty list of Sites or of non-empty Site lists")
    return out


def variant_masks(variants: Sequence[SiteSet], batch: int, seq_len: int, dims: Dims,
                  positions: Positions | None = None) -> dict[str, Bool[Tensor, "variant batch pos *head"]]:
    """Masks per hook name for a list of variants (each a Site or a set of Sites patched together)."""
    sets = as_site_sets(variants)
    masks: dict[str, Tensor] = {}
    for v, sset in enumerate(sets):
        for site in sset:
            m = site_mask(site, batch, seq_len, dims, positions)
            if site.hook_name not in masks:
                masks[site.hook_name] = torch.zeros((len(sets),) + m.shape, dtype=torch.bool)
            masks[site.hook_name][v] |= m
    return masks


def site_from_hook_name(hook_name: str) -> Site:
    """The whole-activation Site a TransformerLens hook name names: ``"blocks.3.attn.hook_z"`` → ``Site(3, "attn.hook_z")``
    (the inverse of :attr:`Site.hook_name`)."""
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
