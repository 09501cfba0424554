"""Loading a tuned model against a base: our run / adapter folders, peft adapters, full fine-tuned checkpoints.

The tuned side of a pair is one of (checked in this order):

* a **run folder** (``adapter/adapter.json`` inside) or one of our **adapter folders** (``adapter.json`` +
  ``adapter.safetensors``): the base model with the saved intervention attached; both sides share one copy of
  the weights (``ModelPair(base, base, ..., tuned_intervention=...)``);
* the base spec itself: the base compared with itself;
* a **peft adapter** folder or Hugging Face id (``adapter_config.json`` + ``adapter_model.safetensors``; LoRA
  and every other weight tuner the installed peft loads and can merge: IA3, LoHa, LoKr, OFT, ...): loaded with
  ``peft.PeftModel.from_pretrained`` onto a *separate copy* of the base and merged (``merge_and_unload``) into a
  plain Hugging Face model. Merging, rather than switching the adapter on and off over shared weights, is
  deliberate: the tuned side is then an ordinary module tree, so hooks, TransformerLens bridges and cross-model
  patching see the same module names on both sides, every mergeable tuner works the same way, and the two
  sides can run without a lock. The cost is a second copy of the weights;
* a **full fine-tuned checkpoint** (a directory saved with ``save_pretrained`` or a Hugging Face id): loaded by
  :func:`workbench.models.load_model` and checked against the base by :class:`~workbench.pair.ModelPair`.

Which base a peft adapter may go on (the rule): the adapter's ``base_model_name_or_path`` is compared with the
base spec, its id and its path (also by last path component, case-insensitive, so
``HuggingFaceTB/SmolLM2-135M-Instruct`` matches the registry name ``smollm2-135m-instruct``). A different name is
only a warning (kept in :attr:`LoadedPair.warnings` and shown by :meth:`LoadedPair.describe`) as long as peft
would load it correctly; it is refused with :class:`MismatchError` naming both models when the adapter's tensors
do not fit the base (shapes, missing target modules, keys that match no module) or its vocabulary (the
tokenizer saved with the adapter, or its base's tokenizer when that is a local folder or cached hub id) differs.

Every failure is a :class:`~workbench.errors.WorkbenchError` whose message says what to do.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from workbench.artifacts import refuse_pickle_only
from workbench.data import tokenizer_fingerprint
from workbench.errors import (
    CheckpointError,
    ConfigError,
    MismatchError,
    ModelNotFoundError,
)
from workbench.models.load import (
    LoadedModel,
    _hub_files,
    _looks_like_path,
    hub_reachable,
    load_model,
)
from workbench.pair import ModelPair

__all__ = ["LoadedPair", "LoadedTuned", "adapter_dir", "available_devices", "load_pair", "load_tuned", "peft_adapter_dir"]

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model")
#: what is fetched of a hub adapter repo (not the trainer checkpoints some repos also hold)
_HUB_PATTERNS = ["adapter_config.json", "adapter_model*.safetensors", *_TOKENIZER_FILES, "merges.txt",
                 "special_tokens_map.json", "added_tokens.json"]


def available_devices() -> list[str]:
    """Devices a pair can run on, preferred first: ``["cuda", "cpu"]`` with a GPU, else ``["cpu"]``."""
    return ["cuda", "cpu"] if torch.cuda.is_available() else ["cpu"]


def adapter_dir(path: str | os.PathLike) -> Path | None:
    """The folder holding our ``adapter.json`` for a run folder or an adapter folder; ``None`` otherwise."""
    p = Path(path).expanduser()
    for candidate in (p / "adapter", p):
        if (candidate / "adapter.json").is_file():
            return candidate
    return None


@dataclass
class LoadedTuned:
    """The tuned side, as :func:`load_tuned` returns it.

    Attributes:
        model: the module to run as the tuned model (the base itself for ``kind == "intervention"``).
        tokenizer: the tuned side's own tokenizer, or ``None`` when it uses the base's.
        info: its :class:`~workbench.models.ModelInfo` (for a peft adapter: ``id`` is the adapter's folder or hub
            id, ``weight_hash`` is ``<base hash>+peft-<type>:sha256:<hash of the adapter files>``).
        kind: ``"intervention"`` (our run / adapter folder), ``"peft"`` (a merged peft adapter) or ``"model"``.
        intervention: our loaded intervention (``kind == "intervention"`` only).
        run_dir: the run folder when the intervention came from one.
        peft_type: the adapter's ``peft_type`` (``"LORA"``, ``"IA3"`` ...) for ``kind == "peft"``.
        warnings: what was accepted but is worth knowing (e.g. an adapter made for a same-shape other base).
    """

    model: Any
    tokenizer: Any
    info: Any
    kind: str
    intervention: Any = None
    run_dir: Path | None = None
    peft_type: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class LoadedPair:
    """A :class:`~workbench.pair.ModelPair` plus what an interface shows about it.

    Attributes:
        pair: the models (one copy of the weights when the tuned side is an intervention).
        base_spec, tuned_spec: what the user asked for.
        device: ``"cuda"`` or ``"cpu"``.
        tuned_kind: ``"intervention"`` (run / adapter folder), ``"peft"`` (peft adapter merged into a copy of the
            base) or ``"model"`` (full checkpoint).
        intervention: the loaded intervention (``None`` otherwise).
        run_dir: the run folder when the tuned side came from one.
        warnings: see :attr:`LoadedTuned.warnings`.
        peft_type: the peft adapter's type, for ``tuned_kind == "peft"``.
    """

    pair: Any
    base_spec: str
    tuned_spec: str
    device: str
    tuned_kind: str
    intervention: Any = None
    run_dir: Path | None = None
    warnings: list[str] = field(default_factory=list)
    peft_type: str | None = None

    @property
    def method(self) -> str | None:
        """The intervention's method name (``"lofit"``, ``"neft"``, ...) or ``None``."""
        return getattr(self.intervention, "method", None)

    def describe(self) -> str:
        """One line: base, tuned, how they share weights, and any warnings."""
        info = self.pair.base_info
        if self.tuned_kind == "intervention":
            n = sum(p.numel() for p in self.intervention.state_dict().values())
            how = f"{self.method} intervention from {self.tuned_spec} ({n:,} parameters) on the base weights"
        elif self.tuned_kind == "peft":
            how = f"peft {self.peft_type} adapter {self.pair.tuned_info.id} merged into a copy of the base"
        else:
            how = f"model {self.pair.tuned_info.id}"
        text = f"base {info.id} ({info.n_layers} layers × {info.n_heads} heads, d_model {info.d_model}) vs tuned: {how}; device {self.device}"
        return text + "".join(f"; warning: {w}" for w in self.warnings)


# ----------------------------------------------------------------------------- peft adapters
def peft_adapter_dir(spec: str) -> tuple[Path, str] | None:
    """``(local folder, id)`` when ``spec`` is a peft adapter (a folder or Hugging Face id with
    ``adapter_config.json``); ``None`` when it is not one. A hub adapter is downloaded (or, offline, taken from the
    local HF cache); a hub id that cannot be listed gives ``None`` and is left to :func:`load_model`, which fails
    fast with a clear message.

    Raises:
        CheckpointError: adapter weights only as pickle (``adapter_model.bin``), refused unopened.
    """
    local = Path(spec).expanduser()
    if local.is_dir():
        if not (local / "adapter_config.json").is_file():
            return None
        refuse_pickle_only([p.name for p in local.iterdir() if p.is_file()], f"peft adapter {spec!r}")
        return local.resolve(), str(local.resolve())
    if "/" not in spec or _looks_like_path(spec):
        return None
    offline = not hub_reachable()
    files = _hub_files(spec, offline)
    if not files or "adapter_config.json" not in files:
        return None
    refuse_pickle_only(files, f"Hugging Face repo {spec!r}")
    return _hub_snapshot(spec, offline), spec


def _hub_snapshot(name: str, offline: bool) -> Path:
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, local_files_only=offline, allow_patterns=_HUB_PATTERNS))
    except Exception as exc:  # noqa: BLE001 - network / cache errors of any kind
        raise ModelNotFoundError(f"peft adapter {name!r} could not be downloaded ({type(exc).__name__}: {exc}); "
                                 "check the id and your connection, or download it to a folder and pass that") from exc


def _same_name(a: str, names: list[str]) -> bool:
    def forms(s: str) -> set[str]:
        s = str(s).strip().rstrip("/\\").lower()
        return {s, s.replace("\\", "/").rsplit("/", 1)[-1]} if s else set()

    mine = forms(a)
    return any(mine & forms(n) for n in names if n)


def _tokenizer_of(where: str | Path) -> Any:
    """A tokenizer from a local folder or a locally cached hub id, else ``None`` (never downloads)."""
    from transformers import AutoTokenizer

    path = Path(str(where)).expanduser()
    if path.is_dir() and not any((path / f).is_file() for f in _TOKENIZER_FILES):
        return None
    if not path.is_dir() and ("/" not in str(where) or _looks_like_path(str(where))):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return AutoTokenizer.from_pretrained(str(path) if path.is_dir() else str(where), local_files_only=True)
    except Exception:  # noqa: BLE001 - unreadable / not cached: the vocabulary is then just not checked
        return None


def _adapter_hash(folder: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(folder.iterdir()):
        if f.is_file() and (f.name == "adapter_config.json" or (f.name.startswith("adapter_model") and f.suffix == ".safetensors")):
            h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()


def _load_peft(base: LoadedModel, folder: Path, adapter_id: str, base_spec: str) -> LoadedTuned:
    import peft
    from peft import PeftModel
    from peft.mapping import PEFT_TYPE_TO_CONFIG_MAPPING
    from peft.utils import get_peft_model_state_dict

    from workbench.artifacts import load_tensors, read_json

    info = base.info
    version = f"peft {peft.__version__}"
    meta = read_json(folder / "adapter_config.json")
    ptype = str(meta.get("peft_type", "")) if isinstance(meta, dict) else ""
    if ptype not in PEFT_TYPE_TO_CONFIG_MAPPING:
        raise CheckpointError(f"peft adapter {adapter_id!r} has adapter type {ptype or '(none)'!r}, which the installed "
                              f"{version} cannot load (known: {', '.join(sorted(getattr(k, 'value', str(k)) for k in PEFT_TYPE_TO_CONFIG_MAPPING))}); "
                              "upgrade peft or re-save the adapter with a supported tuner")
    weights = sorted(folder.glob("adapter_model*.safetensors"))
    if not weights:
        raise CheckpointError(f"peft adapter {adapter_id!r} has adapter_config.json but no adapter_model.safetensors; "
                              "save it again with save_pretrained")
    try:
        config = PEFT_TYPE_TO_CONFIG_MAPPING[ptype].from_pretrained(str(folder))
    except Exception as exc:  # noqa: BLE001 - a config this peft cannot parse
        raise CheckpointError(f"peft adapter {adapter_id!r}: {version} cannot read its {ptype} config "
                              f"({type(exc).__name__}: {exc}); upgrade peft or re-save the adapter") from exc
    if config.is_prompt_learning or ptype == "ADAPTION_PROMPT":
        raise ConfigError(f"peft adapter {adapter_id!r} is a {ptype} adapter: it adds virtual tokens instead of changing "
                          "weights, so it cannot be compared position by position with the base; use a weight tuner "
                          "(LoRA, IA3, LoHa, ...)")
    made_for = str(meta.get("base_model_name_or_path") or "")
    names = [base_spec, info.id, info.path, str(Path(info.path).resolve()) if info.path else ""]
    other = f"{made_for!r}" if made_for else "an unrecorded base"

    def mismatch(why: str) -> MismatchError:
        why = " ".join(why.split()).rstrip(".")
        return MismatchError(f"peft adapter {adapter_id!r} was made for {other}, not for the base {info.id!r}: {why}. "
                             "Load it onto the model it was trained on")

    own_tok = _tokenizer_of(folder)
    ref_tok = own_tok or (_tokenizer_of(made_for) if made_for and not _same_name(made_for, names) else None)
    if ref_tok is not None and info.tokenizer_hash and tokenizer_fingerprint(ref_tok) != info.tokenizer_hash:
        raise mismatch("the vocabularies differ")
    expected = {}
    for f in weights:
        expected.update(load_tensors(f))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # missing keys are checked below, as an error
        try:
            model = PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder))
        except RuntimeError as exc:  # size mismatch in load_state_dict (anything else: out of memory ...)
            if "size mismatch" not in str(exc):
                raise CheckpointError(f"peft adapter {adapter_id!r} could not be loaded with {version}: {str(exc)[:300]}") from exc
            raise mismatch(str(exc).strip().splitlines()[-1][:300]) from exc
        except (ValueError, KeyError, TypeError, AttributeError, NotImplementedError) as exc:  # target modules not found ...
            raise mismatch(f"{version} could not apply it ({type(exc).__name__}: {str(exc)[:300]})") from exc
    loaded = get_peft_model_state_dict(model, save_embedding_layers=False)  # False: no hub look-up of the base
    full = set(model.state_dict())  # whole-layer tensors (a resized embedding ...) load under their plain names
    extra, missing = sorted(set(expected) - set(loaded) - full), sorted(set(loaded) - set(expected))
    if extra or missing:
        raise mismatch(f"its tensors do not match the base's modules (in the adapter only: {extra[:3]}; "
                       f"in the model only: {missing[:3]})")
    try:
        merged = model.merge_and_unload()
    except Exception as exc:  # noqa: BLE001 - a tuner without an exact merge
        raise ConfigError(f"peft adapter {adapter_id!r} ({ptype}) cannot be merged into the weights with {version} "
                          f"({type(exc).__name__}: {exc}); use a tuner that merges (LoRA, IA3, LoHa, ...)") from exc
    merged.eval()
    notes = []
    if not _same_name(made_for, names):
        notes.append(f"the peft adapter was made for {other}, not {info.id!r}; its shapes fit"
                     + ("" if ref_tok is not None else " (vocabulary not checked: its base's tokenizer is not available here)"))
    tuned_info = dataclasses.replace(info, id=adapter_id,
                                     weight_hash=f"{info.weight_hash}+peft-{ptype.lower()}:sha256:{_adapter_hash(folder)}")
    return LoadedTuned(merged, own_tok, tuned_info, "peft", peft_type=ptype, warnings=notes)


# ----------------------------------------------------------------------------- the tuned side
def load_tuned(base_loaded: LoadedModel, tuned: str, device: str | None = None, dtype: torch.dtype | str | None = None,
               *, base_spec: str | None = None) -> LoadedTuned:
    """Load ``tuned`` against an already loaded base (see the module docstring for what ``tuned`` may be).

    Args:
        base_loaded: ``load_model(base)``'s result. For an intervention its model is bound (LoRA / full
            fine-tuning insert their parameters, switched off outside ``attach``); a peft adapter goes on a copy.
        tuned: run folder, our adapter folder, peft adapter folder or hub id, model directory / registry name /
            Hugging Face id.
        device, dtype: for a full checkpoint (``load_model``'s defaults when ``None``); the base's otherwise.
        base_spec: what the base was asked for as (``tuned == base_spec`` compares the base with itself; also used
            to recognise a peft adapter's base by name).

    Raises:
        ModelNotFoundError: nothing loadable at ``tuned`` (a folder that is none of the above, an uncached hub id
            offline, ...).
        MismatchError: an intervention or peft adapter made for another model (shapes, vocabulary, missing
            modules; the message names both models).
        CheckpointError: a corrupt adapter, weights only as pickle (refused unopened), or a peft adapter type the
            installed peft cannot load (the message names the type and the peft version).
        ConfigError: a peft adapter that cannot be merged into weights (prompt learning, tuners without a merge).
    """
    from workbench.methods import load_intervention

    model, _tok, info = base_loaded
    base_spec = base_spec if base_spec is not None else info.id
    adir = adapter_dir(tuned)
    if adir is not None:
        dev = next(model.parameters()).device
        intervention = load_intervention(adir, info).to(dev).eval()
        # methods whose parameters live inside the model (LoRA, full fine-tuning) insert them now, on the
        # plain Hugging Face modules, before a TransformerBridge rewires the model (the first analysis)
        intervention.bind(model)
        state = b"".join(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
                         for _, t in sorted(intervention.state_dict().items()))
        tuned_info = dataclasses.replace(info, id=f"{info.id}+{intervention.method}",
                                         weight_hash=f"{info.weight_hash}+{intervention.method}:sha256:{hashlib.sha256(state).hexdigest()}")
        return LoadedTuned(model, None, tuned_info, "intervention", intervention, adir.parent if adir.name == "adapter" else None)
    if tuned == base_spec:
        return LoadedTuned(model, None, info, "model")
    found = peft_adapter_dir(tuned)
    if found is not None:
        return _load_peft(base_loaded, found[0], found[1], base_spec)
    tdir = Path(tuned).expanduser()
    if tdir.is_dir() and not (tdir / "config.json").is_file():
        raise ModelNotFoundError(f"{tuned!r} is a folder but neither a run folder (no adapter/adapter.json), an adapter folder "
                                 "(no adapter.json), a peft adapter (no adapter_config.json) nor a saved model (no config.json); "
                                 "pick one of those")
    # load_model refuses pickle-only weights before loading and fails fast on an uncached hub id offline
    tuned_model, tuned_tok, tuned_info = load_model(tuned, device=device or next(model.parameters()).device, dtype=dtype)
    return LoadedTuned(tuned_model, tuned_tok, tuned_info, "model")


def load_pair(base: str, tuned: str, device: str | None = None, dtype: torch.dtype | str | None = None) -> LoadedPair:
    """Load ``base`` and ``tuned`` and check them as a :class:`~workbench.pair.ModelPair`.

    Args:
        base: registry name, model directory or Hugging Face id.
        tuned: run folder, our adapter folder, peft adapter (folder or hub id), or registry name / model
            directory / Hugging Face id of a full fine-tuned checkpoint.
        device: ``"cuda"`` / ``"cpu"``; ``None`` picks the first of :func:`available_devices`.
        dtype: ``None`` → float32; see :func:`workbench.models.load_model`.

    Returns:
        a :class:`LoadedPair`; ``.pair`` is the :class:`~workbench.pair.ModelPair`.

    Raises:
        ConfigError: an empty spec, a device that is not available, a peft adapter that cannot be merged.
        ModelNotFoundError: a model that cannot be loaded (the message lists what can be passed).
        MismatchError: an intervention or peft adapter made for another model, or a tuned model whose tokenizer,
            architecture or shapes differ from the base's.
        CheckpointError: a corrupt adapter, weights stored only as pickle (refused unopened, the message says how
            to convert them to safetensors), or a peft adapter type the installed peft cannot load.
    """
    base, tuned = (base or "").strip(), (tuned or "").strip()
    if not base:
        raise ConfigError("no base model: enter a registry name (e.g. smollm2-135m-instruct), a model directory or a Hugging Face id")
    if not tuned:
        raise ConfigError("no tuned model: enter a run folder (run `make demo` to create one), a peft adapter, a model directory "
                          "or a Hugging Face id")
    device = device or available_devices()[0]
    if device not in available_devices():
        raise ConfigError(f"device {device!r} is not available here; choose one of {available_devices()}")
    loaded = load_model(base, device=device, dtype=dtype)
    model, tok, info = loaded
    t = load_tuned(loaded, tuned, device, dtype, base_spec=base)
    pair = ModelPair(model, t.model, tok, info, t.info, tuned_tokenizer=t.tokenizer, tuned_intervention=t.intervention)
    return LoadedPair(pair, base, tuned, device, t.kind, t.intervention, t.run_dir, warnings=t.warnings, peft_type=t.peft_type)
