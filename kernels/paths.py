"""Which fast path ran: the one record of every choice between a kernel and its fallback.

The checkout's ``kernels/`` folder (the layout's name) is installed, in the wheel and in editable installs, under
the import name ``workbench_kernels`` (``pyproject.toml``: ``package-dir``). The bare name ``kernels`` belongs to
Hugging Face's kernel-hub package, which transformers >= 5.25 requires; ours must never shadow it, not even when
Python runs from the checkout root (the current directory first on ``sys.path``): the folder therefore has no
``__init__.py`` (a namespace folder loses to a regular package of the same name; ``tests/test_core.py``).

Floors: ``workbench`` <- ``workbench_kernels`` <- ``probes``. This package may import ``workbench``, never
``probes``, ``studies`` or ``app`` (``tests/test_layers.py``).

Where a fast path cannot run (the Triton lens without CUDA, layer-prefix sharing on a model family the runner was not
checked against), the caller says so through :func:`choose`: the choice is recorded (:func:`path_taken`, which the
tests read) and logged once per (site, path, reason) on the ``workbench_kernels`` logger, never silently.
"""

from __future__ import annotations

import logging

_log = logging.getLogger("workbench_kernels")
_taken: dict[str, str] = {}
_logged: set[tuple[str, str, str]] = set()


def choose(site: str, path: str, reason: str = "") -> str:
    """Record that ``site`` (e.g. ``"logit_lens"``) runs ``path`` (e.g. ``"streaming"``) and return ``path``.

    A ``reason`` marks a fallback: it is logged at INFO level the first time this (site, path, reason) occurs in
    the process, so a user sees which path ran and why, once, without a message per call."""
    _taken[site] = path
    if reason and (site, path, reason) not in _logged:
        _logged.add((site, path, reason))
        _log.info("%s: %s path (%s)", site, path, reason)
    return path


def path_taken(site: str) -> str | None:
    """The path ``site`` took on its last call in this process (``None`` before any call)."""
    return _taken.get(site)
