"""Registers ``entity_tracking`` (Prakash et al., ICLR 2024, §2): which object is in the queried box?

Examples: the answer-only loss on the object token. Metrics (held-out prompts): ``accuracy`` (top-1
over the vocabulary), ``accuracy_among_objects`` and ``logit_difference`` (nats).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.tasks import TaskSpec, register_task
from workbench.tasks import entity_tracking as et
from workbench.train import Example


def examples(prompts: Sequence[et.BoxPrompt]) -> list[Example]:
    """One :class:`~workbench.train.Example` per prompt (loss on the answer object's token)."""
    return [Example(p.input_ids, (p.answer_token_id,)) for p in prompts]


def _generate(tokenizer: Any, cfg: et.EntityTrackingConfig, prepend_bos: bool) -> et.EntityTrackingSplit:
    return et.generate(tokenizer, cfg, prepend_bos=prepend_bos)


def _evaluate(model: Any, split: et.EntityTrackingSplit, *, pad_id: int = 0, batch_size: int = 32) -> dict[str, float]:
    return et.evaluate(model, split.heldout, batch_size=batch_size)  # equal-length batches: no padding


SPEC = register_task("entity_tracking", TaskSpec(
    description="which object is in the queried box (Prakash et al. 2024); held-out top-1 accuracy",
    config_cls=et.EntityTrackingConfig, generate_fn=_generate, examples_fn=examples, evaluate_fn=_evaluate,
    defaults={"n_train": 256, "n_heldout": 64},
))
