"""Method registry: each method lives in its own folder and registers itself on import.

``register_method("lofit", LofitConfig, LofitOffsets)`` makes the name known to the CLI, to
:func:`workbench.artifacts.load_intervention` and to :func:`available_methods`. There is no central enum.
"""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

_REGISTRY: dict[str, "MethodSpec"] = {}


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its name, config dataclass, Intervention class and optional trainer.

    ``trainer(model, dims, examples, config, *, train_config, pad_id, out_dir, eval_fn) -> (intervention,
    train_result, details)`` runs a method's full recipe (e.g. LoFiT's head selection, then offsets);
    methods without one are built from their config and trained with one ``fit()``.
    """

    name: str
    config_cls: type
    intervention_cls: type
    trainer: Any = None


def register_method(name: str, config_cls: type, intervention_cls: type, trainer: Any = None) -> None:
    """Register a method under ``name`` (optionally with a multi-step ``trainer``).

    Raises:
        ConfigError: ``name`` is already registered to a different class.
    """
    existing = _REGISTRY.get(name)
    if existing is not None and existing.intervention_cls is not intervention_cls:
        raise ConfigError(f"method {name!r} is already registered ({existing.intervention_cls.__name__})")
    _REGISTRY[name] = MethodSpec(name, config_cls, intervention_cls, trainer)


def _load_builtins() -> None:
    """Import every method package under ``workbench/methods/`` (each registers itself on import)."""
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    _load_builtins()
    return sorted(_REGISTRY)


def get_method(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` for ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    _load_builtins()
    if name not in _REGISTRY:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(_REGISTRY)}")
    return _REGISTRY[name]

