"""Registers ``arithmetic``: ``"57 + 38 = "`` → ``"95"`` (the "different skill" of Prakash et al. 2024).

The split's items are :class:`~workbench.train.Example` already (the answer may span several tokens).
Metric: ``accuracy``, the held-out exact match (every answer token is the greedy, teacher-forced
prediction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workbench.tasks import TaskSpec, register_task
from workbench.tasks import arithmetic as ar
from workbench.train import Example


@dataclass(frozen=True)
class ArithmeticSplit:
    """Tokenized problems (``train`` / ``heldout``: Examples) and their text (``*_pairs``: (prompt, answer))."""

    train: list[Example]
    heldout: list[Example]
    train_pairs: list[tuple[str, str]]
    heldout_pairs: list[tuple[str, str]]


def _generate(tokenizer: Any, cfg: ar.ArithmeticConfig, prepend_bos: bool) -> ArithmeticSplit:
    train, heldout = ar.problems(cfg)
    return ArithmeticSplit(ar.to_examples(tokenizer, train, prepend_bos), ar.to_examples(tokenizer, heldout, prepend_bos), train, heldout)


def _examples(items: Sequence[Example]) -> list[Example]:
    return list(items)


def _evaluate(model: Any, split: ArithmeticSplit, *, pad_id: int = 0, batch_size: int = 1) -> dict[str, float]:
    return {"accuracy": ar.exact_match(model, split.heldout)}


SPEC = register_task("arithmetic", TaskSpec(
    description="two-operand sums and differences of n-digit numbers; held-out exact match",
    config_cls=ar.ArithmeticConfig, generate_fn=_generate, examples_fn=_examples, evaluate_fn=_evaluate,
    defaults={"n_train": 256, "n_heldout": 64},
))
