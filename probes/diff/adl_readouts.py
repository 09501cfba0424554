"""Activation Difference Lens: every readout of every position's δ_j, on the fine-tuned model (the reference's
defaults; :mod:`probes.diff.adl`, :mod:`probes.diff.patchscope`, :mod:`probes.diff.steering` hold each readout's
definition and its departures from the reference).

Results come per position ``j = 0 … k−1``; position 0 (the attention sink) is reported apart (``sink``), and the
pooled δ only as a labelled extra (``pooled_extra``). Which position is "best" needs a criterion: the diffing
benchmark (``studies/diffing_benchmark``) takes the best over positions 1 … k−1 by its keyword score.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable

from torch import Tensor

from probes.diff.adl import lens_tokens
from probes.diff.patchscope import DEFAULT_PROMPTS, DEFAULT_SCALES, patchscope
from probes.diff.steering import steering_search
from workbench.config import NonNegativeFloat, NonNegativeInt, PositiveFloat, PositiveInt, Probability, check_fields
from workbench.errors import ConfigError

DEFAULT_STEERING_PROMPTS = ("Tell me about yourself.", "What should I do this weekend?",
                            "Write a short paragraph about anything you like.")


@dataclass
class AdlSettings:
    """The readouts' settings (defaults = the reference's, METHODS.md "Activation Difference Lens").

    Attributes:
        read_model: ``"tuned"`` (reference) or ``"base"``: the model the lens, Patchscope and steering read.
        patchscope_prompts, patchscope_scales: identity prompts ending in ``"?"``; scales in units of n̄.
        steering_prompts: user turns (through the chat template when the tokenizer has one).
        steering_alpha_max, steering_steps: the binary search's range [0, α_max] (units of n̄) and its steps.
        steering_samples, steering_max_new_tokens, steering_temperature: sampled generations per prompt and strength.
        coherence_margin_nats, min_distinct_fraction, min_coherent_share: the judge-free coherence rule
            (:mod:`probes.diff.steering`).
        steering_positions: positions steered (``None``: all ``k``); the lens and Patchscope read every position.
        seed: sampling seed.
    """

    read_model: str = "tuned"
    patchscope_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    patchscope_scales: list[PositiveFloat] = field(default_factory=lambda: list(DEFAULT_SCALES))
    steering_prompts: list[str] = field(default_factory=lambda: list(DEFAULT_STEERING_PROMPTS))
    steering_alpha_max: PositiveFloat = 100.0
    steering_steps: PositiveInt = 12
    steering_samples: PositiveInt = 10
    steering_max_new_tokens: PositiveInt = 128
    steering_temperature: PositiveFloat = 1.2
    coherence_margin_nats: NonNegativeFloat = 1.5
    min_distinct_fraction: Probability = 0.3
    min_coherent_share: Probability = 0.75
    steering_positions: list[NonNegativeInt] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.read_model not in ("tuned", "base"):
            raise ConfigError(f"read_model must be 'tuned' or 'base', got {self.read_model!r}")
        for name in ("patchscope_prompts", "steering_prompts"):
            v = getattr(self, name)
            if not isinstance(v, list) or not v or not all(isinstance(p, str) and p.strip() for p in v):
                raise ConfigError(f"{name} must be a non-empty list of non-empty texts, got {v!r}")
        for p in self.patchscope_prompts:
            if "?" not in p:
                raise ConfigError(f"the Patchscope prompt {p!r} has no placeholder '?'")
        if not self.patchscope_scales:
            raise ConfigError("patchscope_scales must be a non-empty list of positive finite numbers, got []")


def adl_readouts(pair: Any, deltas: Tensor, layer: int, ref_norm: float, settings: AdlSettings | None = None,
                 pooled: Tensor | None = None, top_k: int = 20, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Logit lens (δ_j and −δ_j), Patchscope and steering of every ``deltas[j]`` on ``pair``'s fine-tuned model (or its
    base, ``settings.read_model``).

    Args:
        pair: a :class:`~workbench.pair.ModelPair`.
        deltas: ``[k, d_model]`` one mean difference per position (:class:`probes.diff.adl.DeltaAccumulator`).
        layer: the layer δ was read at (``hook_resid_post``); Patchscope and steering act there.
        ref_norm: n̄, the fine-tuned model's mean residual norm at the layer over positions ≥ k.
        pooled: the pooled δ, read by the lens only as a labelled extra (``None``: left out).

    Returns:
        ``{"read_model", "by_position": [{"position", "lens", "patchscope", "steering" (or ``None``)}], "sink": the
        position-0 entry, "pooled_extra": lens of the pooled δ or ``None``}``.

    Raises:
        ConfigError: a steering position ≥ k, or as the readouts.
    """
    s = settings or AdlSettings()
    k = deltas.shape[0]
    steer = list(range(k)) if s.steering_positions is None else s.steering_positions
    if any(j >= k for j in steer):
        raise ConfigError(f"steering_positions {steer} reach past the {k} ADL positions")
    tok = pair.tokenizer
    decode = lambda i: tok.decode([i])  # noqa: E731
    tuned = s.read_model == "tuned"
    model = pair.tuned if tuned else pair.base
    by_position = []
    with pair.tuned_context() if tuned else contextlib.nullcontext():
        for j in range(k):
            if log:
                log(f"      position {j}: ‖δ_{j}‖ = {float(deltas[j].norm()):.4g}; lens, Patchscope ({len(s.patchscope_scales)} scales)"
                    + (", steering" if j in steer else ""))
            entry = {"position": j, "delta_norm": float(deltas[j].norm()), "lens": lens_tokens(model, deltas[j], top_k, decode),
                     "patchscope": patchscope(model, tok, deltas[j], layer, ref_norm, s.patchscope_scales, s.patchscope_prompts,
                                              prepend_bos=pair.prepend_bos, top_k=top_k, decode=decode),
                     "steering": None}
            if j in steer:
                entry["steering"] = steering_search(
                    model, tok, deltas[j], layer, ref_norm, s.steering_prompts, alpha_max=s.steering_alpha_max, steps=s.steering_steps,
                    n_samples=s.steering_samples, max_new_tokens=s.steering_max_new_tokens, temperature=s.steering_temperature,
                    margin_nats=s.coherence_margin_nats, min_distinct=s.min_distinct_fraction, min_coherent_share=s.min_coherent_share,
                    prepend_bos=pair.prepend_bos, seed=s.seed, log=log)
            by_position.append(entry)
        extra = None if pooled is None else {"label": "pooled over positions 0..k-1 (dominated by position 0; not the reference's readout)",
                                             "lens": lens_tokens(model, pooled, top_k, decode)}
    return {"read_model": s.read_model, "layer": layer, "ref_norm": ref_norm, "by_position": by_position,
            "sink": by_position[0] if by_position else None, "pooled_extra": extra}
