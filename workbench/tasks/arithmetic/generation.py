"""Arithmetic problems (``"57 + 38 = "`` → ``"95"``): settings, the problems, their tokenized examples and the
task's split."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workbench.data import Example
from workbench.errors import ConfigError


@dataclass(frozen=True, kw_only=True)
class ArithmeticConfig:
    n_train: int
    n_heldout: int
    n_digits: int = 2
    ops: str = "+-"
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_train < 1 or self.n_heldout < 1 or not 1 <= self.n_digits <= 6 or not self.ops or set(self.ops) - set("+-"):
            raise ConfigError(f"invalid ArithmeticConfig {self}: need positive counts, 1..6 digits, ops from '+-'")


def problems(cfg: ArithmeticConfig) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """Unique ``(prompt, answer)`` pairs, split into train and held-out (no overlap)."""
    rng = random.Random(cfg.seed)
    lo, hi = 10 ** (cfg.n_digits - 1), 10 ** cfg.n_digits - 1
    seen: dict[str, str] = {}
    total = cfg.n_train + cfg.n_heldout
    for _ in range(50 * total):
        if len(seen) == total:
            break
        a, b, op = rng.randint(lo, hi), rng.randint(lo, hi), rng.choice(cfg.ops)
        if op == "-" and b > a:
            a, b = b, a
        seen.setdefault(f"{a} {op} {b} = ", str(a + b if op == "+" else a - b))
    if len(seen) < total:
        raise ConfigError(f"only {len(seen)} distinct problems for {total} requested; use more digits")
    items = list(seen.items())
    return items[: cfg.n_train], items[cfg.n_train:]


def to_examples(tokenizer, pairs: list[tuple[str, str]], prepend_bos: bool = False) -> list[Example]:
    """Token-id Examples (answer-only loss on every answer token)."""
    bos = [tokenizer.bos_token_id] if prepend_bos else []
    return [Example(tuple(bos + tokenizer(p, add_special_tokens=False)["input_ids"]),
                    tuple(tokenizer(a, add_special_tokens=False)["input_ids"])) for p, a in pairs]


@dataclass(frozen=True)
class ArithmeticSplit:
    """Tokenized problems (``train`` / ``heldout``: Examples) and their text (``*_pairs``: (prompt, answer))."""

    train: list[Example]
    heldout: list[Example]
    train_pairs: list[tuple[str, str]]
    heldout_pairs: list[tuple[str, str]]


def generate_split(tokenizer: Any, cfg: ArithmeticConfig, prepend_bos: bool = False) -> ArithmeticSplit:
    """The task's split: :func:`problems` tokenized (``prepend_bos``: the tokenizer's BOS before every prompt)."""
    train, heldout = problems(cfg)
    return ArithmeticSplit(to_examples(tokenizer, train, prepend_bos), to_examples(tokenizer, heldout, prepend_bos), train, heldout)


def examples(items: Sequence[Example]) -> list[Example]:
    """The task's training examples: the split's items are Examples already."""
    return list(items)
