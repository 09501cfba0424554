"""Task registry: each task lives in its own folder and registers itself on import.

A task turns a tokenizer into training examples and a model into held-out metrics, so that any caller
runs any task the same way::

    task = get_task("arithmetic")
    cfg = task.config(n_train=64)                      # validated settings (ConfigError on bad ones)
    split = task.generate(tok, cfg, prepend_bos=info.prepend_bos)
    examples = task.to_examples(split)                 # list[workbench.data.Example], from split.train
    metrics = task.evaluate(model, split)              # {"accuracy": .., task-specific ..} on split.heldout

``register_task("arithmetic", TaskSpec(...))`` (in the task folder's ``__init__.py``, its face) makes the name
known to :func:`get_task`, :func:`available_tasks`, ``workbench train --task`` and ``workbench tasks``. There is
no central enum. Every task folder has the same shape, so a newcomer adds a task by copying one:
``generation.py`` (the settings dataclass, the items, the split: ``generate_split`` or ``generate``, and the
training ``examples`` / ``to_examples``), ``evaluation.py`` (the metrics and ``evaluate_split``, the held-out
metrics) and ``__init__.py``, which re-exports their public names and registers the spec.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.config import config_from_dict
from workbench.errors import ConfigError, WorkbenchError
from workbench.registry import Registry


@dataclass(frozen=True)
class TaskSpec:
    """A registered task. Build one per task folder and pass it to :func:`register_task`.

    Attributes:
        description: one line for ``workbench tasks``.
        config_cls: the task's settings dataclass; it validates itself on construction and has a ``seed``
            field.
        generate_fn: ``(tokenizer, config, prepend_bos: bool) -> split``; the split has ``train`` and
            ``heldout`` lists (and optionally ``ood``), disjoint, deterministic in ``config.seed``.
        examples_fn: ``(items) -> list[Example]``: training examples (answer-only loss) of a list of split
            items, e.g. ``split.train``.
        evaluate_fn: ``(model, split, *, pad_id: int, batch_size: int = <task default>) -> dict[str, float]``:
            held-out metrics with ``"accuracy"`` (a fraction) always present.
        defaults: settings merged under the caller's in :meth:`config` (e.g. counts a config requires).
        name: filled in by :func:`register_task`.
    """

    description: str
    config_cls: type
    generate_fn: Callable[[Any, Any, bool], Any]
    examples_fn: Callable[[Sequence[Any]], list]
    evaluate_fn: Callable[..., dict[str, float]]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    name: str = ""

    def valid_keys(self) -> list[str]:
        """The config's field names, sorted."""
        return sorted(f.name for f in dataclasses.fields(self.config_cls))

    def config(self, **settings: Any) -> Any:
        """The task's validated config from ``defaults`` updated with ``settings``.

        Raises:
            ConfigError: an unknown key (the message names the task and the valid keys), a missing
                required one, a value of the wrong type, or one the config refuses.
        """
        unknown = sorted(set(settings) - set(self.valid_keys()))
        if unknown:
            raise ConfigError(f"task {self.name!r}: unknown setting(s) {unknown}; valid keys: {self.valid_keys()}")
        try:  # types checked field by field (JSON lists become tuples), then the config's own __post_init__
            return config_from_dict(self.config_cls, {**self.defaults, **settings}, where=self.name or None)
        except (TypeError, ValueError) as exc:  # ConfigError included: say which task refused which settings
            if self.name and repr(self.name) in str(exc):
                raise
            raise ConfigError(f"task {self.name!r}: invalid settings {settings}: {exc}") from exc

    def generate(self, tokenizer: Any, config: Any = None, *, prepend_bos: bool = False, seed: int | None = None) -> Any:
        """The task's split for ``tokenizer``: ``train``, ``heldout`` (and ``ood`` where the task has one).

        Args:
            config: an instance of ``config_cls``, a dict of settings, or ``None`` (the defaults).
            prepend_bos: put the tokenizer's BOS before every prompt (``ModelInfo.prepend_bos``).
            seed: replaces ``config.seed`` when given (same settings, another sample).

        Raises:
            ConfigError: invalid settings, or the tokenizer cannot give the requested data (e.g. too
                few distinct prompts, a word that is not one token).
        """
        if config is None or isinstance(config, Mapping):
            config = self.config(**dict(config or {}))
        elif not isinstance(config, self.config_cls):
            raise ConfigError(f"task {self.name!r} takes a {self.config_cls.__name__}, got {type(config).__name__}")
        try:
            if seed is not None:
                config = dataclasses.replace(config, seed=seed)
            return self.generate_fn(tokenizer, config, prepend_bos)
        except WorkbenchError:
            raise
        except ValueError as exc:
            raise ConfigError(f"task {self.name!r}: {exc}") from exc

    def to_examples(self, split: Any, part: str = "train") -> list:
        """``list[Example]`` of ``split.<part>`` (``"train"``, ``"heldout"`` or ``"ood"``).

        Raises:
            ConfigError: the split has no such part.
        """
        items = getattr(split, part, None)
        if items is None:
            raise ConfigError(f"task {self.name!r}: the split has no {part!r} part")
        return self.examples_fn(items)

    def evaluate(self, model: Any, split: Any, *, pad_id: int = 0, batch_size: int | None = None) -> dict[str, float]:
        """Held-out metrics of ``model`` as it is now (attach an intervention around the call to score the
        tuned model): ``"accuracy"`` in [0, 1] plus the task's own (e.g. ``"ood_accuracy"``).

        Args:
            pad_id: id used to right-pad batches of unequal length (masked out, so any id works).
            batch_size: prompts per forward pass (``None``: the task's default).

        Raises:
            WorkbenchError: the task's evaluate returned no ``"accuracy"`` (a bug in the task).
        """
        kwargs = {"pad_id": pad_id} if batch_size is None else {"pad_id": pad_id, "batch_size": batch_size}
        metrics = {k: float(v) for k, v in self.evaluate_fn(model, split, **kwargs).items()}
        if "accuracy" not in metrics:
            raise WorkbenchError(f"task {self.name!r}: evaluate returned no 'accuracy' ({sorted(metrics)})")
        return metrics


#: Every registered task (a second registration of a name must bring an equal spec).
TASKS: Registry[TaskSpec] = Registry("task", __name__)


def register_task(name: str, spec: TaskSpec) -> TaskSpec:
    """Register ``spec`` under ``name``; returns the registered spec (with ``name`` set).

    Raises:
        ConfigError: ``name`` is already registered to a different spec.
    """
    return TASKS.register(name, dataclasses.replace(spec, name=name))


def available_tasks() -> list[str]:
    """Names of every registered task, sorted."""
    return TASKS.names()


def get_task(name: str) -> TaskSpec:
    """The registered :class:`TaskSpec` for ``name``.

    Raises:
        ConfigError: unknown name (the message lists the known ones).
    """
    return TASKS.get(name)
