"""Arithmetic word-free sums, the "different skill" for fine-tuning (the role Goat plays in Prakash et al.,
ICLR 2024, §2: a model tuned on arithmetic, then tested on entity tracking).

``"57 + 38 = "`` → ``"95"``. Two-operand addition and subtraction of ``n_digits``-digit numbers with
non-negative results; the answer may span several tokens (the loss is on all of them).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

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


@torch.no_grad()
def exact_match(model: torch.nn.Module, examples: list[Example], max_batch: int = 64) -> float:
    """Share of problems whose every answer token is the greedy (teacher-forced) prediction.

    Problems with the same prompt and answer lengths run together (no padding, so each one's logits are those of
    running it alone, up to batched-matmul rounding), and only the positions that predict answer tokens are
    unembedded (``logits_to_keep``). :func:`workbench.datafiles.evaluate.evaluate_examples` gives the same share on
    right-padded batches of any lengths (plus the answer loss); this one keeps the studies' numbers those of one
    problem at a time.

    Raises:
        ConfigError: no examples, or ``max_batch`` < 1.
    """
    if not examples or max_batch < 1:
        raise ConfigError(f"exact_match needs examples and max_batch >= 1 (got {len(examples)} examples, max_batch {max_batch})")
    device = next(model.parameters()).device
    groups: dict[tuple[int, int], list[Example]] = {}
    for ex in examples:
        groups.setdefault((len(ex.prompt_ids), len(ex.answer_ids)), []).append(ex)
    hits = 0
    for (_, n_answer), group in groups.items():
        for i in range(0, len(group), max_batch):
            chunk = group[i:i + max_batch]
            ids = torch.tensor([list(ex.prompt_ids) + list(ex.answer_ids) for ex in chunk], device=device)
            # logits_to_keep = n_answer + 1: the last kept position predicts past the answer; drop it
            predicted = model(input_ids=ids, logits_to_keep=n_answer + 1).logits[:, :-1].argmax(-1)
            answers = torch.tensor([list(ex.answer_ids) for ex in chunk], device=device)
            hits += int((predicted == answers).all(-1).sum())
    return hits / len(examples)


from workbench.tasks.arithmetic import task as _task  # noqa: F401  (registers the task; needs the names above)
