"""Path patching (Wang et al. 2023 "IOI" §3.1 / appendix B; Prakash et al. 2024 §3), without repeated work.

:func:`path_patch` measures each sender's effect on a metric through chosen receivers with everything else frozen:
step 1 runs the target prompts with the sender set to its source value and every other attention head's output
(``hook_z``) frozen at its target value (MLPs recompute, as in IOI) and records the receivers' query / key / value
inputs; step 2 runs the target with only those receiver inputs patched. With ``receivers="logits"`` step 1's
logits are the answer.

What does not depend on the sender is computed once and reused:

* :class:`PathPatchRuns` (:func:`path_patch_runs`) holds the unpatched runs — every layer's ``hook_z`` on the
  target and on the source prompts, the target's final logits (the baseline of every effect) and the target's
  key/value caches of prompt prefixes. Pass it as ``runs=`` to every :func:`path_patch` call on the same prompts
  (a circuit search makes one per group): they then run only the patched variants.
* Positions before the first sender / receiver position are the target run's in every variant (a causal model;
  freezing a head there at its target value changes nothing), so each variant runs only the positions from there
  on, on top of the target's key/value cache — one token per variant for senders at the last token. Same
  results as the whole-prompt run to floating-point tolerance (tests: against hand-written hooks, and
  ``share_prefix=False``).

:func:`path_patch` runs on the engine of :mod:`probes.patching` (:func:`~probes.patching.run_patched`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    as_side,
    as_site_sets,
    check_metric,
    site_from_hook_name,
    variant_masks,
)
from probes.patching import cache, run_patched
from probes.shared_prefix import (
    cache_argument,
    first_patched_position,
    prefix_cache,
    suffix,
    tiled_cache,
)
from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site

__all__ = ["PathPatchRuns", "path_patch", "path_patch_runs"]

QKV = ("attn.hook_q", "attn.hook_k", "attn.hook_v")


@dataclass
class PathPatchRuns:
    """The unpatched runs of one model side on ``target_ids`` / ``source_ids`` ``[batch, pos]``.

    ``clean_z`` / ``source_z``: every layer's ``blocks.{l}.attn.hook_z`` ``[batch, pos, n_heads, d_head]``;
    ``target_logits``: final-position logits ``[batch, d_vocab]`` (fp32); prefix key/value caches of the target
    are computed on first use and kept.
    """

    side: Side
    target_ids: Tensor
    source_ids: Tensor
    clean_z: dict[str, Tensor]
    source_z: dict[str, Tensor]
    target_logits: Tensor
    _prefix: dict[int, Any] = field(default_factory=dict, repr=False)

    def prefix(self, start: int) -> Any:
        """The target's key/value cache of positions ``< start`` (computed once per ``start``)."""
        if start not in self._prefix:
            device = next(self.side.model.parameters()).device
            with torch.no_grad(), self.side.context():
                self._prefix[start] = prefix_cache(self.side.model, self.target_ids[:, :start].to(device))
        return self._prefix[start]

    def matches(self, side: Side, target_ids: Tensor, source_ids: Tensor) -> bool:
        """Whether these runs are of ``side`` on these prompts."""
        return (self.side == side and self.target_ids.shape == target_ids.shape and torch.equal(self.target_ids, target_ids)
                and self.source_ids.shape == source_ids.shape and torch.equal(self.source_ids, source_ids))


@torch.no_grad()
def path_patch_runs(model: nn.Module | Side, target_ids: Int[Tensor, "batch pos"],
                    source_ids: Int[Tensor, "batch pos"]) -> PathPatchRuns:
    """The unpatched runs :func:`path_patch` reads, to compute once and pass as ``runs=`` to every call on these
    prompts: two forward passes (target, recording ``hook_z`` and the logits; source).

    Raises:
        ConfigError: mismatched id shapes or token ids out of the vocabulary.
    """
    side = as_side(model)
    target_ids, source_ids = as_id_pair(target_ids, source_ids, side)
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(Dims.of(side.model).n_layers)]
    logits, rec = run_patched(side, target_ids, [], 1, record=names, max_batch=max(1, target_ids.shape[0]))
    return PathPatchRuns(side, target_ids, source_ids, {n: t[0] for n, t in rec.items()}, cache(side, source_ids, names),
                         logits[0])


def _check_receivers(receivers: str | Sequence[Site] | Site) -> str | list[Site]:
    if isinstance(receivers, str):
        if receivers != "logits":
            raise ConfigError(f"receivers must be 'logits' or a list of Sites, got {receivers!r}")
        return receivers
    receivers = [receivers] if isinstance(receivers, Site) else list(receivers)
    bad = [str(r) for r in receivers if not isinstance(r, Site) or r.hook not in QKV]
    if not receivers or bad:
        raise ConfigError(f"receivers must be attn.hook_q / hook_k / hook_v sites, got {bad or 'none'}")
    return receivers


def _run(runs: PathPatchRuns, start: int, fns: dict[str, Callable[[Tensor], Tensor | None]], n: int) -> Tensor:
    """Final logits ``[n * batch, d_vocab]`` of ``n`` copies of the target run from position ``start`` with hooks."""
    side, ids = runs.side, runs.target_ids
    b = ids.shape[0]
    device = next(side.model.parameters()).device
    kw = {cache_argument(side.model): tiled_cache(runs.prefix(start), n, b)} if start else {}
    with side.context(), hooks(side.model, [(site_from_hook_name(name), fn) for name, fn in fns.items()]):
        out = side.model(input_ids=ids[:, start:].to(device).repeat(n, 1), logits_to_keep=1, **kw)
    return out.logits[:, -1].float()


@torch.no_grad()
def path_patch(model: nn.Module | Side, senders: Sequence[SiteSet], receivers: str | Sequence[Site],
               target_ids: Int[Tensor, "batch pos"], source_ids: Int[Tensor, "batch pos"],
               metric: Callable[[Float[Tensor, "batch d_vocab"]], Float[Tensor, " batch"]], *,
               positions: Positions | None = None, max_batch: int = 256, runs: PathPatchRuns | None = None,
               share_prefix: bool = True) -> Float[Tensor, "variant batch"]:
    """Path patching: each sender's effect on ``metric`` through ``receivers`` only (Wang et al. 2023 §3.1;
    Prakash et al. 2024 §3).

    Args:
        senders: one variant per entry (usually ``Site(l, "attn.hook_z", head=h, pos=...)``).
        receivers: ``"logits"`` (the sender's effect through the residual stream, other heads frozen) or Sites at
            ``attn.hook_q`` / ``hook_k`` / ``hook_v`` (a head's query / key / value input at a position). With
            grouped-query attention a key / value site is a key-value head, shared by its query-head group.
        runs: :func:`path_patch_runs` of the same side and prompts, reused instead of recomputed.
        share_prefix: run each variant only from the first sender / receiver position on (see the module doc).

    Returns:
        ``metric(patched) − metric(target)``, ``[variant, batch]``. A sender at or after the last receiver layer
        has no path to it; its effect is exactly 0 and it is not run.

    Raises:
        ConfigError: receivers that are not query / key / value sites, ``runs`` of other prompts or another side,
            or as :func:`probes.patching.activation_patch`.
    """
    side = as_side(model)
    target_ids, source_ids = as_id_pair(target_ids, source_ids, side)
    check_metric(metric)
    dims = Dims.of(side.model)
    sets = as_site_sets(senders)
    b, seq = target_ids.shape
    receivers = _check_receivers(receivers)
    to_logits = isinstance(receivers, str)
    last = dims.n_layers if to_logits else max(r.layer for r in receivers)
    live = [i for i, s in enumerate(sets) if min(x.layer for x in s) < last]
    out = torch.zeros(len(sets), b)
    if not live:
        return out
    if runs is None:
        runs = path_patch_runs(side, target_ids, source_ids)
    elif not runs.matches(side, target_ids, source_ids):
        raise ConfigError("runs= holds the runs of another model side or other prompts; make them with "
                          "path_patch_runs(model, target_ids, source_ids)")
    send_masks = variant_masks([sets[i] for i in live], b, seq, dims, positions)
    recv_masks = {} if to_logits else variant_masks([receivers], b, seq, dims, positions)  # broadcast over variants
    start = (first_patched_position([*send_masks.values(), *recv_masks.values()], seq)
             if share_prefix and cache_argument(side.model) else 0)
    base = metric(runs.target_logits)
    per = max(1, max_batch // b)
    for c0 in range(0, len(live), per):
        idx = live[c0:c0 + per]
        send = {name: suffix(m[c0:c0 + len(idx)], start, 2, seq) for name, m in send_masks.items()}
        recv = {name: suffix(m, start, 2, seq) for name, m in recv_masks.items()}
        logits = _variants(runs, start, send, recv, len(idx), dims.n_layers)
        out[idx] = metric_per_variant(logits.unflatten(0, (len(idx), b)), metric) - base
    return out


def _variants(runs: PathPatchRuns, start: int, send: dict[str, Tensor], recv: dict[str, Tensor], n: int,
              n_layers: int) -> Float[Tensor, "n_x_batch d_vocab"]:
    """Steps 1 (and 2, with receivers) for ``n`` variants, positions ``start..``; masks are already cut to them:
    ``send[name]`` ``[n, batch, pos', n_heads]``, ``recv[name]`` ``[1, batch, pos', heads]``."""
    b, seq = runs.target_ids.shape
    rec: dict[str, Tensor] = {}

    def step1(name: str) -> Callable[[Tensor], Tensor | None]:
        def fn(x: Tensor) -> Tensor | None:
            if name in recv:  # a receiver input: record it, unchanged
                rec[name] = x.unflatten(0, (n, b)).clone()
                return None
            clean = suffix(runs.clean_z[name], start, 1, seq).to(x.device, x.dtype).unsqueeze(0)
            if name not in send:  # every head frozen at its target value
                return clean.expand(n, *clean.shape[1:]).flatten(0, 1)
            src = suffix(runs.source_z[name], start, 1, seq).to(x.device, x.dtype).unsqueeze(0)
            return torch.where(send[name].to(x.device)[..., None], src, clean).flatten(0, 1)
        return fn

    def step2(name: str) -> Callable[[Tensor], Tensor]:
        def fn(x: Tensor) -> Tensor:
            return torch.where(recv[name].to(x.device)[..., None], rec[name], x.unflatten(0, (n, b))).flatten(0, 1)
        return fn

    z_names = [f"blocks.{layer}.attn.hook_z" for layer in range(n_layers)]
    logits = _run(runs, start, {name: step1(name) for name in [*z_names, *recv]}, n)
    return logits if not recv else _run(runs, start, {name: step2(name) for name in recv}, n)


def metric_per_variant(logits: Float[Tensor, "variant batch d_vocab"], metric) -> Float[Tensor, "variant batch"]:
    """``metric`` applied to each variant's logits (the metric takes ``[batch, d_vocab]``)."""
    return torch.stack([metric(v) for v in logits])
