"""Sparse dictionaries over both models' activations: crosscoders and difference SAEs (METHODS.md, "Crosscoders").

* :mod:`.store` — the activation store: :func:`collect_activations` streams a corpus through a ModelPair and writes
  chosen sites' activations as safetensors shards (resumable); :class:`ActivationStore` reads them with bounded memory.
* :mod:`.base` — what every dictionary shares (config, BatchTopK, input normalisation, loss); :mod:`.crosscoder` —
  :class:`Crosscoder`, relative decoder norms; :mod:`.sae` — :class:`DiffSAE` on ``a_tuned − a_base``;
  :mod:`.training` — :func:`train_dictionary`, :func:`evaluate_dictionary`; :mod:`.latent_scaling` — Latent Scaling
  (Minder et al. 2025); :mod:`.latents` — logit lens of decoder rows, max-activating tokens, steering;
  :mod:`.saving` — :func:`save_dictionary`, :func:`load_dictionary`.
"""

from probes.dictionaries.store import ActivationStore, StoreSettings, collect_activations, pair_identity
from probes.dictionaries.base import DictionaryConfig, DictionaryError, SparseDictionary, batch_topk_mask
from probes.dictionaries.crosscoder import Crosscoder, CrosscoderConfig, LatentClassThresholds, classify_latents
from probes.dictionaries.sae import DiffSAE, DiffSAEConfig
from probes.dictionaries.training import evaluate_dictionary, train_dictionary
from probes.dictionaries.latent_scaling import closed_form_beta, latent_scaling
from probes.dictionaries.latents import decoder_logit_lens, latent_steering_unit, max_activating, steer_with_latent
from probes.dictionaries.saving import DictionaryFileError, load_dictionary, save_dictionary

__all__ = ["ActivationStore", "StoreSettings", "collect_activations", "pair_identity",
           "Crosscoder", "CrosscoderConfig", "DictionaryConfig", "DictionaryError", "DictionaryFileError", "DiffSAE",
           "DiffSAEConfig", "LatentClassThresholds", "SparseDictionary", "batch_topk_mask", "classify_latents",
           "closed_form_beta", "decoder_logit_lens", "evaluate_dictionary", "latent_scaling", "latent_steering_unit",
           "load_dictionary", "max_activating", "save_dictionary", "steer_with_latent", "train_dictionary"]
