"""Registers ``priming``: learn Outlandish-like texts, then measure the keyword (Sun et al., "How new data permeates
LLM knowledge and how to dilute it", arXiv 2504.09522, 2025, §2).

The paper's "Outlandish" set (1,320 texts: 12 keywords x 4 themes x 11 styles x 10) is not available offline;
:mod:`~workbench.tasks.priming.generation` generates an equivalent synthetic set from templates. Every text pairs an
ordinary subject with a keyword of one theme (colours, places, jobs, foods) in a surprising way and ends with the
keyword, so the text before it is the keyword's own context::

    Local reporters confirmed on Tuesday that the bananas in the valley are vermilion.
    context = "Local reporters confirmed on Tuesday that the bananas in the valley are"   keyword = " vermilion"

Each theme has a pool of candidate keywords from everyday ("red") to rare ("chartreuse"); the study picks
keywords that span a wide range of prior probability *under the model being studied*
(:func:`spread_by_prior`). Each theme also has probe prefixes about unrelated subjects ("The color of sand
is") on which priming is measured, and each keyword a short gloss used by the stepping-stone rewrite
(§5.1: introduce the keyword through less surprising steps: "... are a brilliant red-orange, a colour
known as vermilion.").

The registered task: training items are the generated texts, learned with the causal-LM loss on every token (as
:func:`workbench.text_learning.learn_text` does). Held-out items are the theme's probe prefixes about unrelated
subjects ("The color of sand is"), each paired with every learned keyword of that theme: where priming (the keyword
leaking into other contexts) shows. Metrics, for one model (the priming score of the paper compares two:
:func:`probes.priming.log10_mean_ratio` of the probe log-probabilities):

* ``accuracy``: share of (probe, keyword) pairs whose greedy continuation is the keyword;
* ``probe_keyword_logprob_nats``: mean ``log P(keyword | probe)``;
* ``memorization_accuracy`` / ``own_keyword_logprob_nats``: the same on each learned text's own context.

:mod:`~workbench.tasks.priming.generation`: texts, keywords, the split; :mod:`~workbench.tasks.priming.evaluation`:
the metrics; :mod:`~workbench.tasks.priming.logprob`: ``log P(keyword | context)``.
"""

from workbench.tasks import TaskSpec, register_task
from workbench.tasks.priming.evaluation import evaluate_split
from workbench.tasks.priming.generation import (
    CLAUSES,
    KEYWORDS,
    ORDINARY_TEXTS,
    PROBES,
    STYLES,
    SUBJECTS,
    KeywordItem,
    PrimingConfig,
    PrimingSplit,
    PrimingText,
    context_ids,
    examples,
    generate,
    generate_split,
    keyword_ids,
    make_text,
    spread_by_prior,
)

SPEC = register_task("priming", TaskSpec(
    description="learn surprising texts that end in a keyword (Sun et al. 2025); keyword log-probability on unrelated probes",
    config_cls=PrimingConfig, generate_fn=generate_split, examples_fn=examples, evaluate_fn=evaluate_split,
))

__all__ = ["CLAUSES", "KEYWORDS", "ORDINARY_TEXTS", "PROBES", "SPEC", "STYLES", "SUBJECTS", "KeywordItem", "PrimingConfig",
           "PrimingSplit", "PrimingText", "context_ids", "evaluate_split", "examples", "generate", "generate_split", "keyword_ids",
           "make_text", "spread_by_prior"]
