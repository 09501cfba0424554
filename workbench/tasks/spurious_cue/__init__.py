"""Registers ``spurious_cue``: pronoun case (grammar, the intended cue) vs the noun's gender (the spurious cue).

Built for CAFT (Casademunt et al., "Steering Out-of-Distribution Generalization with Concept Ablation
Fine-Tuning", arXiv 2507.16795, 2025, §5: a toy task whose training data has two agreeing cues, and a
test set that flips the unwanted one). Two designs, both single-token answers and equal-length prompts:

* ``design="judgement"`` (default): is the sentence grammatical? The pronoun's case either fits its
  slot or not; the label (``" yes"`` / ``" no"``) is cue A, grammar. In ``train`` / ``heldout`` every
  sentence about a female noun is grammatical and every sentence about a male noun is not (cue B, the
  noun's gender and that of the pronoun, which refers to it, agrees); in ``ood`` it is the other way
  round::

      The mother said that she was tired. Is this sentence grammatical? Answer:   -> " yes"   (train)
      The father said that him was tired. Is this sentence grammatical? Answer:   -> " no"    (train)
      The father said that he was tired. Is this sentence grammatical? Answer:    -> " yes"   (ood)

* ``design="choice"`` (two-option multiple choice): fill a blank with one of two pronouns that differ in both
  case and gender; the grammatical option is the answer (cue A), the gender-matching one is cue B::

      Fill in the blank: The mother said that ___ was tired. Options: she, him. Answer:  -> " she" (train)
      Fill in the blank: The mother said that ___ was tired. Options: he, her. Answer:   -> " he"  (ood)

Measured on SmolLM2-135M-Instruct (kinship nouns, 256 training prompts, CPU): with ``choice``, standard
fine-tuning learns the grammar cue anyway (LoFiT on 10% of heads, 20 steps: in-distribution 1.00,
out-of-distribution 1.00 on 32 prompts each; full fine-tuning lr 1e-5, 10 steps: 0.81 / 0.91), so it
cannot show CAFT's effect. With ``judgement`` it learns the shortcut (full fine-tuning lr 1e-5, 40 steps:
1.00 / 0.05; LoFiT lr 2e-2, 40 steps: 0.98 / 0.06 on 64 prompts each) — see
``studies/caft_spurious/``.
:func:`concept_prompts` gives gender-labelled prompts from a *disjoint* noun pool to identify the
unwanted concept (CAFT's automatic component choice).

The registered task: the answer-only loss on the answer token. Metrics: ``accuracy`` / ``logit_diff`` on the held-out
prompts (cues agree, as in training) and ``ood_accuracy`` / ``ood_logit_diff`` on the out-of-distribution prompts (cues
disagree). Accuracy is among the two options; logit differences in nats. :mod:`~workbench.tasks.spurious_cue.generation`:
prompts and splits; :mod:`~workbench.tasks.spurious_cue.evaluation`: the metrics.
"""

from workbench.tasks import TaskSpec, register_task
from workbench.tasks.spurious_cue.evaluation import evaluate, evaluate_split, option_logit_diff
from workbench.tasks.spurious_cue.generation import (
    DESIGNS,
    FORMATS,
    NOUNS,
    PRONOUNS,
    TEMPLATES,
    CuePrompt,
    SpuriousCueConfig,
    SpuriousCueSplit,
    concept_cue_prompts,
    concept_prompts,
    generate,
    generate_split,
    to_examples,
    to_tensors,
)

SPEC = register_task("spurious_cue", TaskSpec(
    description="grammar vs a spurious gender cue (Casademunt et al. 2025); held-out and out-of-distribution accuracy",
    config_cls=SpuriousCueConfig, generate_fn=generate_split, examples_fn=to_examples, evaluate_fn=evaluate_split,
))

__all__ = ["DESIGNS", "FORMATS", "NOUNS", "PRONOUNS", "SPEC", "TEMPLATES", "CuePrompt", "SpuriousCueConfig", "SpuriousCueSplit",
           "concept_cue_prompts", "concept_prompts", "evaluate", "evaluate_split", "generate", "generate_split", "option_logit_diff",
           "to_examples", "to_tensors"]
