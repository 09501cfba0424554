"""Artifacts: atomic writes, tensors as safetensors, JSON, and the results record.

Every file is written to a temporary sibling and moved into place with ``os.replace``, so a killed
process leaves either the old file or the new one, never half of one. Weights go through safetensors
only (no pickle anywhere). A saved intervention (``adapter.safetensors`` + ``adapter.json``) is written and rebuilt
by :func:`workbench.methods.save_intervention` / :func:`~workbench.methods.load_intervention`, next to the method
registry that knows each method's classes.
"""

from __future__ import annotations

import datetime as _dt
import importlib.metadata
import json
import os
import platform
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from workbench.errors import CheckpointError

_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK  # what open() would have given; mkstemp makes 0600
_PACKAGES = ("torch", "transformers", "transformer-lens", "nnsight", "peft", "safetensors", "ft-workbench")


# --- atomic files ---------------------------------------------------------------------------------
def _atomic(path: str | os.PathLike, write: Any) -> Path:
    """Call ``write(tmp_path)`` on a temp file beside ``path``, then move it into place (``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically (temp file in the same folder + ``os.replace``)."""

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return _atomic(path, write)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically."""
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n").encode())


def atomic_save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    """Save a flat dict of tensors with safetensors, atomically."""
    return _atomic(path, lambda tmp: save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=metadata))


# --- refusing pickle checkpoints (unpickling can run arbitrary code) -------------------------------
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
_NOT_WEIGHTS = {"training_args.bin", "optimizer.pt", "scheduler.pt", "scaler.pt"}  # trainer state, not weights
_CONVERT = {
    "model": "AutoModelForCausalLM.from_pretrained(d).save_pretrained(d, safe_serialization=True)",
    "adapter": "PeftModel.from_pretrained(base, d).save_pretrained(d, safe_serialization=True)",
    "tensors": "safetensors.torch.save_file(torch.load(f, weights_only=True), 'adapter.safetensors')",
}


def pickle_error(where: str, pickles: list[str], kind: str) -> CheckpointError:
    """The one message for weights found only as pickle (``kind``: ``model`` / ``adapter`` / ``tensors``)."""
    return CheckpointError(
        f"{where} holds its weights only as pickle ({', '.join(pickles[:3])}) and no .safetensors; the workbench "
        "loads safetensors only, since unpickling a file can run arbitrary code, and has not opened it. Convert it "
        f"once, in an environment you trust: {_CONVERT[kind]} (then delete the pickle)")


def refuse_pickle_only(files: Any, where: str) -> None:
    """Raise :class:`CheckpointError` when a model or peft adapter folder's top-level ``files`` (names) hold the
    weights only as pickle: called before anything is loaded. Safetensors beside trainer pickles
    (``training_args.bin``, ``optimizer.pt``) pass; a folder with no weights at all is left to the loader."""
    names = {str(f) for f in files if "/" not in str(f)}
    pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES) and n not in _NOT_WEIGHTS
                     and not n.startswith("rng_state"))
    if not pickles:
        return
    if "adapter_config.json" in names and "adapter_model.safetensors" not in names:
        raise pickle_error(where, pickles, "adapter")
    if not any(n.endswith(".safetensors") or n == "model.safetensors.index.json" for n in names):
        raise pickle_error(where, pickles, "model")


def load_tensors(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a safetensors file (never a pickle: a ``torch.save`` file is refused, not opened).

    Raises:
        CheckpointError: the file is missing or corrupt (truncated, bad header), or only a pickle sibling
            (``adapter.pt`` / ``.bin`` ...) or a pickle under this name exists (the message says how to convert).
    """
    path = Path(path)
    if not path.is_file():
        pickles = [path.with_suffix(sfx).name for sfx in PICKLE_SUFFIXES if path.with_suffix(sfx).is_file()]
        if pickles:
            raise pickle_error(str(path.parent), pickles, "tensors")
        raise CheckpointError(f"{path} does not exist")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        with open(path, "rb") as f:
            head = f.read(4)
        if head[:1] == b"\x80" or head == b"PK\x03\x04":  # pickle protocol 2+ / torch.save zip
            raise pickle_error(str(path), [path.name], "tensors") from exc
        raise CheckpointError(f"{path} is corrupt or not a safetensors file ({exc}); re-create it") from exc


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file.

    Raises:
        CheckpointError: missing or unparsable file.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError as exc:
        raise CheckpointError(f"{path} does not exist") from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is corrupt (not valid JSON: {exc})") from exc


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    if hasattr(obj, "item"):
        return obj.item()
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


# --- results record -------------------------------------------------------------------------------
def package_versions() -> dict[str, str]:
    """Installed versions of the packages that determine our numbers."""
    out = {"python": platform.python_version()}
    for name in _PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def git_state(repo: str | os.PathLike | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the repository holding this package."""
    repo = Path(repo) if repo else Path(__file__).resolve().parents[1]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo, capture_output=True, text=True, check=True).stdout.strip())
        return {"commit": commit, "dirty": dirty}
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}


def results_record(config: Any, metrics: dict[str, Any], models: dict[str, Any], device: str, started: float, finished: float) -> dict[str, Any]:
    """The ``results.json`` layout: ``{run_info, meta_info, metrics}``.

    Args:
        config: the study / job config (a dataclass with ``to_dict`` / ``asdict``-able, or a dict).
        metrics: the measured numbers.
        models: role -> ModelInfo (e.g. ``{"base": info, "tuned": info}``).
        device: where it ran.
        started, finished: ``time.time()`` stamps (seconds).
    """
    iso = lambda t: _dt.datetime.fromtimestamp(t, tz=_dt.timezone.utc).isoformat()  # noqa: E731
    return {
        "run_info": {
            "config": config,
            **git_state(),
            "started": iso(started),
            "finished": iso(finished),
            "wall_time_s": round(finished - started, 2),
        },
        "meta_info": {
            "versions": package_versions(),
            "models": {role: info.to_dict() for role, info in models.items()},
            "device": device,
            "platform": platform.platform(),
            "torch_threads": torch.get_num_threads(),
        },
        "metrics": metrics,
    }
