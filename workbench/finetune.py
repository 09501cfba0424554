"""One entry point for every registered method: ``finetune("lofit", model, info, examples)``.

A notebook needs three lines::

    model, tok, info = load_model("smollm2-135m-instruct")
    result = finetune("neft", model, info, examples, config={"budget_fraction": 0.01})
    with result.intervention.attach(model): ...
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, is_dataclass
from pathlib import Path
from typing import Any

from workbench.config import config_from_dict
from workbench.data import Example, check_examples, vocab_size_of
from workbench.divergence import restart_hint_scope
from workbench.errors import ConfigError
from workbench.methods import get_method
from workbench.train import TrainConfig, TrainResult, fit, seed_everything


@dataclass
class FinetuneResult:
    """The trained intervention, the training log of its (last) ``fit()``, and method details."""

    method: str
    intervention: Any
    train_result: TrainResult
    details: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float = 0.0


def finetune(
    method: str,
    model: Any,
    info: Any,
    examples: Sequence[Example],
    config: Any = None,
    train: TrainConfig | dict | None = None,
    *,
    pad_id: int = 0,
    out_dir: str | Path | None = None,
    eval_fn: Callable[[], dict[str, Any]] | None = None,
    restart_hint: str | None = None,
) -> FinetuneResult:
    """Train ``method`` on ``model`` (described by ``info``, a ModelInfo) with the answer-only loss.

    Args:
        config: the method's config (dataclass or dict of its fields; ``None`` = defaults).
        train: optimisation settings (TrainConfig or dict); ``None`` = TrainConfig defaults.
        restart_hint: the command a divergence message recommends, for every ``fit()`` of the method
            (see :func:`workbench.divergence.restart_hint_scope`); ``None`` = the Python-API wording.

    Raises:
        ConfigError: unknown method, unknown config key, invalid value; ``info`` that is not a ModelInfo;
            ``examples`` that are not a non-empty list of Example with ids in the model's vocabulary.
    """
    spec = get_method(method)
    if not callable(getattr(info, "to_dict", None)):
        raise ConfigError(f"info must be the ModelInfo that load_model returned, got {type(info).__name__}")
    check_examples(examples, vocab_size_of(model))
    cfg = config if is_dataclass(config) else config_from_dict(spec.config_cls, {} if config is None else config)
    train_cfg = train if isinstance(train, TrainConfig) or train is None else config_from_dict(TrainConfig, train)
    dims = info.to_dict()
    t0 = time.perf_counter()
    with restart_hint_scope(restart_hint):  # reaches the fit() calls inside multi-step trainers too
        if spec.trainer is not None:
            inter, result, details = spec.trainer(model, dims, examples, cfg, train_config=train_cfg, pad_id=pad_id, out_dir=out_dir, eval_fn=eval_fn)
        else:
            train_cfg = train_cfg or TrainConfig()
            seed_everything(train_cfg.seed)
            inter = spec.intervention_cls(cfg, dims)
            result = fit(model, inter, examples, train_cfg, pad_id=pad_id, out_dir=out_dir, eval_fn=eval_fn)
            details = {}
    return FinetuneResult(method, inter, result, details, time.perf_counter() - t0)
