"""Loading a base/tuned pair for the app (no streamlit here): run folders, peft adapters, model directories, HF ids.

The loading itself is the library's, :func:`workbench.models.tuned.load_pair` (studies and ``workbench diff`` use it
too). What only the app needs lives here: :class:`SharedPair`, the loaded pair as every browser session shares it
(a cache key and a lock), and the run-folder helpers of the sidebar.

The tuned side of a pair is one of: a **run folder** or one of our **adapter folders** (the base with the saved
intervention attached, one copy of the weights); a **peft adapter** folder or hub id (``adapter_config.json``;
merged into a copy of the base); a **full fine-tuned checkpoint** (model directory, registry name or Hugging
Face id), checked against the base by :class:`~workbench.pair.ModelPair`.

Every failure is a :class:`~workbench.errors.WorkbenchError` with a message that says what to do, so the
app can show it in the page instead of a traceback.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from workbench.models.tuned import LoadedPair, load_pair

__all__ = ["DEFAULT_BASE", "SharedPair", "default_tuned", "load_shared_pair", "run_folders", "runs_folder_problem"]

#: The app's default base model (the bundled real model).
DEFAULT_BASE = "smollm2-135m-instruct"


@dataclass
class SharedPair(LoadedPair):
    """A :class:`~workbench.models.tuned.LoadedPair` as the app serves it: loaded once, shared by every session.

    Attributes (beyond the LoadedPair's):
        key: identifies the pair in the app's caches (both specs, the device and both models' weight hashes).
        lock: serialises forward passes: attaching an intervention hooks the shared base weights, so two sessions
            must not run the pair at the same time.
    """

    key: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)


def load_shared_pair(base: str, tuned: str, device: str | None = None, dtype: torch.dtype | str | None = None) -> SharedPair:
    """:func:`~workbench.models.tuned.load_pair` (same arguments, same errors), with the app's key and a fresh lock."""
    loaded = load_pair(base, tuned, device, dtype)
    pair = loaded.pair
    key = hashlib.sha256(f"{loaded.base_spec}\0{loaded.tuned_spec}\0{loaded.device}\0{pair.base_info.weight_hash}\0"
                         f"{pair.tuned_info.weight_hash}".encode()).hexdigest()[:16]
    return SharedPair(**{f.name: getattr(loaded, f.name) for f in dataclasses.fields(LoadedPair)}, key=key)


def run_folders(runs_dir: str | os.PathLike) -> list[Path]:
    """Run folders under ``runs_dir`` that hold a saved intervention (``adapter/adapter.json``), newest
    first (by the adapter's modification time). A missing or unreadable ``runs_dir`` gives ``[]``
    (:func:`runs_folder_problem` says why)."""
    root = Path(runs_dir).expanduser()
    if runs_folder_problem(runs_dir) is not None:
        return []
    found = [p for p in root.iterdir() if p.is_dir() and (p / "adapter" / "adapter.json").is_file()]
    return sorted(found, key=lambda p: (p / "adapter" / "adapter.json").stat().st_mtime, reverse=True)


def runs_folder_problem(runs_dir: str | os.PathLike) -> str | None:
    """Why ``runs_dir`` cannot be searched for run folders (it does not exist, or is not a folder), with what
    to do next; ``None`` when it is a readable folder."""
    text = str(runs_dir).strip()
    if not text:
        return "the runs folder is empty: enter the folder that holds your run folders (default: runs)"
    root = Path(text).expanduser()
    fix = (f"create a run there with `workbench quickstart --runs-dir {text}` (or `make demo` for runs/), "
           "or enter an existing folder in the sidebar")
    if not root.exists():
        return f"the runs folder {text!r} does not exist: {fix}"
    if not root.is_dir():
        return f"the runs folder {text!r} is a file, not a folder: {fix}"
    try:
        next(root.iterdir(), None)
    except OSError as exc:
        return f"the runs folder {text!r} cannot be read ({exc.strerror or exc}): check its permissions or enter another folder"
    return None


def default_tuned(runs_dir: str | os.PathLike) -> str | None:
    """The newest run folder under ``runs_dir`` as a string, or ``None`` when there is none."""
    runs = run_folders(runs_dir)
    return str(runs[0]) if runs else None
