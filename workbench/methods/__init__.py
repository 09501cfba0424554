"""Method registry: each method lives in its own folder and registers itself on import.

``register_method("lofit", LofitConfig, LofitOffsets)`` makes the name known to the CLI, to
:func:`load_intervention` and to :func:`available_methods`. There is no central enum.

A trained intervention is saved as ``adapter.safetensors`` + ``adapter.json`` (:func:`save_intervention`); the JSON
names the method, so :func:`load_intervention` rebuilds it through this registry. (They live here, not in
:mod:`workbench.artifacts`, which the method folders import: the registry sits above the files it writes.)

What a method saves beyond its adapter (LoRA's standard peft adapter, CAFT's ablation) is declared on its
spec (``save_extras`` / ``load_extras``), so the generic train job and the app name no method.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from workbench.architecture import Dims
from workbench.artifacts import atomic_save_tensors, atomic_write_json, load_tensors, package_versions, read_json
from workbench.config import config_from_dict
from workbench.errors import CheckpointError, ConfigError, MismatchError
from workbench.registry import Registry

#: Version of the ``adapter.json`` layout :func:`save_intervention` writes.
ADAPTER_FORMAT_VERSION = 1

#: ``(run_dir, result, model, model_info) -> None``: write what the method keeps beyond ``run_dir/adapter/``
#: (``result`` is the :class:`~workbench.finetune.FinetuneResult` of training it; ``model`` the trained model).
SaveExtras = Callable[[Path, Any, Any, Any], None]
#: ``(run_dir, model_info) -> {name: object}``: what :data:`SaveExtras` (or the method's own trainer) left in a
#: run folder, loaded for ``model_info``'s model; ``{}`` when the folder holds none.
LoadExtras = Callable[[Path, Any], dict[str, Any]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, config dataclass, Intervention class and optional trainer and extras.

    ``trainer(model, dims, examples, config, *, train_config, pad_id, out_dir, eval_fn) -> (intervention,
    train_result, details)`` runs a method's full recipe (e.g. LoFiT's head selection, then offsets);
    methods without one are built from their config and trained with one ``fit()``.

    ``save_extras`` (:data:`SaveExtras`) writes what the method saves beyond its adapter into a run folder;
    ``load_extras`` (:data:`LoadExtras`) reads it back (e.g. for the app's views). Either may be ``None``: a
    method with no extras, or extras that another library loads (a peft adapter folder loads with
    ``PeftModel.from_pretrained`` and through :func:`workbench.models.tuned.load_pair`).
    """

    name: str
    config_cls: type
    intervention_cls: type
    trainer: Any = None
    save_extras: SaveExtras | None = None
    load_extras: LoadExtras | None = None


#: Every registered method (a second registration of a name must bring the same Intervention class).
METHODS: Registry[MethodSpec] = Registry("method", __name__, same=lambda a, b: a.intervention_cls is b.intervention_cls)


def register_method(name: str, config_cls: type, intervention_cls: type, trainer: Any = None, *,
                    save_extras: SaveExtras | None = None, load_extras: LoadExtras | None = None) -> None:
    """Register a method under ``name`` (optionally with a multi-step ``trainer`` and its extras' writer and reader).

    Raises:
        ConfigError: ``name`` is already registered to a different class.
    """
    METHODS.register(name, MethodSpec(name, config_cls, intervention_cls, trainer, save_extras, load_extras))


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` for ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    return METHODS.get(name)


def run_extras(run_dir: str | os.PathLike | None, model_info: Any, skip: str | None = None) -> dict[str, dict[str, Any]]:
    """``{method name: {extra name: object}}``: every registered method's extras found in ``run_dir`` (its
    ``load_extras``), methods with none left out; ``skip`` (e.g. the method of the run's own adapter) is not asked.
    A missing ``run_dir`` (``None`` or not a folder) has none.

    Raises:
        as the methods' ``load_extras`` raise (CheckpointError / MismatchError / ConfigError: stored extras that
        cannot be loaded onto this model).
    """
    if run_dir is None or not Path(run_dir).is_dir():
        return {}
    found = {}
    for spec in METHODS.specs():
        if spec.load_extras is not None and spec.name != skip:
            extras = spec.load_extras(Path(run_dir), model_info)
            if extras:
                found[spec.name] = extras
    return found


# --- saved interventions --------------------------------------------------------------------------------
def save_intervention(directory: str | os.PathLike, intervention: Any, model_info: Any) -> Path:
    """Save ``intervention`` as ``adapter.safetensors`` + ``adapter.json`` in ``directory``.

    The JSON records the method name, its config, the dimensions, and the model id and weight hash it
    was trained on, so that loading onto another model can be refused.
    """
    directory = Path(directory)
    atomic_save_tensors(directory / "adapter.safetensors", dict(intervention.state_dict()))
    atomic_write_json(
        directory / "adapter.json",
        {
            "format_version": ADAPTER_FORMAT_VERSION,
            "method": intervention.method,
            "config": intervention.config_dict(),
            "dims": intervention.dims.to_dict(),
            "model_id": model_info.id,
            "model_weight_hash": model_info.weight_hash,
            "versions": package_versions(),
        },
    )
    return directory


def load_intervention(directory: str | os.PathLike, model_info: Any, *, allow_other_model: bool = False) -> Any:
    """Rebuild a saved intervention for the model described by ``model_info``.

    Raises:
        CheckpointError: missing or corrupt files, or tensors that do not fit the config.
        MismatchError: the adapter was trained on a model with another weight hash (pass
            ``allow_other_model=True`` to override deliberately) or other dimensions.
    """
    directory = Path(directory)
    meta = read_json(directory / "adapter.json")
    if meta.get("model_weight_hash") != model_info.weight_hash and not allow_other_model:
        raise MismatchError(
            f"{directory} was trained on {meta.get('model_id')!r} (weights {meta.get('model_weight_hash')}), "
            f"not on {model_info.id!r} (weights {model_info.weight_hash}); load it onto the model it was trained on",
            hint="to transfer it on purpose, pass", settings=("allow_other_model",),
            python="load_intervention(..., allow_other_model=True)")
    try:
        saved = Dims.from_dict(meta["dims"])
    except (ConfigError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{directory}/adapter.json: unreadable dims ({exc})") from exc
    model_dims = Dims.coerce(model_info)
    bad = saved.mismatches(model_dims)
    if bad:
        raise MismatchError(f"{directory}: dimensions differ (adapter, model): {bad}")
    spec = get_method(meta["method"])
    # the model's dims agree on every saved field and also know those older adapters did not record
    intervention = spec.intervention_cls(config_from_dict(spec.config_cls, meta["config"]), model_dims)
    state = load_tensors(directory / "adapter.safetensors")
    try:
        intervention.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: tensors do not match the saved config ({exc})") from exc
    return intervention
