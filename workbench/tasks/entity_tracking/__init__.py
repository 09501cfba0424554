"""Registers ``entity_tracking``: the entity tracking ("boxes") task of Prakash et al. (ICLR 2024), §2.

"Fine-Tuning Enhances Existing Mechanisms: A Case Study on Entity Tracking". A prompt binds objects to labelled
boxes and queries one box::

    The apple is in Box F, the key is in Box C, the ring is in Box A. Box C contains the
    -> " key"

:mod:`~workbench.tasks.entity_tracking.generation`: the settings, the prompts (kept only when they tokenize
regularly, so all prompts with the same ``n_boxes`` have the same token length), batches, tensors and the training
examples (answer-only loss on the object token). :mod:`~workbench.tasks.entity_tracking.evaluation`: the held-out
metrics, ``accuracy`` (top-1 over the vocabulary), ``accuracy_among_objects`` and ``logit_difference`` (nats).
Also :mod:`~workbench.tasks.entity_tracking.breakdown` (accuracy by the queried box's position and by number of boxes)
and :mod:`~workbench.tasks.entity_tracking.counterfactuals` (prompts for patching).
"""

from workbench.tasks import TaskSpec, register_task
from workbench.tasks.entity_tracking.evaluation import (
    accuracy,
    accuracy_among_objects,
    evaluate,
    evaluate_split,
    logit_difference,
)
from workbench.tasks.entity_tracking.generation import (
    DEFAULT_LABELS,
    DEFAULT_OBJECTS,
    MAX_BOXES,
    MIN_BOXES,
    BoxPrompt,
    EntityTrackingConfig,
    EntityTrackingSplit,
    batches,
    examples,
    generate,
    single_token_vocab,
    to_examples,
    to_tensors,
)

SPEC = register_task("entity_tracking", TaskSpec(
    description="which object is in the queried box (Prakash et al. 2024); held-out top-1 accuracy",
    config_cls=EntityTrackingConfig, generate_fn=generate, examples_fn=examples, evaluate_fn=evaluate_split,
    defaults={"n_train": 256, "n_heldout": 64},
))

__all__ = ["DEFAULT_LABELS", "DEFAULT_OBJECTS", "MAX_BOXES", "MIN_BOXES", "SPEC", "BoxPrompt", "EntityTrackingConfig",
           "EntityTrackingSplit", "accuracy", "accuracy_among_objects", "batches", "evaluate", "evaluate_split", "examples",
           "generate", "logit_difference", "single_token_vocab", "to_examples", "to_tensors"]
