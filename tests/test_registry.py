"""The one registry mechanism behind methods and tasks: self-registration, duplicates, unknown names."""

from __future__ import annotations

from pathlib import Path

import pytest

from workbench.errors import ConfigError
from workbench.methods import METHODS, available_methods, get_method, register_method
from workbench.registry import Registry
from workbench.tasks import TASKS, available_tasks


def _folders(package: str) -> list[str]:
    root = Path(__file__).resolve().parents[1] / package.replace(".", "/")
    return sorted(p.name for p in root.iterdir() if (p / "__init__.py").is_file())


def test_every_folder_registers_itself():
    """Each folder under workbench/methods and workbench/tasks registers under its own name (a new method or task is
    a new folder; no list of names to update)."""
    assert available_methods() == _folders("workbench.methods") and len(available_methods()) >= 5
    assert available_tasks() == _folders("workbench.tasks") and len(available_tasks()) >= 5
    assert METHODS.package == "workbench.methods" and TASKS.package == "workbench.tasks"


def test_duplicate_method_names_raise_and_re_registration_is_idempotent(monkeypatch):
    monkeypatch.setattr(METHODS, "_specs", dict(METHODS._specs))
    spec = get_method("lofit")
    register_method("lofit", spec.config_cls, spec.intervention_cls, spec.trainer)  # a re-import: fine
    with pytest.raises(ConfigError, match="method 'lofit' is already registered"):
        register_method("lofit", spec.config_cls, get_method("neft").intervention_cls)


def test_unknown_names_list_the_known_ones():
    reg: Registry[int] = Registry("widget", "workbench.methods")
    reg.register("a", 1)
    with pytest.raises(ConfigError, match=r"unknown widget 'b'; available: \['a'\]"):
        reg.get("b")


def test_method_registry():
    from workbench.methods.lofit import LofitOffsets

    assert "lofit" in available_methods()
    assert get_method("lofit").intervention_cls is LofitOffsets
    with pytest.raises(ConfigError, match="unknown method 'nope'; available"):
        get_method("nope")
