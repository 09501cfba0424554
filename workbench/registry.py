"""One registry mechanism for everything that registers itself: methods, tasks.

A :class:`Registry` maps names to specs. Its entries live in the sub-packages of one package (one folder
per method or task), or in its modules (one module per app view: ``modules=True``); each registers itself
when imported, and the registry imports them all the first time a name is looked up, so there is no central
list or enum anywhere.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Generic, TypeVar

from workbench.errors import ConfigError

S = TypeVar("S")


class Registry(Generic[S]):
    """Names → specs of one ``kind`` (``"method"``, ``"task"``), loaded from the sub-packages of ``package``.

    Args:
        kind: what an entry is, for messages.
        package: dotted name of the package whose sub-packages register entries on import.
        modules: import every module of ``package`` too, not only its sub-packages (one module per entry).
        same: whether a second registration of a name is the same entry (allowed: re-importing a module
            registers again); a different one raises.
    """

    def __init__(self, kind: str, package: str, same: Callable[[S, S], bool] = lambda a, b: a == b, *, modules: bool = False) -> None:
        self.kind, self.package, self._same, self.modules = kind, package, same, modules
        self._specs: dict[str, S] = {}

    def register(self, name: str, spec: S) -> S:
        """Register ``spec`` under ``name``; returns it.

        Raises:
            ConfigError: ``name`` is already registered to a different entry.
        """
        existing = self._specs.get(name)
        if existing is not None and not self._same(existing, spec):
            raise ConfigError(f"{self.kind} {name!r} is already registered ({existing!r:.120})")
        self._specs[name] = spec
        return spec

    def _load(self) -> None:
        pkg = importlib.import_module(self.package)
        for info in pkgutil.iter_modules(pkg.__path__):
            if info.ispkg or self.modules:
                importlib.import_module(f"{self.package}.{info.name}")

    def names(self) -> list[str]:
        """Every registered name, sorted (the built-in sub-packages are imported first)."""
        self._load()
        return sorted(self._specs)

    def specs(self) -> list[S]:
        """Every registered entry, in the order of :meth:`names`."""
        return [self._specs[n] for n in self.names()]

    def find(self, name: str) -> S | None:
        """The entry registered under ``name``, or ``None`` when there is none."""
        self._load()
        return self._specs.get(name)

    def get(self, name: str) -> S:
        """The entry registered under ``name``.

        Raises:
            ConfigError: unknown name (the message lists the known ones).
        """
        self._load()
        if name not in self._specs:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {sorted(self._specs)}")
        return self._specs[name]
