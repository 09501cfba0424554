"""The difference SAE: a sparse autoencoder trained directly on ``a_tuned − a_base`` (METHODS.md, "Crosscoders",
"Difference SAE").

The same dictionary as the crosscoder with one input stream, ``diff = a_tuned − a_base``
(:mod:`probes.dictionaries.base`: encoder, BatchTopK with its inference threshold, AuxK, the input normalisation —
here of the *difference*, scaled so its mean squared norm is ``d_model``). As in Bussmann, Leask, Nanda 2024
("BatchTopK sparse autoencoders") and Gao et al. 2024, the decoder rows are kept at unit norm: renormalised after
every optimiser step, with the gradient component along each row removed before it (``unit_decoder``).

A latent's decoder row (:meth:`~probes.dictionaries.base.SparseDictionary.decoder_directions` ``("diff")``, model
units) is a direction the fine-tune adds to the residual stream on the tokens where it fires; it is read like a
crosscoder latent (max-activating contexts, logit lens of the row, steering the base model with it:
:mod:`probes.dictionaries.latents`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from jaxtyping import Float
from torch import Tensor

from probes.dictionaries.base import DictionaryConfig, SparseDictionary, pair, register


@dataclass(frozen=True)
class DiffSAEConfig(DictionaryConfig):
    """A difference SAE's config: the fields of :class:`probes.dictionaries.base.DictionaryConfig` (``objective``
    defaults to ``"batch_topk"``, which needs ``k``; ``decoder_init_norm`` is unused: the decoder has unit rows)."""


@register
class DiffSAE(SparseDictionary):
    """A one-stream sparse dictionary over ``a_tuned − a_base`` with a unit-norm decoder (module docstring)."""

    kind = "diff_sae"
    streams = ("diff",)
    config_class = DiffSAEConfig
    unit_decoder = True

    def stack(self, batch: Mapping[str, Tensor]) -> Float[Tensor, "batch 1 d_model"]:
        """``[B, 1, d]``: ``tuned − base`` (model units). Raises: as :func:`probes.dictionaries.base.pair`."""
        base, tuned = pair(batch)
        return (tuned - base)[:, None]
