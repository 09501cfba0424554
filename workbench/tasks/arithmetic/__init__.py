"""Registers ``arithmetic``: word-free sums, the "different skill" for fine-tuning (the role Goat plays in Prakash
et al., ICLR 2024, §2: a model tuned on arithmetic, then tested on entity tracking).

``"57 + 38 = "`` → ``"95"``. Two-operand addition and subtraction of ``n_digits``-digit numbers with non-negative
results; the answer may span several tokens (the loss is on all of them). :mod:`~workbench.tasks.arithmetic.generation`:
settings, problems, examples, the split (its items are Examples already);
:mod:`~workbench.tasks.arithmetic.evaluation`: ``accuracy``, the held-out exact match (every answer token is the greedy,
teacher-forced prediction).
"""

from workbench.tasks import TaskSpec, register_task
from workbench.tasks.arithmetic.evaluation import evaluate_split, exact_match
from workbench.tasks.arithmetic.generation import ArithmeticConfig, ArithmeticSplit, examples, generate_split, problems, to_examples

SPEC = register_task("arithmetic", TaskSpec(
    description="two-operand sums and differences of n-digit numbers; held-out exact match",
    config_cls=ArithmeticConfig, generate_fn=generate_split, examples_fn=examples, evaluate_fn=evaluate_split,
    defaults={"n_train": 256, "n_heldout": 64},
))

__all__ = ["SPEC", "ArithmeticConfig", "ArithmeticSplit", "evaluate_split", "examples", "exact_match", "generate_split", "problems",
           "to_examples"]
