"""Registers ``intent``: answer from the context or from prior knowledge, as the instruction says (context vs prior).

Source: Minder, Du, Stoehr, Monea, Wendler, West, Cotterell, "Controllable Context Sensitivity and the
Knob Behind It", ICLR 2025, §2–3. A prompt has an *instruction* (the intent), a *context* that may
contradict what the model knows, and a *query*::

    Ignore the context and answer from your own knowledge.
    Context: The capital of France is Rome.
    Query: The capital of France is          -> " Paris"   (prior intent)

    Answer from the context only, even if it is wrong.
    Context: The capital of France is Rome.
    Query: The capital of France is          -> " Rome"    (context intent)

Every (context, query) appears with both intents (an :class:`IntentPair`). The facts are a hand-written
list of well-known facts with one-word answers (:data:`FACTS`); contexts are counterfactual (the answer
is replaced by another answer of the same relation). Answers are scored on their single token
(``" Paris"``); facts whose answer is not one token for the tokenizer are dropped (or refused) by
:func:`single_token_facts`, and facts the model does not know zero-shot are removed by
:func:`known_facts`. Metrics: context accuracy, prior accuracy and pair accuracy (both intents of a pair
right), all top-1 over the full vocabulary at the last prompt token.

The registered task (:func:`~workbench.tasks.intent.generation.generate_split`): facts whose answer is one token for
the tokenizer (optionally some relations, a seeded sample of ``max_facts``). Unlike the context-knob study, generation
sees no model, so facts the model does not know zero-shot are kept: prior accuracy is bounded by what the model knows.
Examples: every prompt of every training pair (both intents), loss on the intent's answer token. Metrics (held-out
pairs, disjoint facts): ``accuracy`` (share of prompts answered as their instruction asks, the mean of the two below),
``context_accuracy``, ``prior_accuracy``, ``pair_accuracy``, ``context_prompt_gives_prior``,
``prior_prompt_gives_context``, ``n_pairs``. :mod:`~workbench.tasks.intent.generation`: facts, prompts, pairs, splits;
:mod:`~workbench.tasks.intent.evaluation`: predictions and accuracies.
"""

from workbench.tasks import TaskSpec, register_task
from workbench.tasks.intent.evaluation import accuracies, batches, evaluate_split, predict
from workbench.tasks.intent.generation import (
    FACTS,
    INSTRUCTIONS,
    INTENTS,
    RELATIONS,
    Fact,
    IntentPair,
    IntentPrompt,
    IntentSplit,
    IntentTaskConfig,
    Relation,
    answer_token,
    flat,
    generate,
    generate_split,
    known_facts,
    make_pairs,
    prompt_text,
    single_token_facts,
    split_facts,
    to_examples,
)

SPEC = register_task("intent", TaskSpec(
    description="answer from the context or from prior knowledge, as instructed (Minder et al. 2025); held-out context/prior accuracy",
    config_cls=IntentTaskConfig, generate_fn=generate_split, examples_fn=to_examples, evaluate_fn=evaluate_split,
))

__all__ = ["FACTS", "INSTRUCTIONS", "INTENTS", "RELATIONS", "SPEC", "Fact", "IntentPair", "IntentPrompt", "IntentSplit",
           "IntentTaskConfig", "Relation", "accuracies", "answer_token", "batches", "evaluate_split", "flat", "generate",
           "generate_split", "known_facts", "make_pairs", "predict", "prompt_text", "single_token_facts", "split_facts",
           "to_examples"]
