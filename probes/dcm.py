"""DCM — desiderata-based component masking (Davies et al. 2023 "Discovering variable binding circuitry with
desiderata"; Prakash et al. 2024 §4), for many masks in one batched training run.

A learnable mask ``m ∈ [0, 1]`` per head, patched value ``m · z_orig + (1 − m) · z_counterfactual`` at the head's
positions, loss ``−mean target logit + λ Σ (1 − m)``, Adam, masks clamped to [0, 1] after each step and rounded at
``threshold`` for evaluation. Heads with ``m → 0`` carry the desideratum.

:func:`dcm_many` trains several masks (a :class:`DCMTask` each: a head group and a desideratum's prompt pairs) at
once: every task draws the same mini-batch rows per step (one seeded generator, as :func:`dcm` with the same seed
draws for each task alone), the tasks' copies of the batch are stacked along the batch axis, and the loss is the
sum of the tasks' losses — each mask's gradient is its own task's, and Adam is elementwise, so every mask follows
the same trajectory as when trained alone (up to floating-point reduction order). Two things are computed once
instead of per task and step: the cached ``hook_z`` of each distinct prompt set, and — positions before a task's
first masked position being the unpatched original run's (a causal model) — the original prompts' key/value cache
of that prefix, so each step runs only the positions from there on. Tasks are bucketed by that position, one
forward (and backward) per bucket and step. (Splitting a bucket's rows further by their own first position — 28 %
fewer tokens per step for the query-label group of the entity-tracking study — took the same CPU time in a 3-step
profile on SmolLM2, 38.5 s against 38.4 s, a forward of a few hundred tokens costing little more than reading the
weights; it was not kept.)
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.patch_sites import Positions, Side, as_id_pair, as_side, check_head_sites, site_mask
from probes.shared_prefix import cache_argument, first_patched_position, prefix_cache
from workbench.architecture import Dims
from workbench.data import as_token_ids
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site

__all__ = ["DCMConfig", "DCMResult", "DCMTask", "dcm", "dcm_many"]


@dataclass(frozen=True, kw_only=True)
class DCMConfig:
    """λ (``lam``) weighs the sparsity term Σ(1 − m); Adam ``lr``; masks start at 1 (= original values)."""

    lam: float = 0.01
    lr: float = 0.1
    steps: int = 100
    batch_size: int = 16
    seed: int = 0
    threshold: float = 0.5

    def __post_init__(self) -> None:
        if self.lam < 0 or self.lr <= 0 or self.steps < 1 or self.batch_size < 1 or not 0 < self.threshold < 1:
            raise ConfigError(f"invalid DCMConfig {self}: need lam >= 0, lr > 0, steps >= 1, batch_size >= 1, "
                              "0 < threshold < 1")


@dataclass(frozen=True)
class DCMResult:
    """``mask``: learned m per head (in ``heads`` order); ``selected``: heads whose rounded mask is 0 (they carry the
    desideratum); ``accuracy``: share of evaluation pairs where the rounded-mask model puts ``target`` on top of its
    candidates; ``losses``: per step."""

    heads: list[Site]
    mask: list[float]
    selected: list[Site]
    accuracy: float
    losses: list[float]

    def to_dict(self) -> dict:
        return {"heads": [str(h) for h in self.heads], "mask": self.mask, "selected": [str(h) for h in self.selected],
                "accuracy": self.accuracy, "losses": self.losses}


@dataclass(frozen=True)
class DCMTask:
    """One mask to learn: ``heads`` (``attn.hook_z`` Sites with a head) on pairs ``orig_ids`` / ``cf_ids``
    ``[batch, pos]``; ``target_ids`` ``[batch]`` is the answer expected when exactly the desideratum's variable is
    taken from the counterfactual, one of its row of ``candidates`` ``[batch, k]``; ``positions`` names per-prompt
    positions the Sites use."""

    heads: Sequence[Site]
    orig_ids: Int[Tensor, "batch pos"]
    cf_ids: Int[Tensor, "batch pos"]
    target_ids: Int[Tensor, " batch"]
    candidates: Int[Tensor, "batch k"]
    positions: Positions | None = None


@contextmanager
def _no_param_grads(model: nn.Module) -> Iterator[None]:
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p, f in flags:
            p.requires_grad_(f)


def _mixed(side: Side, heads: Sequence[Site], dims: Dims, orig: Tensor, z_o: dict[str, Tensor], z_c: dict[str, Tensor],
           weights: Tensor, positions: Positions | None) -> Float[Tensor, "batch d_vocab"]:
    """Logits on ``orig`` with each head's z = w·z_orig + (1 − w)·z_cf at its positions (w from ``weights``): one task,
    the whole prompt run (the eager reference of :func:`dcm_many`'s stacked, prefix-shared run)."""
    b, seq = orig.shape
    names = sorted(z_o)
    per_layer: dict[str, tuple[Tensor, Tensor]] = {}
    for name in names:
        w = torch.zeros(b, seq, dims.n_heads)
        sel = torch.zeros(b, seq, dims.n_heads, dtype=torch.bool)
        for i, h in enumerate(heads):
            if h.hook_name == name:
                m = site_mask(h, b, seq, dims, positions)
                w = w + m * weights[i]
                sel |= m
        per_layer[name] = (w, sel)

    def mix(name: str):
        def fn(x: Tensor) -> Tensor:
            w, sel = per_layer[name]
            w, sel = w.to(x.device)[..., None], sel.to(x.device)[..., None]
            return torch.where(sel, w * z_o[name].to(x.device) + (1 - w) * z_c[name].to(x.device), x)
        return fn

    with hooks(side.model, {Site(int(name.split(".")[1]), "attn.hook_z"): mix(name) for name in names}):
        device = next(side.model.parameters()).device
        return side.model(input_ids=orig.to(device), logits_to_keep=1).logits[:, -1].float()


@dataclass
class _Prepared:
    """A checked task: per layer, the heads' site masks ``[k, n, pos, n_heads]`` (float) and their indices; the first
    position any row masks (``start``); its original prompts' row offset in the shared prefix caches."""

    task: DCMTask
    heads: list[Site]
    orig: Tensor
    cf: Tensor
    target: Tensor
    cands: Tensor
    layers: dict[str, tuple[Tensor, Tensor]]  # name -> (head indices [k], site masks [k, n, pos, n_heads])
    start: int
    z_o: dict[str, Tensor] = field(default_factory=dict)
    z_c: dict[str, Tensor] = field(default_factory=dict)
    offset: int = 0


def _prepare(side: Side, task: DCMTask, dims: Dims, share_prefix: bool) -> _Prepared:
    orig, cf = as_id_pair(task.orig_ids, task.cf_ids, side, ("orig_ids", "cf_ids"))
    target, cands = as_token_ids(task.target_ids, "target_ids", ndim=1), as_token_ids(task.candidates, "candidates")
    check_head_sites(task.heads, "DCM heads")
    n, seq = orig.shape
    if target.shape != (n,) or cands.shape[0] != n or not bool((cands == target[:, None]).any(-1).all()):
        raise ConfigError("target_ids must be [batch] and each target one of its row's candidates")
    heads = list(task.heads)
    layers = {}
    for name in sorted({h.hook_name for h in heads}):
        idx = [i for i, h in enumerate(heads) if h.hook_name == name]
        layers[name] = (torch.tensor(idx), torch.stack([site_mask(heads[i], n, seq, dims, task.positions) for i in idx]).float())
    start = (first_patched_position([m > 0 for _, m in layers.values()], seq)
             if share_prefix and cache_argument(side.model) else 0)
    return _Prepared(task, heads, orig, cf, target, cands, layers, start)


def _caches(side: Side, preps: list[_Prepared]) -> None:
    """Fill each task's ``z_o`` / ``z_c`` ([n, pos, n_heads, d_head] per layer), one forward per distinct prompt set."""
    from probes.patching import cache

    memo: list[tuple[Tensor, dict[str, Tensor]]] = []
    needs: list[tuple[Tensor, set[str]]] = []
    for p in preps:
        for ids in (p.orig, p.cf):
            entry = next((e for e in needs if e[0].shape == ids.shape and torch.equal(e[0], ids)), None)
            if entry is None:
                needs.append((ids, set(p.layers)))
            else:
                entry[1].update(p.layers)
    for ids, names in needs:
        memo.append((ids, cache(side, ids, sorted(names))))

    def lookup(ids: Tensor) -> dict[str, Tensor]:
        return next(z for i, z in memo if i.shape == ids.shape and torch.equal(i, ids))

    for p in preps:
        zo, zc = lookup(p.orig), lookup(p.cf)
        p.z_o, p.z_c = {n: zo[n] for n in p.layers}, {n: zc[n] for n in p.layers}


class _Prefixes:
    """Key/value caches of the distinct original prompt sets (stacked; each task has its row ``offset``) up to a
    position, each computed once, unpatched, on first use."""

    def __init__(self, side: Side, preps: list[_Prepared]) -> None:
        uniq: list[Tensor] = []
        for p in preps:
            j = next((k for k, u in enumerate(uniq) if u.shape == p.orig.shape and torch.equal(u, p.orig)), None)
            if j is None:
                uniq.append(p.orig)
                j = len(uniq) - 1
            p.offset = j * p.orig.shape[0]
        self.side, self.ids, self.memo = side, torch.cat(uniq), {}

    def select(self, start: int, index: Tensor) -> object:
        """A fresh cache of positions ``< start`` for the stacked rows ``index``."""
        if start not in self.memo:
            device = next(self.side.model.parameters()).device
            with torch.no_grad():
                self.memo[start] = prefix_cache(self.side.model, self.ids[:, :start].to(device))
        out = copy.deepcopy(self.memo[start])
        out.reorder_cache(index.to(_device(out)))
        return out


def _device(cache: object) -> torch.device:
    layers = getattr(cache, "layers", [])
    keys = getattr(layers[0], "keys", None) if layers else None
    return keys.device if isinstance(keys, Tensor) else torch.device("cpu")


def _stacked_logits(side: Side, bucket: list[_Prepared], weights: list[Tensor], rows: Tensor,
                    prefixes: _Prefixes) -> list[Float[Tensor, "rows d_vocab"]]:
    """Final-position logits of each task in ``bucket`` (tasks with the same first masked position) on its original
    prompts ``rows`` with its mixed heads: all tasks' copies in one forward over the positions from there on, on top
    of the prefix key/value cache."""
    r, start = rows.shape[0], bucket[0].start
    names = sorted({n for p in bucket for n in p.layers})
    per: dict[str, list[tuple[int, Tensor, Tensor, Tensor, Tensor]]] = {n: [] for n in names}
    for v, (p, w) in enumerate(zip(bucket, weights)):
        for name, (idx, masks) in p.layers.items():
            m = masks[:, rows, start:]                                     # [k, r, pos', n_heads]
            mix_w = (w[idx].reshape(-1, 1, 1, 1) * m).sum(0)[..., None]    # one head per element: exact sums
            sel = (m > 0).any(0)[..., None]
            per[name].append((v, mix_w, sel, p.z_o[name][rows, start:], p.z_c[name][rows, start:]))

    def mix(name: str):
        def fn(x: Tensor) -> Tensor:
            parts = list(x.unflatten(0, (len(bucket), r)).unbind(0))
            for v, w, sel, zo, zc in per[name]:
                w = w.to(x.device)
                parts[v] = torch.where(sel.to(x.device), w * zo.to(x.device) + (1 - w) * zc.to(x.device), parts[v])
            return torch.stack(parts).flatten(0, 1)
        return fn

    device = next(side.model.parameters()).device
    ids = torch.cat([p.orig[rows, start:] for p in bucket]).to(device)
    kw = {}
    if start > 0:
        kw[cache_argument(side.model)] = prefixes.select(start, torch.cat([p.offset + rows for p in bucket]))
    with hooks(side.model, {Site(int(n.split(".")[1]), "attn.hook_z"): mix(n) for n in names}):
        logits = side.model(input_ids=ids, logits_to_keep=1, **kw).logits[:, -1].float()
    return list(logits.unflatten(0, (len(bucket), r)).unbind(0))


def _buckets(preps: list[_Prepared]) -> list[list[int]]:
    """Tasks grouped by first masked position (tasks whose heads sit at the same positions)."""
    starts = sorted({p.start for p in preps})
    return [[i for i, p in enumerate(preps) if p.start == s] for s in starts]


def dcm_many(model: nn.Module | Side, tasks: Sequence[DCMTask], cfg: DCMConfig, *, eval_split: float = 0.5,
             share_prefix: bool = True) -> list[DCMResult]:
    """Learn one mask per task in one batched run (see the module docstring); the result of each task equals
    :func:`dcm` on it alone with the same ``cfg`` up to floating-point reduction order.

    All tasks need the same number of pairs; the first ``1 − eval_split`` of them train the masks, the rest
    evaluate the rounded masks. ``share_prefix=False`` runs every step on whole prompts.

    Returns:
        one :class:`DCMResult` per task, in order.

    Raises:
        ConfigError: non-head sites, mismatched shapes, fewer than 2 pairs, tasks with different numbers of pairs,
            a target outside its candidates, or a non-finite loss.
    """
    side = as_side(model)
    if not tasks:
        raise ConfigError("dcm_many needs at least one task")
    dims = Dims.of(side.model)
    preps = [_prepare(side, t, dims, share_prefix) for t in tasks]
    n = preps[0].orig.shape[0]
    n_eval = round(n * eval_split)
    if n < 2 or not 1 <= n_eval < n:
        raise ConfigError(f"DCM needs at least 2 pairs and a split leaving both parts non-empty (n={n}, eval={n_eval})")
    if any(p.orig.shape[0] != n for p in preps):
        raise ConfigError(f"dcm_many: every task needs the same number of pairs, got {[p.orig.shape[0] for p in preps]}")
    g = torch.Generator().manual_seed(cfg.seed)
    masks = [nn.Parameter(torch.ones(len(p.heads))) for p in preps]
    opt = torch.optim.Adam(masks, lr=cfg.lr)
    n_train = n - n_eval
    losses: list[list[float]] = [[] for _ in preps]
    _caches(side, preps)  # runs under the side's context itself
    buckets, prefixes = _buckets(preps), _Prefixes(side, preps)
    with _no_param_grads(side.model), side.context():
        for _ in range(cfg.steps):
            idx = torch.randperm(n_train, generator=g)[: cfg.batch_size]
            step = []
            for members in buckets:
                logits = _stacked_logits(side, [preps[i] for i in members], [masks[i] for i in members], idx, prefixes)
                for i, lg in zip(members, logits):
                    target_logit = lg.gather(-1, preps[i].target[idx].to(lg.device)[:, None]).mean()
                    step.append((i, -target_logit + cfg.lam * (1 - masks[i]).sum()))
            bad = [loss.item() for _, loss in step if not torch.isfinite(loss)]
            if bad:
                raise ConfigError(f"DCM loss became {bad[0]} (check the inputs / lower lr)")
            opt.zero_grad()
            torch.stack([loss for _, loss in step]).sum().backward()
            opt.step()
            with torch.no_grad():
                for m in masks:
                    m.clamp_(0, 1)
            for i, loss in step:
                losses[i].append(loss.item())
        rounded = [(m.detach() >= cfg.threshold).float() for m in masks]
        ev = torch.arange(n_train, n)
        acc: dict[int, float] = {}
        with torch.no_grad():
            for members in buckets:
                logits = _stacked_logits(side, [preps[i] for i in members], [rounded[i] for i in members], ev, prefixes)
                for i, lg in zip(members, logits):
                    cand = preps[i].cands[ev].to(lg.device)
                    picked = cand.gather(-1, lg.gather(-1, cand).argmax(-1, keepdim=True)).squeeze(-1)
                    acc[i] = float((picked == preps[i].target[ev].to(lg.device)).float().mean())
    return [DCMResult(p.heads, m.detach().tolist(), [h for h, v in zip(p.heads, r.tolist()) if v == 0], acc[i], losses[i])
            for i, (p, m, r) in enumerate(zip(preps, masks, rounded))]


def dcm(model: nn.Module | Side, heads: Sequence[Site], orig_ids: Int[Tensor, "batch pos"], cf_ids: Int[Tensor, "batch pos"],
        target_ids: Int[Tensor, " batch"], candidates: Int[Tensor, "batch k"], cfg: DCMConfig, *,
        positions: Positions | None = None, eval_split: float = 0.5, share_prefix: bool = True) -> DCMResult:
    """Learn which of ``heads`` carry a desideratum: ``target_ids`` is the answer expected when exactly the
    desideratum's variable is taken from the counterfactual prompt (Davies et al. 2023; Prakash et al. 2024 §4).

    One task of :func:`dcm_many`: the first ``1 − eval_split`` of the pairs train the mask; the rest evaluate the
    rounded mask.

    Raises:
        ConfigError: non-head sites, mismatched shapes, fewer than 2 pairs, or a target outside its candidates.
    """
    return dcm_many(model, [DCMTask(heads, orig_ids, cf_ids, target_ids, candidates, positions)], cfg,
                    eval_split=eval_split, share_prefix=share_prefix)[0]
