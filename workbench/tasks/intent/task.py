"""Registers ``intent`` (Minder et al., ICLR 2025, §2–3): answer from the context or from prior knowledge,
as the instruction says.

Facts: :data:`~workbench.tasks.intent.FACTS` whose answer is one token for the tokenizer (optionally some
relations, a seeded sample of ``max_facts``). Unlike the context-knob study, generation sees no model, so
facts the model does not know zero-shot are kept: prior accuracy is bounded by what the model knows.
Examples: every prompt of every training pair (both intents), loss on the intent's answer token.
Metrics (held-out pairs, disjoint facts): ``accuracy`` (share of prompts answered as their instruction
asks, the mean of the two below), ``context_accuracy``, ``prior_accuracy``, ``pair_accuracy``,
``context_prompt_gives_prior``, ``prior_prompt_gives_context``, ``n_pairs``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from workbench.config import NonNegativeInt, OpenFraction, PositiveInt, check_fields
from workbench.errors import ConfigError
from workbench.tasks import TaskSpec, register_task
from workbench.tasks import intent as it


@dataclass(frozen=True, kw_only=True)
class IntentTaskConfig:
    """Settings of the ``intent`` task.

    Attributes:
        relations: relations of :data:`~workbench.tasks.intent.RELATIONS` to use (empty = all).
        max_facts: keep at most this many single-token facts (seeded sample; 0 = all).
        heldout_fraction: share of facts held out (train and held-out facts are disjoint).
        n_train_contexts, n_heldout_contexts: counterfactual contexts per fact.
        seed: drives the sample, the split and the counterfactuals.

    Raises:
        ConfigError: unknown relation, ``heldout_fraction`` outside (0, 1), a count below its minimum.
    """

    relations: tuple[str, ...] = field(default_factory=tuple)
    max_facts: NonNegativeInt = 0
    heldout_fraction: OpenFraction = 0.4
    n_train_contexts: PositiveInt = 2
    n_heldout_contexts: PositiveInt = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "relations", tuple(self.relations))
        bad = sorted(set(self.relations) - set(it.RELATIONS))
        if bad:
            raise ConfigError(f"IntentTaskConfig.relations: unknown {bad}; known: {sorted(it.RELATIONS)}")


def _generate(tokenizer: Any, cfg: IntentTaskConfig, prepend_bos: bool) -> it.IntentSplit:
    facts, _ = it.single_token_facts(tokenizer, [f for f in it.FACTS if not cfg.relations or f.relation in cfg.relations])
    if 0 < cfg.max_facts < len(facts):
        facts = sorted(random.Random(cfg.seed).sample(facts, cfg.max_facts), key=facts.index)
    return it.generate(tokenizer, facts, heldout_fraction=cfg.heldout_fraction, n_train_contexts=cfg.n_train_contexts,
                       n_heldout_contexts=cfg.n_heldout_contexts, seed=cfg.seed, prepend_bos=prepend_bos)


def _evaluate(model: Any, split: it.IntentSplit, *, pad_id: int = 0, batch_size: int = 16) -> dict[str, float]:
    top1 = it.predict(model, it.flat(split.heldout), batch_size=batch_size, pad_id=pad_id)
    acc = it.accuracies(split.heldout, top1)
    return {"accuracy": (acc["context_accuracy"] + acc["prior_accuracy"]) / 2, **acc}


SPEC = register_task("intent", TaskSpec(
    description="answer from the context or from prior knowledge, as instructed (Minder et al. 2025); held-out context/prior accuracy",
    config_cls=IntentTaskConfig, generate_fn=_generate, examples_fn=it.to_examples, evaluate_fn=_evaluate,
))
