"""Circuits over attention heads: mean-ablation faithfulness, CMAP across a model pair, and DCM.

* :func:`faithfulness` — mean-ablate (position-wise means) every head outside the circuit, and a circuit head
  at every position except its own; faithfulness = circuit score ÷ full-model score, beside size-matched random
  circuits (Wang et al. 2023 §4; Prakash et al. 2024 §3, Table 1).
* :func:`cmap` — cross-model activation patching: run the base model with a head group's outputs replaced by
  the tuned model's on the same input; the share of the base→tuned gap each group recovers (Prakash et al.
  2024 §5, Fig. 4).
* :func:`dcm` — desiderata-based component masking: a learnable mask ``m ∈ [0, 1]`` per head, patched value
  ``m · z_orig + (1 − m) · z_counterfactual``, loss ``−target logit + λ Σ (1 − m)``, Adam; rounded at evaluation.
  Heads with ``m → 0`` carry the desideratum (Davies et al. 2023 "Discovering variable binding circuitry with
  desiderata"; Prakash et al. 2024 §4).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.patching import (
    Metric,
    PatchLayer,
    Positions,
    Side,
    _baseline,
    _check_ids,
    activation_patch,
    as_side,
    cache,
    check_metric,
    run_patched,
    site_mask,
    variant_masks,
)
from workbench.architecture import Dims
from workbench.data import as_token_ids
from workbench.errors import ConfigError
from workbench.hooked import hooks
from workbench.sites import Site


def _heads_only(sites: Sequence[Site], what: str) -> None:
    if isinstance(sites, Site) or not isinstance(sites, Sequence):
        raise ConfigError(f"{what} must be a list of Sites, got {type(sites).__name__}")
    bad = [str(s) for s in sites if not isinstance(s, Site) or s.hook != "attn.hook_z" or s.head is None]
    if bad:
        raise ConfigError(f"{what} must be attn.hook_z sites with a head, got {bad[:4]}")


def random_circuit(circuit: Sequence[Site], dims: Dims, rng: random.Random) -> list[Site]:
    """A size-matched random circuit: distinct random (layer, head) pairs, each keeping a circuit site's position."""
    pairs = rng.sample([(layer, h) for layer in range(dims.n_layers) for h in range(dims.n_heads)], len(circuit))
    return [Site(layer, "attn.hook_z", head=h, pos=s.pos) for (layer, h), s in zip(pairs, circuit)]


@dataclass(frozen=True)
class FaithfulnessResult:
    """Scores are means over prompts of the metric (accuracy in [0, 1] in Prakash et al. 2024)."""

    model_score: float
    circuit_score: float
    faithfulness: float | None
    random_scores: list[float]
    random_faithfulness: list[float | None]
    n_sites: int

    def to_dict(self) -> dict:
        return asdict(self)


def faithfulness(model: nn.Module | Side, circuit: Sequence[Site], input_ids: Int[Tensor, "batch pos"], metric: Metric,
                 means: Mapping[str, Float[Tensor, "1 pos n_heads d_head"]], *, n_random: int = 10, seed: int = 0,
                 positions: Positions | None = None, max_batch: int = 256) -> FaithfulnessResult:
    """Faithfulness of a head circuit under position-wise mean ablation, with ``n_random`` random circuits.

    Args:
        circuit: ``Site(layer, "attn.hook_z", head=h, pos=p)``; ``pos=None`` keeps the head at all positions.
        means: :func:`probes.patching.mean_activations` of every layer's ``attn.hook_z`` on a reference set of
            prompts with the same token length.

    Raises:
        ConfigError: an empty circuit, non-head sites, missing means, or prompts of another length than the means.
    """
    side = as_side(model)
    input_ids, _ = _check_ids(input_ids, None, side, ("input_ids", ""))
    check_metric(metric)
    if not circuit:
        raise ConfigError("the circuit is empty")
    _heads_only(circuit, "circuit sites")
    dims = Dims.of(side.model)
    b, seq = input_ids.shape
    names = [f"blocks.{layer}.attn.hook_z" for layer in range(dims.n_layers)]
    missing = [n for n in names if n not in means]
    if missing:
        raise ConfigError(f"means lack {missing[:3]}... (compute them for every layer's attn.hook_z)")
    if any(means[n].shape[1] != seq for n in names):
        raise ConfigError(f"means were computed on prompts of length {means[names[0]].shape[1]}, these have {seq}")
    rng = random.Random(seed)
    variants = [list(circuit)] + [random_circuit(circuit, dims, rng) for _ in range(n_random)]
    keep = variant_masks(variants, b, seq, dims, positions)
    ablate = {n: ~keep[n] if n in keep else torch.ones(1, 1, seq, dims.n_heads, dtype=torch.bool) for n in names}
    logits, _ = run_patched(side, input_ids, [PatchLayer(ablate, {n: means[n] for n in names})], len(variants),
                            max_batch=max_batch)
    scores = [float(metric(v).mean()) for v in logits]
    full = float(_baseline(side, input_ids, metric).mean())
    ratio = [s / full if full else None for s in scores]  # None: the full model scores 0
    return FaithfulnessResult(full, scores[0], ratio[0], scores[1:], ratio[1:], len(circuit))


@dataclass(frozen=True)
class CMAPResult:
    """Mean metric of the base, the tuned model, and the base with each group patched from the tuned model."""

    base_score: float
    tuned_score: float
    patched: dict[str, float]

    def recovered(self) -> dict[str, float | None]:
        """Share of the base→tuned gap each group recovers: ``(patched − base) / (tuned − base)`` (None: no gap)."""
        gap = self.tuned_score - self.base_score
        return {g: (s - self.base_score) / gap if gap else None for g, s in self.patched.items()}

    def to_dict(self) -> dict:
        return {**asdict(self), "recovered": self.recovered()}


def cmap(base: nn.Module | Side, tuned: nn.Module | Side, groups: Mapping[str, Sequence[Site]],
         input_ids: Int[Tensor, "batch pos"], metric: Metric, *, positions: Positions | None = None,
         max_batch: int = 256) -> CMAPResult:
    """Cross-model activation patching tuned → base for each named group of sites (Prakash et al. 2024 §5).

    Raises:
        MismatchError: the two models differ in layer / head shapes. ConfigError: empty groups, bad sites.
    """
    if not groups or any(not g for g in groups.values()):
        raise ConfigError("cmap needs non-empty named groups of sites")
    b_side, t_side = as_side(base), as_side(tuned)
    input_ids, _ = _check_ids(input_ids, None, b_side, ("input_ids", ""))
    effects = activation_patch(b_side, list(groups.values()), input_ids, input_ids, metric, source_model=t_side,
                               positions=positions, max_batch=max_batch)
    base_score = float(_baseline(b_side, input_ids, metric).mean())
    tuned_score = float(_baseline(t_side, input_ids, metric).mean())
    return CMAPResult(base_score, tuned_score, {g: base_score + float(e.mean()) for g, e in zip(groups, effects)})


# ----------------------------------------------------------------------------- DCM
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
    """Logits on ``orig`` with each head's z = w·z_orig + (1 − w)·z_cf at its positions (w from ``weights``)."""
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


def _take(positions: Positions | None, idx: Tensor) -> Positions | None:
    return None if positions is None else {k: torch.as_tensor(v)[idx] for k, v in positions.items()}


def dcm(model: nn.Module | Side, heads: Sequence[Site], orig_ids: Int[Tensor, "batch pos"], cf_ids: Int[Tensor, "batch pos"],
        target_ids: Int[Tensor, " batch"], candidates: Int[Tensor, "batch k"], cfg: DCMConfig, *,
        positions: Positions | None = None, eval_split: float = 0.5) -> DCMResult:
    """Learn which of ``heads`` carry a desideratum: ``target_ids`` is the answer expected when exactly the
    desideratum's variable is taken from the counterfactual prompt (Davies et al. 2023; Prakash et al. 2024 §4).

    The first ``1 − eval_split`` of the pairs train the mask; the rest evaluate the rounded mask.

    Raises:
        ConfigError: non-head sites, mismatched shapes, fewer than 2 pairs, or a target outside its candidates.
    """
    side = as_side(model)
    orig_ids, cf_ids = _check_ids(orig_ids, cf_ids, side, ("orig_ids", "cf_ids"))
    target_ids, candidates = as_token_ids(target_ids, "target_ids", ndim=1), as_token_ids(candidates, "candidates")
    _heads_only(heads, "DCM heads")
    dims = Dims.of(side.model)
    n = orig_ids.shape[0]
    n_eval = int(round(n * eval_split))
    if n < 2 or not 1 <= n_eval < n:
        raise ConfigError(f"DCM needs at least 2 pairs and a split leaving both parts non-empty (n={n}, eval={n_eval})")
    if target_ids.shape != (n,) or candidates.shape[0] != n or not bool((candidates == target_ids[:, None]).any(-1).all()):
        raise ConfigError("target_ids must be [batch] and each target one of its row's candidates")
    g = torch.Generator().manual_seed(cfg.seed)
    mask = nn.Parameter(torch.ones(len(heads)))
    opt = torch.optim.Adam([mask], lr=cfg.lr)
    n_train = n - n_eval
    losses = []
    names = sorted({h.hook_name for h in heads})
    z_orig, z_cf = cache(side, orig_ids, names), cache(side, cf_ids, names)

    def take(z: dict[str, Tensor], idx: Tensor) -> dict[str, Tensor]:
        return {k: v[idx] for k, v in z.items()}

    with _no_param_grads(side.model), side.context():
        for _ in range(cfg.steps):
            idx = torch.randperm(n_train, generator=g)[: cfg.batch_size]
            logits = _mixed(side, heads, dims, orig_ids[idx], take(z_orig, idx), take(z_cf, idx), mask,
                            _take(positions, idx))
            target_logit = logits.gather(-1, target_ids[idx].to(logits.device)[:, None]).mean()
            loss = -target_logit + cfg.lam * (1 - mask).sum()
            if not torch.isfinite(loss):
                raise ConfigError(f"DCM loss became {loss.item()} (check the inputs / lower lr)")
            opt.zero_grad()
            loss.backward()
            opt.step()
            with torch.no_grad():
                mask.clamp_(0, 1)
            losses.append(loss.item())
        rounded = (mask.detach() >= cfg.threshold).float()
        ev = torch.arange(n_train, n)
        with torch.no_grad():
            logits = _mixed(side, heads, dims, orig_ids[ev], take(z_orig, ev), take(z_cf, ev), rounded,
                            _take(positions, ev))
        cand = candidates[ev].to(logits.device)
        picked = cand.gather(-1, logits.gather(-1, cand).argmax(-1, keepdim=True)).squeeze(-1)
        acc = float((picked == target_ids[ev].to(logits.device)).float().mean())
    m = mask.detach().tolist()
    return DCMResult(list(heads), m, [h for h, v in zip(heads, rounded.tolist()) if v == 0], acc, losses)
