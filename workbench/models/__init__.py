"""Model loading: a small built-in registry of GGUF-shipped models plus HF ids / local dirs.

Registry models ship as GGUF files inside pip packages. On first use they are dequantised
to fp32 and converted once into a plain Hugging Face directory under the cache
(``$WORKBENCH_HOME`` or ``platformdirs.user_cache_dir("ft-workbench")``)::

    <root>/models/<name>/{model.safetensors, config.json, tokenizer files, workbench_manifest.json}

Every later load verifies the safetensors sha256 against the manifest and rebuilds a
corrupt cache. Models load with SDPA attention; pattern readers switch to eager with
:func:`workbench.hooked.eager_attention` (booting a TransformerLens bridge does it for good).

A tuned model against a base (our run folders, peft adapters, full checkpoints): :mod:`workbench.models.tuned`.
"""

from workbench.models.cache import cache_root, ensure_model, weights_hash
from workbench.models.load import LoadedModel, ModelInfo, load_model
from workbench.models.registry import (
    DEFAULT_MODEL,
    REGISTRY,
    RegistryEntry,
    known_models,
)
from workbench.models.tuned import LoadedPair, LoadedTuned, load_pair, load_tuned

__all__ = [
    "DEFAULT_MODEL", "REGISTRY", "RegistryEntry", "ModelInfo", "LoadedModel",
    "load_model", "ensure_model", "known_models", "weights_hash", "cache_root",
    "LoadedPair", "LoadedTuned", "load_pair", "load_tuned",
]
