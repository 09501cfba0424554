"""The one config reader: a config dataclass from a dict (or a JSON file), checked as data first.

:func:`config_from_dict` checks every value against its field's annotation (read with
``typing.get_type_hints``) before the dataclass is built, so a wrong type is refused with the field's
name before any model loads. Ranges and cross-field rules stay in each config's ``__post_init__``.

What the annotations mean here (JSON has no tuples, so lists are accepted for tuple fields):

* ``int``: an int, not a bool and not a float (``6.0`` is refused); ``float``: an int or a float, not a
  bool, finite; ``bool``: ``true``/``false`` only; ``str``: a string.
* ``X | None``, ``X | Y``: any alternative; ``Literal[...]``: one of the listed values.
* ``list[X]``, ``tuple[X, ...]``, ``tuple[X, Y]``, ``dict[K, V]``: checked element by element.
* a config dataclass: an instance, or a dict read recursively (``LofitConfig.select`` as a dict becomes
  a ``TrainConfig``). ``Any`` and unparameterised ``dict``/``list`` accept any such value.
* ``Annotated[X, Range(...)]``: ``X``, then the declared range. A field's constraint is declared once, in its
  annotation (:data:`PositiveInt`, :data:`NonNegativeInt`, :data:`PositiveFloat`, :data:`NonNegativeFloat`,
  :data:`Probability`, :data:`OpenFraction`), and checked by the reader and by :func:`check_fields` (which a
  config's ``__post_init__`` calls, so a config built in Python is checked too); no hand-written range checks.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, Union

from workbench.errors import ConfigError

C = TypeVar("C")


@dataclasses.dataclass(frozen=True)
class Range:
    """A declared numeric range for ``Annotated[int | float, Range(...)]`` fields: ``low <= value <= high`` (either
    bound open with ``low_open`` / ``high_open``; ``None`` = unbounded)."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def describe(self) -> str:
        parts = []
        if self.low is not None:
            parts.append(f"{'>' if self.low_open else '>='} {self.low:g}")
        if self.high is not None:
            parts.append(f"{'<' if self.high_open else '<='} {self.high:g}")
        return " and ".join(parts)

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)


#: an integer >= 1 (sizes, counts, steps)
PositiveInt = Annotated[int, Range(low=1)]
#: an integer >= 0
NonNegativeInt = Annotated[int, Range(low=0)]
#: a finite float > 0 (learning rates, scales)
PositiveFloat = Annotated[float, Range(low=0, low_open=True)]
#: a finite float >= 0 (coefficients, margins)
NonNegativeFloat = Annotated[float, Range(low=0)]
#: a finite float in [0, 1]
Probability = Annotated[float, Range(low=0, high=1)]
#: a finite float strictly between 0 and 1 (a held-out fraction)
OpenFraction = Annotated[float, Range(low=0, high=1, low_open=True, high_open=True)]


def _describe(tp: Any) -> str:
    """A reader's name for a type: ``an int``, ``a list of int``, ``a TrainConfig or a dict``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is type(None):
        return "null"
    if origin in (Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in (list, Sequence):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}" if args else "a list"
    if origin is tuple:
        return "a list (tuple)"
    if origin in (dict, Mapping):
        return "a dict (JSON object)"
    if tp in (dict, Mapping):
        return "a dict (JSON object)"
    name = getattr(tp, "__name__", str(tp))
    return f"an {name}" if name[:1].lower() in "aeiou" else f"a {name}"


def _fail(name: str, tp: Any, value: Any) -> ConfigError:
    shown = repr(value) if len(repr(value)) <= 80 else repr(value)[:77] + "..."
    return ConfigError(f"{name} must be {_describe(tp)}, got {shown} ({type(value).__name__})")


def check_value(value: Any, tp: Any, name: str) -> Any:
    """``value`` checked against the annotation ``tp`` (lists for tuple fields become tuples, dicts for
    config-dataclass fields become that dataclass); ``name`` is used in the message.

    Raises:
        ConfigError: the value does not fit ``tp`` (the message names ``name`` and the expected type).
    """
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any or tp is object or isinstance(tp, TypeVar):
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _fail(name, tp, value)
    if origin in (Union, types.UnionType):
        if isinstance(value, dict):  # a dict for a config-dataclass alternative is read as that config
            for alt in args:
                if dataclasses.is_dataclass(alt):
                    return config_from_dict(alt, value, where=name)
        for alt in args:
            try:
                return check_value(value, alt, name)
            except ConfigError:
                continue
        raise _fail(name, tp, value)
    if origin is Literal:
        if any(type(value) is type(a) and value == a for a in args):
            return value
        raise _fail(name, tp, value)
    if origin is typing.Annotated:
        value = check_value(value, args[0], name)
        for rule in tp.__metadata__:
            if isinstance(rule, Range) and isinstance(value, (int, float)) and not rule.holds(value):
                kind = "an integer" if args[0] is int else "a number"
                raise ConfigError(f"{name} must be {kind} {rule.describe()}, got {value!r}")
        return value
    if origin is typing.ClassVar:
        return check_value(value, args[0], name)
    if origin in (list, Sequence) or tp in (list, Sequence):
        if not isinstance(value, (list, tuple)):
            raise _fail(name, tp, value)
        return [check_value(v, args[0], f"{name}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is tuple or tp is tuple:
        if not isinstance(value, (list, tuple)):
            raise _fail(name, tp, value)
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            item = args[0] if args else Any
            return tuple(check_value(v, item, f"{name}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{name} must have {len(args)} items, got {len(value)}: {value!r}")
        return tuple(check_value(v, a, f"{name}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or tp in (dict, Mapping):
        if not isinstance(value, dict):
            raise _fail(name, tp, value)
        if not args:
            return value
        return {check_value(k, args[0], f"{name} key"): check_value(v, args[1], f"{name}[{k!r}]") for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if isinstance(value, tp):
            return value
        if isinstance(value, dict):
            return config_from_dict(tp, value, where=name)
        raise _fail(name, tp, value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _fail(name, tp, value)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise _fail(name, tp, value)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{name} must be a finite number, got {value!r}")
            return value
        raise _fail(name, tp, value)
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _fail(name, tp, value)
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise _fail(name, tp, value)
    return value  # an annotation this reader does not interpret (e.g. a Protocol): left to __post_init__


def config_from_dict(config_cls: type[C], data: Any, *, where: str | None = None) -> C:
    """Build the config dataclass ``config_cls`` from a dict, checking every value's type first.

    Args:
        data: field name -> value (e.g. parsed JSON); nested config dataclasses may be given as dicts.
        where: the name the messages use for this config (default ``config_cls.__name__``; nested configs
            get ``Outer.field``).

    Raises:
        ConfigError: ``data`` is not a dict; a key that is not a field (the message lists the valid ones);
            a required field missing; a value of the wrong type, or a non-finite float (the message names
            the field and the expected type); or whatever ``config_cls.__post_init__`` refuses.
    """
    label = where or config_cls.__name__
    if not dataclasses.is_dataclass(config_cls) or not isinstance(config_cls, type):
        raise ConfigError(f"{config_cls!r} is not a config dataclass")
    if not isinstance(data, dict):
        raise ConfigError(f"{label} must be a dict (JSON object) of its fields, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(config_cls) if f.init}
    unknown = sorted(set(data) - set(fields), key=str)
    if unknown:
        place = f" in {where}" if where else ""
        raise ConfigError(f"unknown {config_cls.__name__} key(s) {unknown}{place} (unknown keys are refused, "
                          f"not ignored); valid keys: {sorted(fields)}")
    missing = [n for n, f in fields.items() if n not in data
               and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
    if missing:
        raise ConfigError(f"{label} needs key(s) {missing}")
    hints = _type_hints(config_cls)
    checked = {k: check_value(v, hints.get(k, Any), f"{label}.{k}") for k, v in data.items()}
    try:
        return config_cls(**checked)
    except ConfigError:
        raise
    except ValueError as exc:  # a config's own range check written as ValueError: still one clear ConfigError
        raise ConfigError(f"{label}: {exc}") from exc


def check_fields(config: Any) -> None:
    """Check every field of the config dataclass instance ``config`` against its annotation, declared ranges
    included (call it first in ``__post_init__``: a config built in Python gets the reader's checks).

    Raises:
        ConfigError: the first field whose value does not fit (the message names ``Class.field``).
    """
    hints = _type_hints(type(config))
    label = type(config).__name__
    for f in dataclasses.fields(config):
        if f.init and f.name in hints:
            check_value(getattr(config, f.name), hints[f.name], f"{label}.{f.name}")


def _type_hints(config_cls: type) -> dict[str, Any]:
    """Field annotations resolved to types (``from __future__ import annotations`` strings included), declared
    constraints (``Annotated``) kept.

    Raises:
        ConfigError: an annotation that names a type the config's module does not define or import.
    """
    try:
        return typing.get_type_hints(config_cls, include_extras=True)
    except (NameError, TypeError) as exc:
        raise ConfigError(f"cannot read the field types of {config_cls.__name__} ({exc}); "
                          "import every annotated type at module level") from exc


def read_json_object(path: str | Path, what: str = "config") -> dict[str, Any]:
    """The JSON object in the file ``path`` (for :func:`config_from_dict`).

    Raises:
        ConfigError: the file is missing or unreadable, is not valid JSON, or holds something other than a
            JSON object (every message starts with the file's path).
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the {what} file ({exc.strerror or exc})") from exc
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}, column {exc.colno})") from exc
    if not isinstance(data, dict):
        kind = {list: "an array", str: "a string", bool: "a boolean", type(None): "null"}.get(type(data), "a number")
        raise ConfigError(f"{path}: a {what} file must hold a JSON object of its fields, got {kind}")
    return data


def load_json_config(config_cls: type[C], path: str | Path) -> C:
    """Read ``path`` (a JSON object of ``config_cls``'s fields) through :func:`config_from_dict`.

    Raises:
        ConfigError: as :func:`read_json_object` and :func:`config_from_dict`; every message starts with
            the file's path.
    """
    data = read_json_object(path, f"{config_cls.__name__} config")
    try:
        return config_from_dict(config_cls, data)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
