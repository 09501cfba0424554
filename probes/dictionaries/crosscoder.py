"""The crosscoder for model diffing: one sparse code for a base and a tuned model's activations at one site.

Source: Lindsey, Templeton, Marcus, Conerly, Batson, Olah 2024, "Sparse Crosscoders for Cross-Layer Features and Model
Diffing" (Transformer Circuits), §"Model diffing"; the BatchTopK variant and the reading of decoder norms from Minder,
Dumas, Juang, Chughtai, Nanda 2025 ("Robustly identifying concepts introduced during chat fine-tuning using
crosscoders", arXiv 2504.02922), with BatchTopK from Bussmann, Leask, Nanda 2024. METHODS.md, "Crosscoders".

* ``f = σ(W_enc^base a_base + W_enc^tuned a_tuned + b_enc)``, ``â_m = W_dec^m f + b_dec^m`` for m ∈ {base, tuned};
* L1 loss ``Σ_m ‖a_m − â_m‖² + λ Σ_i f_i (‖d_i^base‖ + ‖d_i^tuned‖)``; BatchTopK: ``k · B`` latents per batch, a
  threshold at inference (every detail, the input normalisation included, in :mod:`probes.dictionaries.base`);
* the decoder is not constrained: the two rows' norms are the reading. **Relative decoder norm**
  ``Δ_i = ‖d_i^tuned‖ / (‖d_i^base‖ + ‖d_i^tuned‖)`` (normalised units, so a uniform scale difference between the
  two models' activations does not move Δ): ≈ 0 base-only, ≈ 0.5 shared, ≈ 1 tuned-only. Minder et al. show that
  under L1 a Δ ≈ 1 can be an artifact (complete shrinkage, latent decoupling): check with
  :func:`probes.dictionaries.latent_scaling.latent_scaling`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from probes.dictionaries.base import DictionaryConfig, SparseDictionary, pair, register
from workbench.config import Probability, check_fields
from workbench.errors import ConfigError

#: the class names of :func:`classify_latents`, in order
LATENT_CLASSES = ("base_only", "shared", "tuned_only", "other")


@dataclass(frozen=True)
class CrosscoderConfig(DictionaryConfig):
    """A crosscoder's config: every field of :class:`probes.dictionaries.base.DictionaryConfig` (``d_model``,
    ``n_latents``, ``objective`` ``"batch_topk"`` | ``"l1"``, ``k``, ``l1_coefficient``, ...)."""


@register
class Crosscoder(SparseDictionary):
    """A two-stream sparse dictionary over (base, tuned) activations (module docstring).

    Example::

        cc = Crosscoder(CrosscoderConfig(d_model=576, n_latents=4096, k=32))
        history = train_dictionary(cc, store.batches(site, 1024, seed=0), steps=10_000, lr=1e-4, seed=0)
        delta = cc.relative_decoder_norm()
    """

    kind = "crosscoder"
    streams = ("base", "tuned")
    config_class = CrosscoderConfig

    def stack(self, batch: Mapping[str, Tensor]) -> Float[Tensor, "batch 2 d_model"]:
        """``[B, 2, d]``: base then tuned activations (model units). Raises: as :func:`probes.dictionaries.base.pair`."""
        base, tuned = pair(batch)
        return torch.stack([base, tuned], dim=1)

    @torch.no_grad()
    def relative_decoder_norm(self) -> Float[Tensor, " n_latents"]:
        """``Δ_i = ‖d_i^tuned‖ / (‖d_i^base‖ + ‖d_i^tuned‖)`` (normalised units; ``nan`` where both rows are zero)."""
        norms = self.decoder_norms()
        return norms[:, 1] / norms.sum(-1)

    @torch.no_grad()
    def decoder_cosine(self) -> Float[Tensor, " n_latents"]:
        """Cosine between each latent's base and tuned decoder rows (``nan`` where a row is zero): a shared latent
        whose direction changed has Δ ≈ 0.5 and a low cosine."""
        return torch.nn.functional.cosine_similarity(self.W_dec[:, 0], self.W_dec[:, 1], dim=-1, eps=0.0)


@dataclass(frozen=True)
class LatentClassThresholds:
    """Bands of Δ for :func:`classify_latents` (ours, after Minder et al.'s figures; configurable):
    base-only ``Δ ≤ base_only_max``, shared ``shared_min ≤ Δ ≤ shared_max``, tuned-only ``Δ ≥ tuned_only_min``,
    other otherwise (and for ``nan``).

    Raises:
        ConfigError: a value outside [0, 1] or bands out of order (``base_only_max < shared_min ≤ shared_max <
            tuned_only_min``).
    """

    base_only_max: Probability = 0.1
    shared_min: Probability = 0.4
    shared_max: Probability = 0.6
    tuned_only_min: Probability = 0.9

    def __post_init__(self) -> None:
        check_fields(self)
        if not self.base_only_max < self.shared_min <= self.shared_max < self.tuned_only_min:
            raise ConfigError(f"LatentClassThresholds must satisfy base_only_max < shared_min <= shared_max < "
                              f"tuned_only_min, got {self}")


def classify_latents(delta: Float[Tensor, " n_latents"], thresholds: LatentClassThresholds = LatentClassThresholds()
                     ) -> dict[str, Tensor]:
    """Latent indices per class of relative decoder norm: ``{"base_only", "shared", "tuned_only", "other"}`` → int64
    index tensors (every latent in exactly one; ``nan`` → ``"other"``). ``delta`` from
    :meth:`Crosscoder.relative_decoder_norm`; bands from ``thresholds``."""
    t = thresholds
    d = delta.detach().float().cpu()
    masks = {"base_only": d <= t.base_only_max, "shared": (d >= t.shared_min) & (d <= t.shared_max),
             "tuned_only": d >= t.tuned_only_min}
    masks["other"] = ~(masks["base_only"] | masks["shared"] | masks["tuned_only"])
    return {name: torch.nonzero(masks[name]).flatten() for name in LATENT_CLASSES}
