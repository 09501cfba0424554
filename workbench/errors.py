"""Exception hierarchy shared by the whole workbench.

Every error the workbench raises on purpose derives from :class:`WorkbenchError`, so
callers (CLI, app) can catch one base class and show the message without a traceback.
"""

from __future__ import annotations

__all__ = [
    "WorkbenchError",
    "ModelNotFoundError",
    "ConfigError",
    "MismatchError",
    "CheckpointError",
    "DivergenceError",
    "NonFiniteLossError",
]


class WorkbenchError(Exception):
    """Base class of all deliberate workbench errors."""


class ModelNotFoundError(WorkbenchError):
    """A model name/path could not be resolved to loadable weights."""


class ConfigError(WorkbenchError, ValueError):
    """An invalid configuration value or combination of values."""


class MismatchError(WorkbenchError, ValueError):
    """Two things that must agree (models, tokenizers, shapes, hashes) do not."""


class CheckpointError(WorkbenchError):
    """A checkpoint is missing, unreadable or inconsistent."""


class DivergenceError(WorkbenchError):
    """Training blew up (see :mod:`workbench.divergence`): a loss far above its reference, a parameter beyond
    its bound, or an optimizer step that overflowed. The message names the step, the last good checkpoint
    and the command that resumes from it with a lower learning rate."""


class NonFiniteLossError(DivergenceError, FloatingPointError):
    """Training produced a NaN or infinite loss, gradient norm or parameter (a kind of divergence)."""
