"""Loading a model: a registry name (from the cache), a local directory or a Hugging Face id, with its ModelInfo.

Attention: models load with PyTorch's fused SDPA attention by default (``attn_implementation="sdpa"``): it is what
training and every forward pass that does not read attention patterns use. Code that reads
``blocks.{l}.attn.hook_pattern`` (the TransformerLens bridge, the app's attention view) switches a model to eager
attention with :func:`workbench.hooked.eager_attention` / :func:`workbench.hooked.to_bridge`. SDPA and eager agree to
rounding in fp32: ~1e-8 on the tiny test model, 3.8e-5 on SmolLM2's logits (|logit| ≤ 28) (``tests/test_attention_path.py``).

Precision: ``dtype="bfloat16" | "float16" | "float32"`` on every path (registry, local directory, hub id, peft
adapter). Interventions keep their own parameters in fp32 and cast at the hook (see
:mod:`workbench.intervention`).

Models larger than one device: ``device_map="auto"`` (with ``max_memory`` / ``offload_folder``) or an explicit map
hands placement to accelerate's big-model inference; layers may sit on different GPUs, the CPU or disk.
``ModelInfo.device_map`` records the placement."""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from workbench.architecture import Dims, text_config
from workbench.artifacts import refuse_pickle_only
from workbench.data import tokenizer_fingerprint
from workbench.errors import CheckpointError, ConfigError, ModelNotFoundError
from workbench.models.cache import _ensure, hash_tensor, weights_hash
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
    tokenizer_hash: str = ""  # tokenizer_fingerprint() at load time; "" = not recorded (ModelPair skips the check)
    #: accelerate's placement ``{module: device}`` when loaded with ``device_map``; ``None`` = the whole model on one
    #: device (then left out of :meth:`to_dict`, so results written before this field existed are unchanged).
    device_map: dict[str, str] | None = dataclasses.field(default=None, hash=False)  # a dict: not hashable

    @property
    def dims(self) -> Dims:
        """The model's dimensions as a :class:`~workbench.architecture.Dims`."""
        return Dims.from_dict(self.to_dict())

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields (the dimensions flat: ``n_layers``, ``d_model`` ...);
        ``device_map`` only when the model was split (``load_model(device_map=...)``)."""
        d = dataclasses.asdict(self)
        if d["device_map"] is None:
            del d["device_map"]
        return d


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
    placed = getattr(model, "hf_device_map", None)
    full = model.config
    cfg = text_config(model)
    if prepend_bos is None:
        prepend_bos = bool(getattr(tok, "add_bos_token", False)) or "gemma" in str(
            getattr(cfg, "model_type", "")).lower()
    dims = Dims.of(model)
    return ModelInfo(
        id=id_, weight_hash=weight_hash, **{**dims.to_dict(), "d_vocab": int(cfg.vocab_size)},
        architecture=(getattr(full, "architectures", None) or [type(model).__name__])[0],
        prepend_bos=bool(prepend_bos), path=path, tokenizer_hash=tokenizer_fingerprint(tok),
        device_map={str(k): str(v) for k, v in placed.items()} if placed else None,
    )


def offloaded(model: Any) -> bool:
    """Whether some of ``model``'s weights are offloaded by accelerate (held on the ``meta`` device in the module,
    loaded from CPU memory or disk by accelerate's hooks at each forward)."""
    return any(p.device.type == "meta" for p in model.parameters())


def split_weights_hash(model: Any) -> str:
    """:func:`weights_hash` of a model placed with ``device_map`` (some weights offloaded, on ``meta`` in the module):
    the same hash the unsplit model gives, computed one module at a time (each offloaded module is brought to the
    CPU, hashed, and released; peak extra memory is the largest module)."""
    from accelerate.utils import align_module_device

    keys = set(model.state_dict(keep_vars=True))
    owner: dict[str, tuple[Any, str]] = {}
    for mod_name, module in model.named_modules(remove_duplicate=False):
        for attr, _ in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            key = f"{mod_name}.{attr}" if mod_name else attr
            if key in keys:
                owner[key] = (module, attr)
    h = hashlib.sha256()
    for key in sorted(keys):
        module, attr = owner[key]
        on_meta = getattr(module, attr).device.type == "meta"
        with align_module_device(module, torch.device("cpu")) if on_meta else contextlib.nullcontext():
            hash_tensor(h, key, getattr(module, attr))
    return "sha256:" + h.hexdigest()


_HUB: dict[str, bool] = {}  # the network probe's answer, once per process


def hub_reachable(timeout_s: float = 2.0) -> bool:
    """Whether the Hugging Face hub can be reached: ``False`` when ``HF_HUB_OFFLINE`` / ``TRANSFORMERS_OFFLINE``
    is set, else one HEAD request to the endpoint (the hub's own HTTP session, so proxies apply) with a short
    timeout, made once per process. Offline, hub ids load from the local HF cache only, so an id that is not
    cached fails in seconds instead of after the hub client's ~50 s of retries."""
    from huggingface_hub import constants

    if constants.is_offline_mode() or any(os.environ.get(v, "").upper() in {"1", "ON", "YES", "TRUE"}
                                          for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")):
        return False
    if "reachable" not in _HUB:
        _HUB["reachable"] = _probe_hub(timeout_s)
    return _HUB["reachable"]


def _probe_hub(timeout_s: float) -> bool:
    from huggingface_hub import constants
    from huggingface_hub.utils import get_session

    try:
        get_session().head(constants.ENDPOINT, timeout=timeout_s)
        return True
    except Exception:  # noqa: BLE001 - any failure means offline: DNS failure, refused or timed-out connection, OfflineModeIsEnabled ...
        return False


def _dir_files(path: str | os.PathLike) -> list[str]:
    return [p.name for p in Path(path).iterdir() if p.is_file()]


def _hub_files(name: str, offline: bool) -> list[str] | None:
    """Top-level files of hub repo ``name`` (the cached snapshot when offline); ``None`` when unknown."""
    try:
        if offline:
            from huggingface_hub import snapshot_download

            return _dir_files(snapshot_download(name, local_files_only=True))
        from huggingface_hub import HfApi

        return list(HfApi().list_repo_files(name))
    except Exception:  # noqa: BLE001 - not cached / not found / no network: from_pretrained reports it
        return None


def _looks_like_path(name: str) -> bool:
    return (name.startswith(("/", ".", "~")) or "\\" in name or name.count("/") > 1
            or os.path.exists(os.path.expanduser(name)))


def check_model_name(name_or_path: str | os.PathLike) -> None:
    """Refuse, without loading anything, a model :func:`load_model` would refuse before loading: not a built-in
    name, an existing directory or a Hugging Face id; a directory without ``config.json`` or holding its weights
    only as pickle; a hub id neither cached nor reachable. (A launcher checks this before it starts processes.)

    Raises:
        ModelNotFoundError, CheckpointError: with :func:`load_model`'s message.
    """
    name = os.fspath(name_or_path)
    local = Path(name).expanduser()
    if name in REGISTRY:
        return
    if local.is_dir():
        refuse_pickle_only(_dir_files(local), f"directory {str(local)!r}")
        if not (local / "config.json").is_file():
            raise ModelNotFoundError(f"Directory {str(local)!r} does not hold a loadable causal LM and tokenizer (no config.json; "
                                     "save both with save_pretrained)")
    elif "/" not in name or _looks_like_path(name):
        raise _unknown(name)
    elif not hub_reachable() and _hub_files(name, offline=True) is None:
        raise _unknown(name, FileNotFoundError("not in the local HF cache"), offline=True)


#: Attention implementations :func:`load_model` accepts (transformers' names).
ATTN_IMPLEMENTATIONS = ("sdpa", "eager")


def load_model(name_or_path: str | os.PathLike = DEFAULT_MODEL, device: str | torch.device | None = None,
               dtype: torch.dtype | str | None = None, *, attn_implementation: str = "sdpa",
               device_map: str | dict[str, Any] | None = None, max_memory: dict[Any, Any] | None = None,
               offload_folder: str | os.PathLike | None = None) -> LoadedModel:
    """Load a model and tokenizer in eval mode (SDPA attention unless ``attn_implementation="eager"``).

    Args:
        name_or_path: a registry name (see :func:`known_models`), a local directory saved
            with ``save_pretrained``, or a Hugging Face id ``owner/name``.
        device: ``None`` → ``"cuda"`` if available else ``"cpu"``.
        dtype: ``None`` → float32; a ``torch.dtype`` or ``"float32"``/``"bfloat16"``/``"float16"``.
        attn_implementation: ``"sdpa"`` (default: fused attention, for training and every forward pass that does
            not read attention patterns) or ``"eager"``. Pattern readers switch with
            :func:`workbench.hooked.eager_attention`, so ``"eager"`` here is only needed to start eager.
        device_map: ``None`` → the whole model on ``device``. Otherwise accelerate's big-model placement
            (``"auto"``, ``"balanced"``, ``"sequential"`` or ``{module name: device | "cpu" | "disk"}``), passed to
            ``from_pretrained``; ``device`` is then ignored and ``info.device_map`` records the placement. Hooks,
            interventions and patching move what they add to each layer's device.
        max_memory: with ``device_map``: ``{0: "20GiB", "cpu": "60GiB"}``-style limits per device.
        offload_folder: with ``device_map``: where weights placed on ``"disk"`` are written.
    Returns:
        ``LoadedModel(model, tokenizer, info)``. For registry models ``info.weight_hash`` is
        the hash of the cached fp32 weights (from the verified manifest); otherwise it is
        :func:`weights_hash` of the model as loaded.
    Raises:
        ModelNotFoundError: unknown name / missing directory / hub unreachable or repo not
            found, or a registry model's package is not installed (message has the pip command).
            With the hub unreachable (:func:`hub_reachable`) an uncached hub id fails in seconds.
        CheckpointError: a directory or hub repo (model or peft adapter) holding its weights only as
            pickle (``pytorch_model.bin``, ``*.pt`` ...): refused before anything is unpickled.
            A damaged or truncated safetensors file in a local directory.
        ConfigError: unsupported ``dtype`` or ``attn_implementation``; ``max_memory`` / ``offload_folder``
            without ``device_map``.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    name = os.fspath(name_or_path)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tdtype = _resolve_dtype(dtype)
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ConfigError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}, got {attn_implementation!r}")
    if device_map is None and (max_memory is not None or offload_folder is not None):
        raise ConfigError("max_memory / offload_folder need device_map (e.g. device_map='auto')")
    kw: dict[str, Any] = dict(attn_implementation=attn_implementation, dtype=tdtype)
    if device_map is not None:
        kw.update(device_map=device_map, max_memory=max_memory,
                  offload_folder=None if offload_folder is None else os.fspath(offload_folder))

    def place(model: Any) -> Any:  # accelerate has placed a device-mapped model already
        return (model if device_map is not None else model.to(device)).eval()

    if name in REGISTRY:
        path, man = _ensure(name)
        model = AutoModelForCausalLM.from_pretrained(str(path), **kw)
        tok = AutoTokenizer.from_pretrained(str(path))
        model = place(model)
        return LoadedModel(model, tok, _info(model, tok, name, str(path), man["weight_hash"],
                                             REGISTRY[name].prepend_bos))

    local = Path(name).expanduser()
    if local.is_dir():
        refuse_pickle_only(_dir_files(local), f"directory {str(local)!r}")
        from safetensors import SafetensorError

        try:
            model = AutoModelForCausalLM.from_pretrained(str(local), use_safetensors=True, **kw)
            tok = AutoTokenizer.from_pretrained(str(local))
        except SafetensorError as e:
            raise CheckpointError(
                f"Directory {str(local)!r}: a safetensors weights file is damaged or incomplete (truncated copy or "
                f"interrupted download?): {e}. Copy or save the model again (save_pretrained).") from e
        except (OSError, ValueError) as e:
            raise ModelNotFoundError(
                f"Directory {str(local)!r} does not hold a loadable causal LM and tokenizer "
                f"(save both with save_pretrained): {type(e).__name__}: {e}") from e
        id_, path = str(local.resolve()), str(local.resolve())
    elif "/" not in name or _looks_like_path(name):
        raise _unknown(name)  # fail fast: a typo of a registry name or a missing path
    else:
        offline = not hub_reachable()
        files = _hub_files(name, offline)
        if files is not None:
            refuse_pickle_only(files, f"Hugging Face repo {name!r}")
        try:
            # adapter_kwargs: transformers does not pass local_files_only on to its peft-adapter lookup (it would retry)
            model = AutoModelForCausalLM.from_pretrained(name, local_files_only=offline, use_safetensors=True,
                                                         adapter_kwargs={"local_files_only": offline}, **kw)
            tok = AutoTokenizer.from_pretrained(name, local_files_only=offline)
        except Exception as e:  # hub errors are OSError/ValueError/httpx subclasses
            raise _unknown(name, e, offline=offline) from e
        id_, path = name, str(getattr(model.config, "_name_or_path", "") or name)
        with contextlib.suppress(Exception):
            from huggingface_hub import snapshot_download

            path = snapshot_download(name, local_files_only=True)
    model = place(model)
    digest = split_weights_hash(model) if offloaded(model) else weights_hash(model)
    return LoadedModel(model, tok, _info(model, tok, id_, path, digest, None))
