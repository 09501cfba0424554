"""Registers ``priming`` (Sun et al. 2025, §2): learn Outlandish-like texts, then measure the keyword.

Training items are the generated texts, learned with the causal-LM loss on every token (as
:func:`workbench.text_learning.learn_text` does). Held-out items are the theme's probe prefixes about
unrelated subjects ("The color of sand is"), each paired with every learned keyword of that theme: where
priming (the keyword leaking into other contexts) shows. Metrics, for one model (the priming score of the
paper compares two: :func:`probes.priming.log10_mean_ratio` of the probe log-probabilities):

* ``accuracy``: share of (probe, keyword) pairs whose greedy continuation is the keyword;
* ``probe_keyword_logprob_nats``: mean ``log P(keyword | probe)``;
* ``memorization_accuracy`` / ``own_keyword_logprob_nats``: the same on each learned text's own context.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from workbench.tasks import TaskSpec, register_task
from workbench.tasks import priming as pt
from workbench.tasks.arithmetic import exact_match
from workbench.tasks.priming.logprob import keyword_logprob
from workbench.train import Example


@dataclass(frozen=True)
class KeywordItem:
    """A context and the keyword after it. ``text_ids``: the whole text to learn (training items only).
    Token ids include the BOS when the split was generated with ``prepend_bos``."""

    keyword: str
    theme: str
    context: str
    context_ids: tuple[int, ...]
    keyword_ids: tuple[int, ...]
    text_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class PrimingSplit:
    """``train``: one item per generated text; ``heldout``: (probe prefix, keyword) items; ``texts``: the
    generated :class:`~workbench.tasks.priming.PrimingText` (same order as ``train``)."""

    train: list[KeywordItem]
    heldout: list[KeywordItem]
    texts: list[pt.PrimingText]


def _generate(tokenizer: Any, cfg: pt.PrimingConfig, prepend_bos: bool) -> PrimingSplit:
    texts = pt.generate(cfg)
    kw_ids = {t.keyword: tuple(pt.keyword_ids(tokenizer, t.keyword)) for t in texts}
    contexts = pt.context_ids(tokenizer, [t.context for t in texts], prepend_bos)
    whole = pt.context_ids(tokenizer, [t.text for t in texts], prepend_bos)
    train = [KeywordItem(t.keyword, t.theme, t.context, tuple(c), kw_ids[t.keyword], tuple(w)) for t, c, w in zip(texts, contexts, whole)]
    themes = {t.keyword: t.theme for t in texts}  # keyword -> theme, first-seen order
    probes = {theme: pt.context_ids(tokenizer, pt.PROBES[theme], prepend_bos) for theme in set(themes.values())}
    heldout = [KeywordItem(kw, theme, probe, tuple(ids), kw_ids[kw])
               for kw, theme in themes.items() for probe, ids in zip(pt.PROBES[theme], probes[theme])]
    return PrimingSplit(train, heldout, texts)


def examples(items: Sequence[KeywordItem]) -> list[Example]:
    """Training items: the causal-LM loss on every token of the text after the first; items without a text
    (probes): the loss on the keyword after its context."""
    return [Example(i.text_ids[:1], i.text_ids[1:]) if i.text_ids else Example(i.context_ids, i.keyword_ids) for i in items]


def _scores(model: Any, items: Sequence[KeywordItem], pad_id: int, batch_size: int) -> tuple[float, float]:
    """(share of items whose keyword is the greedy continuation, mean log P(keyword | context) in nats)."""
    logps = []
    for kw in dict.fromkeys(i.keyword for i in items):
        group = [i for i in items if i.keyword == kw]
        logps += keyword_logprob(model, [i.context_ids for i in group], group[0].keyword_ids, batch_size=batch_size, pad_id=pad_id).tolist()
    hits = exact_match(model, [Example(i.context_ids, i.keyword_ids) for i in items])
    return hits, sum(logps) / len(logps)


def _evaluate(model: Any, split: PrimingSplit, *, pad_id: int = 0, batch_size: int = 32) -> dict[str, float]:
    acc, probe_logp = _scores(model, split.heldout, pad_id, batch_size)
    mem, own_logp = _scores(model, split.train, pad_id, batch_size)
    return {"accuracy": acc, "probe_keyword_logprob_nats": probe_logp, "memorization_accuracy": mem, "own_keyword_logprob_nats": own_logp}


SPEC = register_task("priming", TaskSpec(
    description="learn surprising texts that end in a keyword (Sun et al. 2025); keyword log-probability on unrelated probes",
    config_cls=pt.PrimingConfig, generate_fn=_generate, examples_fn=examples, evaluate_fn=_evaluate,
))
