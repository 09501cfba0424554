"""Method registry: each method lives in its own folder and registers itself on import.

``register_method("lofit", LofitConfig, LofitOffsets)`` makes the name known to the CLI, to
:func:`workbench.artifacts.load_intervention` and to :func:`available_methods`. There is no central enum.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from workbench.registry import Registry


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


#: Every registered method (a second registration of a name must bring the same Intervention class).
METHODS: Registry[MethodSpec] = Registry("method", __name__, same=lambda a, b: a.intervention_cls is b.intervention_cls)


def register_method(name: str, config_cls: type, intervention_cls: type, trainer: Any = None) -> None:
    """Register a method under ``name`` (optionally with a multi-step ``trainer``).

    Raises:
        ConfigError: ``name`` is already registered to a different class.
    """
    METHODS.register(name, MethodSpec(name, config_cls, intervention_cls, trainer))


def available_methods() -> list[str]:
    """Names of every registered method, sorted."""
    return METHODS.names()


def get_method(name: str) -> MethodSpec:
    """The registered :class:`MethodSpec` for ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    return METHODS.get(name)
