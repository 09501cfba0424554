"""Loading a model: a registry name (from the cache), a local directory or a Hugging Face id, with its ModelInfo.

Models are always loaded with eager attention so that they match TransformerLens numerically."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from workbench.architecture import Dims, text_config
from workbench.errors import ConfigError, ModelNotFoundError
from workbench.models.cache import _ensure, weights_hash
from workbench.models.registry import DEFAULT_MODEL, REGISTRY, _unknown

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ModelInfo:
    """Static description of a loaded model (dimensions, provenance, BOS convention).

    The dimension fields are flat (``info.n_layers``; ``to_dict()`` keeps them flat for ``results.json``);
    :attr:`dims` gives them as the library's one :class:`~workbench.architecture.Dims`.
    """

    id: str
    weight_hash: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_head: int
    d_model: int
    d_mlp: int
    d_vocab: int
    architecture: str
    prepend_bos: bool
    path: str

    @property
    def dims(self) -> Dims:
        """The model's dimensions as a :class:`~workbench.architecture.Dims`."""
        return Dims.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields (the dimensions flat: ``n_layers``, ``d_model`` ...)."""
        return dataclasses.asdict(self)


class LoadedModel(NamedTuple):
    """``model, tokenizer, info = load_model(...)``."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    info: ModelInfo


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- loading
def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).removeprefix("torch.").lower()
    if key not in _DTYPES:
        raise ConfigError(f"Unsupported dtype {dtype!r}; use one of float32, bfloat16, float16")
    return _DTYPES[key]


def _info(model: Any, tok: Any, id_: str, path: str, weight_hash: str,
          prepend_bos: bool | None) -> ModelInfo:
    full = model.config
    cfg = text_config(model)
    if prepend_bos is None:
        prepend_bos = bool(getattr(tok, "add_bos_token", False)) or "gemma" in str(
            getattr(cfg, "model_type", "")).lower()
    dims = Dims.of(model)
    return ModelInfo(
        id=id_, weight_hash=weight_hash, **{**dims.to_dict(), "d_vocab": int(cfg.vocab_size)},
        architecture=(getattr(full, "architectures", None) or [type(model).__name__])[0],
        prepend_bos=bool(prepend_bos), path=path,
    )


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or os.path.exists(os.path.expanduser(name)))


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None) -> LoadedModel:
    """Load a model and tokenizer in eval mode with eager attention.

    Args:
        name_or_path: a registry name (see :func:`known_models`), a local directory saved
            with ``save_pretrained``, or a Hugging Face id ``owner/name``.
        device: ``None`` → ``"cuda"`` if available else ``"cpu"``.
        dtype: ``None`` → float32; a ``torch.dtype`` or ``"float32"``/``"bfloat16"``/``"float16"``.
    Returns:
        ``LoadedModel(model, tokenizer, info)``. For registry models ``info.weight_hash`` is
        the hash of the cached fp32 weights (from the verified manifest); otherwise it is
        :func:`weights_hash` of the model as loaded.
    Raises:
        ModelNotFoundError: unknown name / missing directory / hub unreachable or repo not
            found, or a registry model's package is not installed (message has the pip command).
        ConfigError: unsupported ``dtype``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = os.fspath(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tdtype = _resolve_dtype(dtype)
    kw = dict(attn_implementation="eager", dtype=tdtype)

    if name in REGISTRY:
        path, man = _ensure(name)
        model = AutoModelForCausalLM.from_pretrained(str(path), **kw)
        tok = AutoTokenizer.from_pretrained(str(path))
        model = model.to(device).eval()
        return LoadedModel(model, tok, _info(model, tok, name, str(path), man["weight_hash"],
                                             REGISTRY[name].prepend_bos))

    local = Path(name).expanduser()
    if local.is_dir():
        try:
            model = AutoModelForCausalLM.from_pretrained(str(local), **kw)
            tok = AutoTokenizer.from_pretrained(str(local))
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(
                f"Directory {str(local)!r} does not hold a loadable causal LM and tokenizer "
                f"(save both with save_pretrained): {type(e).__name__}: {e}") from e
        id_, path = str(local.resolve()), str(local.resolve())
    elif "/" not in name or _looks_like_path(name):
        raise _unknown(name)  # fail fast: a typo of a registry name or a missing path
    else:
        try:
            model = AutoModelForCausalLM.from_pretrained(name, **kw)
            tok = AutoTokenizer.from_pretrained(name)
        except Exception as e:  # hub errors are OSError/ValueError/httpx subclasses
            raise _unknown(name, e) from e
        id_, path = name, str(getattr(model.config, "_name_or_path", "") or name)
        with contextlib.suppress(Exception):
            from huggingface_hub import snapshot_download

            path = snapshot_download(name, local_files_only=True)
    model = model.to(device).eval()
    return LoadedModel(model, tok, _info(model, tok, id_, path, weights_hash(model), None))
