"""Loading a base/tuned pair for the app (no streamlit here): run folders, model directories, HF ids.

The tuned side of a pair is one of:

* a **run folder** (the output of ``workbench quickstart`` or any job that wrote ``adapter/``): the base
  model with the saved intervention attached. Both sides share one copy of the weights
  (``ModelPair(base, base, ..., tuned_intervention=...)``);
* an **adapter folder** itself (``adapter.json`` + ``adapter.safetensors``): the same;
* anything :func:`workbench.models.load_model` accepts (registry name, local model directory saved with
  ``save_pretrained``, Hugging Face id): a second model, checked against the base by
  :class:`~workbench.pair.ModelPair`.

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
from typing import Any

import torch

from workbench.errors import ConfigError, ModelNotFoundError

#: The app's default base model (the bundled real model).
DEFAULT_BASE = "smollm2-135m-instruct"


def available_devices() -> list[str]:
    """Devices the app can run on, preferred first: ``["cuda", "cpu"]`` with a GPU, else ``["cpu"]``."""
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def adapter_dir(path: str | os.PathLike) -> Path | None:
    """The folder holding ``adapter.json`` for a run folder or an adapter folder; ``None`` otherwise."""
    p = Path(path).expanduser()
    for candidate in (p / "adapter", p):
        if (candidate / "adapter.json").is_file():
            return candidate
    return None


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


@dataclass
class LoadedPair:
    """A :class:`~workbench.pair.ModelPair` plus what the app shows about it.

    Attributes:
        pair: the models (one copy of the weights when the tuned side is an intervention).
        base_spec, tuned_spec: what the user asked for.
        device: ``"cuda"`` or ``"cpu"``.
        tuned_kind: ``"intervention"`` (run / adapter folder) or ``"model"``.
        intervention: the loaded intervention (``None`` for a tuned model).
        run_dir: the run folder when the tuned side came from one.
        key: a short string identifying this pair (used as a cache key by the app).
        lock: serialises forward passes: attaching an intervention hooks the shared base weights, so
            two sessions must not run the pair at the same time.
    """

    pair: Any
    base_spec: str
    tuned_spec: str
    device: str
    tuned_kind: str
    intervention: Any = None
    run_dir: Path | None = None
    key: str = ""
    lock: Any = field(default_factory=threading.Lock, repr=False)

    @property
    def method(self) -> str | None:
        """The intervention's method name (``"lofit"``, ``"neft"``, ...) or ``None``."""
        return getattr(self.intervention, "method", None)

    def describe(self) -> str:
        """One line: base, tuned and how they share weights."""
        info = self.pair.base_info
        if self.tuned_kind == "intervention":
            n = sum(p.numel() for p in self.intervention.state_dict().values())
            how = f"{self.method} intervention from {self.tuned_spec} ({n:,} parameters) on the base weights"
        else:
            how = f"model {self.pair.tuned_info.id}"
        return f"base {info.id} ({info.n_layers} layers × {info.n_heads} heads, d_model {info.d_model}) vs tuned: {how}; device {self.device}"


def load_pair(base: str, tuned: str, device: str | None = None) -> LoadedPair:
    """Load ``base`` and ``tuned`` (see the module docstring for what ``tuned`` may be).

    Args:
        base: registry name, model directory or Hugging Face id.
        tuned: run folder, adapter folder, or registry name / model directory / Hugging Face id.
        device: ``"cuda"`` / ``"cpu"``; ``None`` picks the first of :func:`available_devices`.

    Raises:
        ConfigError: an empty spec, or a device that is not available.
        ModelNotFoundError: a model that cannot be loaded (the message lists what can be passed).
        MismatchError: an intervention trained on another model, or a tuned model whose tokenizer,
            architecture or shapes differ from the base's.
        CheckpointError: a corrupt adapter, or weights stored only as pickle (``*.bin`` / ``*.pt``; refused
            unopened, the message says how to convert them to safetensors).
    """
    from workbench.artifacts import load_intervention
    from workbench.models import load_model
    from workbench.pair import ModelPair

    base, tuned = (base or "").strip(), (tuned or "").strip()
    if not base:
        raise ConfigError("no base model: enter a registry name (e.g. smollm2-135m-instruct), a model directory or a Hugging Face id")
    if not tuned:
        raise ConfigError("no tuned model: enter a run folder (run `make demo` to create one), a model directory or a Hugging Face id")
    device = device or available_devices()[0]
    if device not in available_devices():
        raise ConfigError(f"device {device!r} is not available here; choose one of {available_devices()}")
    model, tok, info = load_model(base, device=device)
    key = hashlib.sha256(f"{base}\0{tuned}\0{device}\0{info.weight_hash}".encode()).hexdigest()[:16]
    adir = adapter_dir(tuned)
    if adir is not None:
        intervention = load_intervention(adir, info).to(device).eval()
        # methods whose parameters live inside the model (LoRA, full fine-tuning) insert them now, on the
        # plain Hugging Face modules, before a TransformerBridge rewires the model (the first analysis)
        intervention.bind(model)
        state = b"".join(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                         for _, t in sorted(intervention.state_dict().items()))
        tuned_info = dataclasses.replace(info, id=f"{info.id}+{intervention.method}",
                                         weight_hash=f"{info.weight_hash}+{intervention.method}:sha256:{hashlib.sha256(state).hexdigest()}")
        pair = ModelPair(model, model, tok, info, tuned_info, tuned_intervention=intervention)
        run_dir = adir.parent if adir.name == "adapter" else None
        return LoadedPair(pair, base, tuned, device, "intervention", intervention, run_dir, key)
    if tuned == base:
        pair = ModelPair(model, model, tok, info, info)
        return LoadedPair(pair, base, tuned, device, "model", key=key)
    tdir = Path(tuned).expanduser()
    if tdir.is_dir() and not any((tdir / f).is_file() for f in ("config.json", "adapter_config.json")):
        raise ModelNotFoundError(f"{tuned!r} is a folder but neither a run folder (no adapter/adapter.json), an adapter folder "
                                 "(no adapter.json), a peft adapter (no adapter_config.json) nor a saved model (no config.json); "
                                 "pick one of those")
    # a model directory or peft adapter goes through load_model, which refuses pickle-only weights before loading
    tuned_model, tuned_tok, tuned_info = load_model(tuned, device=device)
    pair = ModelPair(model, tuned_model, tok, info, tuned_info, tuned_tokenizer=tuned_tok)
    return LoadedPair(pair, base, tuned, device, "model", key=key)
