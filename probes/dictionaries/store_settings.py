"""The activation store's settings, file-format constants and identity checks (shared by the writer,
:mod:`probes.dictionaries.store_collect`, and the reader, :class:`probes.dictionaries.store.ActivationStore`; the
folder layout is described in :mod:`probes.dictionaries.store`)."""

from __future__ import annotations

import dataclasses
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import torch

from workbench.config import NonNegativeInt, PositiveInt, Range, check_fields, check_value
from workbench.errors import ConfigError
from workbench.sites import Site

FORMAT, FORMAT_VERSION, MANIFEST = "ft-workbench activation store", 1, "manifest.json"
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}
_INDEX_KEYS = ("token_id", "row", "pos")


@dataclass
class StoreSettings:
    """What :func:`collect_activations` stores and how it batches.

    Attributes:
        layers: decoder layers whose residual stream after the block (``blocks.{l}.hook_resid_post``) is stored.
        mlp_post: also store ``blocks.{l}.mlp.hook_post`` (MLP neuron activations, ``d_mlp`` wide) at those layers.
        dtype: ``"float32"`` or ``"bfloat16"`` on disk (bf16 halves the store; the reader returns float32).
        shard_tokens: tokens per shard file (the last shard holds the rest); collection holds one shard in memory.
        batch_size: rows per forward pass. Part of the store's identity: a resumed run must batch as the first did.
        max_length: tokens kept per row (BOS included), the rest cut.
        skip_first: drop position 0 of every row (the BOS when the model prepends one). The first position is an
            attention sink whose residual norm is tens of times the typical one; left in, it dominates a
            dictionary's reconstruction loss (Minder et al. 2025 and Kissane et al. 2024 train without it).

    Raises:
        ConfigError: a field of the wrong type or out of range (the message names it).
    """

    layers: list[NonNegativeInt]
    mlp_post: bool = False
    dtype: str = "float32"
    shard_tokens: PositiveInt = 65536
    batch_size: PositiveInt = 8
    max_length: PositiveInt = 128
    skip_first: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.layers, tuple):
            self.layers = list(self.layers)
        check_fields(self)
        if not self.layers:
            raise ConfigError(f"StoreSettings.layers must be a non-empty list of layer indices >= 0, got {self.layers!r}")
        if len(set(self.layers)) != len(self.layers):
            raise ConfigError(f"StoreSettings.layers names a layer twice: {self.layers!r}")
        if self.dtype not in _DTYPES:
            raise ConfigError(f"StoreSettings.dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        if self.skip_first and self.max_length < 2:
            raise ConfigError("StoreSettings.max_length must be >= 2 with skip_first (position 0 is dropped)")

    def sites(self) -> list[Site]:
        """The stored Sites, layer by layer (``hook_resid_post``, then ``mlp.hook_post`` when ``mlp_post``)."""
        hooks = ("hook_resid_post", "mlp.hook_post") if self.mlp_post else ("hook_resid_post",)
        return [Site(layer, h) for layer in self.layers for h in hooks]


def pair_identity(pair: Any) -> dict[str, dict[str, str]]:
    """``{"base": {...}, "tuned": {...}}`` with each model's ``id``, ``weight_hash`` (a tuned side made by an
    intervention or peft adapter includes the adapter's hash) and ``tokenizer_hash``, from the pair's ModelInfos."""
    return {role: {k: getattr(info, k, "") for k in ("id", "weight_hash", "tokenizer_hash")}
            for role, info in (("base", pair.base_info), ("tuned", pair.tuned_info))}


def _model_problems(stored: dict, want: dict) -> list[str]:
    """Differences in weights or tokenizer (ids are names, not identity: a model moved on disk is the same)."""
    return [f"{role} model {key} {stored.get(role, {}).get(key)!r} (stored) vs {want[role][key]!r}"
            for role in ("base", "tuned") for key in ("weight_hash", "tokenizer_hash")
            if stored.get(role, {}).get(key) != want[role][key]]


def _identity_problems(old: dict, new: dict) -> list[str]:
    problems = _model_problems(old.get("models", {}), new["models"])
    problems += [f"{k} {old.get(k)!r} (stored) vs {new[k]!r}" for k in ("format_version", "sites", "dtype", "corpus_sha256")
                 if old.get(k) != new[k]]
    problems += [f"settings.{k} {old.get('settings', {}).get(k)!r} (stored) vs {v!r}" for k, v in new["settings"].items()
                 if old.get("settings", {}).get(k) != v]
    return problems


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()



_EXPECT_KEYS = ("models", "sites", "dtype", "corpus_sha256", "prepend_bos")


def _expect_problems(m: dict, expect: dict) -> list[str]:
    """How the manifest ``m`` differs from what the caller expects (see :class:`ActivationStore`)."""
    fields = [f.name for f in dataclasses.fields(StoreSettings)]
    if not isinstance(expect, dict) or set(expect) - {*_EXPECT_KEYS, *fields}:
        raise ConfigError(f"expect must be a dict with keys among {[*_EXPECT_KEYS, *fields]}, got "
                          f"{sorted(expect) if isinstance(expect, dict) else type(expect).__name__}")
    problems = []
    for key, want in expect.items():
        if key == "models":
            want = pair_identity(want) if hasattr(want, "base_info") else want
            if not isinstance(want, dict) or not all(isinstance(want.get(r), dict) for r in want):
                raise ConfigError("expect['models'] must be a ModelPair or pair_identity(pair)'s dict")
            stored = m.get("models", {})
            problems += [f"{role} model {k} {stored.get(role, {}).get(k)!r} (stored) vs {v!r} (expected)"
                         for role, d in want.items() for k, v in d.items()
                         if k in ("weight_hash", "tokenizer_hash") and stored.get(role, {}).get(k) != v]
        elif key == "sites":
            names = [s.hook_name if isinstance(s, Site) else s for s in ([want] if isinstance(want, (str, Site)) else want)]
            if missing := [n for n in names if n not in m["sites"]]:
                problems.append(f"sites {missing} are not stored (stored: {m['sites']})")
        elif (got := m["settings"].get(key) if key in fields else m.get(key)) != want:
            problems.append(f"{key} {got!r} (stored) vs {want!r} (expected)")
    return problems


def _int(name: str, v: Any, low: int) -> int:
    """``v`` as an argument that must be an integer >= ``low`` (the config reader's check and message)."""
    return check_value(v, Annotated[int, Range(low=low)], name)
