"""Circuits over attention heads: mean-ablation faithfulness, and CMAP across a model pair.

* :func:`faithfulness` — mean-ablate (position-wise means) every head outside the circuit, and a circuit head
  at every position except its own; faithfulness = circuit score ÷ full-model score, beside size-matched random
  circuits (Wang et al. 2023 §4; Prakash et al. 2024 §3, Table 1).
* :func:`cmap` — cross-model activation patching: run the base model with a head group's outputs replaced by
  the tuned model's on the same input; the share of the base→tuned gap each group recovers (Prakash et al.
  2024 §5, Fig. 4).

DCM (desiderata-based component masking), the third circuit method of Prakash et al. 2024 (§4), is
:mod:`probes.dcm`.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from probes.patch_sites import Positions, Side, as_id_pair, as_side, check_head_sites, check_metric, check_same_dims, variant_masks
from probes.patching import Metric, PatchLayer, _baseline, run_patched
from probes.shared_prefix import first_patched_position
from workbench.architecture import Dims
from workbench.errors import ConfigError
from workbench.sites import Site

__all__ = ["CMAPResult", "FaithfulnessResult", "cmap", "faithfulness", "random_circuit"]


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
                 positions: Positions | None = None, max_batch: int = 256,
                 model_logits: Float[Tensor, "batch d_vocab"] | None = None, share_prefix: bool = True) -> FaithfulnessResult:
    """Faithfulness of a head circuit under position-wise mean ablation, with ``n_random`` random circuits.

    Args:
        circuit: ``Site(layer, "attn.hook_z", head=h, pos=p)``; ``pos=None`` keeps the head at all positions.
        means: :func:`probes.patching.mean_activations` of every layer's ``attn.hook_z`` on a reference set of
            prompts with the same token length.
        model_logits: the unpatched model's final-position logits on ``input_ids`` when the caller already has
            them (the full-model score); else one more forward computes them.
        share_prefix: run the positions where every variant ablates the same heads once
            (:func:`probes.patching.run_patched`); ``False`` runs every variant on the whole prompt (same scores).

    Raises:
        ConfigError: an empty circuit, non-head sites, missing means, prompts of another length than the means,
            or ``model_logits`` of another batch size.
    """
    side = as_side(model)
    input_ids, _ = as_id_pair(input_ids, None, side, ("input_ids", ""))
    check_metric(metric)
    if not circuit:
        raise ConfigError("the circuit is empty")
    check_head_sites(circuit, "circuit sites")
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
                            max_batch=max_batch, share_prefix=share_prefix)
    scores = [float(metric(v).mean()) for v in logits]
    full = float(_model_metric(side, input_ids, metric, model_logits).mean())
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


def _model_metric(side: Side, ids: Tensor, metric: Metric, logits: Tensor | None) -> Float[Tensor, " batch"]:
    """``metric`` of the unpatched model on ``ids``, from ``logits`` ``[batch, d_vocab]`` when given."""
    if logits is None:
        return _baseline(side, ids, metric)
    if logits.ndim != 2 or logits.shape[0] != ids.shape[0]:
        raise ConfigError(f"precomputed logits must be [batch={ids.shape[0]}, d_vocab], got {tuple(logits.shape)}")
    return metric(logits.float())


def cmap(base: nn.Module | Side, tuned: nn.Module | Side, groups: Mapping[str, Sequence[Site]],
         input_ids: Int[Tensor, "batch pos"], metric: Metric, *, positions: Positions | None = None,
         max_batch: int = 256, base_logits: Float[Tensor, "batch d_vocab"] | None = None) -> CMAPResult:
    """Cross-model activation patching tuned → base for each named group of sites (Prakash et al. 2024 §5).

    One forward of the tuned model gives both its score and the source activations; the groups run in buckets by
    their first patched position, so a group at the last token recomputes only that token on top of the base's
    key/value cache (:func:`probes.patching.run_patched`). ``base_logits``: the base model's final-position logits
    on ``input_ids`` if the caller has them (else one more forward).

    Raises:
        MismatchError: the two models differ in layer / head shapes. ConfigError: empty groups, bad sites.
    """
    if not groups or any(not g for g in groups.values()):
        raise ConfigError("cmap needs non-empty named groups of sites")
    b_side, t_side = as_side(base), as_side(tuned)
    input_ids, _ = as_id_pair(input_ids, None, b_side, ("input_ids", ""))
    check_metric(metric)
    check_same_dims(b_side.model, t_side.model)
    b, seq = input_ids.shape
    masks = variant_masks(list(groups.values()), b, seq, Dims.of(b_side.model), positions)
    t_logits, rec = run_patched(t_side, input_ids, [], 1, record=list(masks), max_batch=max(1, b))
    source = {n: t[0] for n, t in rec.items()}
    base_metric = _model_metric(b_side, input_ids, metric, base_logits)
    starts = [first_patched_position([m[v:v + 1] for m in masks.values()], seq) for v in range(len(groups))]
    effects = torch.zeros(len(groups), b)
    for start in sorted(set(starts)):
        vs = [v for v, s in enumerate(starts) if s == start]
        logits, _ = run_patched(b_side, input_ids, [PatchLayer({n: m[vs] for n, m in masks.items()}, source)], len(vs),
                                max_batch=max_batch)
        effects[vs] = torch.stack([metric(v) for v in logits]) - base_metric
    base_score = float(base_metric.mean())
    tuned_score = float(metric(t_logits[0]).mean())
    return CMAPResult(base_score, tuned_score, {g: base_score + float(e.mean()) for g, e in zip(groups, effects)})
