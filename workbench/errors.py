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
    """Base class of all deliberate workbench errors.

    A message whose advice names settings keeps that advice apart, so that every interface names its own way to
    change them (the CLI its ``--flags``, :func:`app.cli._fail`) and none names an option it does not have:
    ``WorkbenchError(reason, hint="map other column names with", settings=("text_field",),
    python="fields={'text_field': ...}")`` reads ``"<reason>; map other column names with fields={...}"``.

    Attributes:
        reason: the message without its advice.
        hint: the advice up to the means (``""``: none).
        settings: the Python names of the settings the advice means (keywords, config fields).
        python: the means in Python terms.
    """

    def __init__(self, *args: object, hint: str = "", settings: tuple[str, ...] = (), python: str = "") -> None:
        super().__init__(*((f"{args[0]}; {hint} {python}".rstrip(), *args[1:]) if hint and args else args))
        self.reason = str(args[0]) if args else ""
        self.hint, self.settings, self.python = hint, tuple(settings), python


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
