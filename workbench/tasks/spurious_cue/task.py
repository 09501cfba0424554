"""Registers ``spurious_cue`` (Casademunt et al. 2025, §5): pronoun case (the intended cue) vs the noun's
gender (the spurious one).

Examples: the answer-only loss on the answer token. Metrics: ``accuracy`` / ``logit_diff`` on the
held-out prompts (cues agree, as in training) and ``ood_accuracy`` / ``ood_logit_diff`` on the
out-of-distribution prompts (cues disagree). Accuracy is among the two options; logit differences in nats.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from workbench.errors import ConfigError
from workbench.tasks import TaskSpec, register_task
from workbench.tasks import spurious_cue as sc


def _with_bos(prompts: list[sc.CuePrompt], bos: int) -> list[sc.CuePrompt]:
    """The prompts with ``bos`` in front (token positions shift by one)."""
    return [dataclasses.replace(p, input_ids=(bos, *p.input_ids), noun_pos=p.noun_pos + 1, pronoun_pos=p.pronoun_pos + 1) for p in prompts]


def _generate(tokenizer: Any, cfg: sc.SpuriousCueConfig, prepend_bos: bool) -> sc.SpuriousCueSplit:
    split = sc.generate(tokenizer, cfg)
    if not prepend_bos:
        return split
    if tokenizer.bos_token_id is None:
        raise ConfigError("prepend_bos=True but the tokenizer has no bos_token_id")
    bos = tokenizer.bos_token_id
    return sc.SpuriousCueSplit(_with_bos(split.train, bos), _with_bos(split.heldout, bos), _with_bos(split.ood, bos))


def _evaluate(model: Any, split: sc.SpuriousCueSplit, *, pad_id: int = 0, batch_size: int = 64) -> dict[str, float]:
    held, ood = sc.evaluate(model, split.heldout, batch_size), sc.evaluate(model, split.ood, batch_size)
    return {**held, "ood_accuracy": ood["accuracy"], "ood_logit_diff": ood["logit_diff"]}


SPEC = register_task("spurious_cue", TaskSpec(
    description="grammar vs a spurious gender cue (Casademunt et al. 2025); held-out and out-of-distribution accuracy",
    config_cls=sc.SpuriousCueConfig, generate_fn=_generate, examples_fn=sc.to_examples, evaluate_fn=_evaluate,
))
