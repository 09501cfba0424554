"""Priming and memorization metrics of the registered task (Sun et al. 2025, §2): greedy exact match of the keyword
and ``log P(keyword | context)`` (:mod:`workbench.tasks.priming.logprob`), on the probes and on the learned texts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from workbench.data import Example
from workbench.tasks.arithmetic.evaluation import exact_match
from workbench.tasks.priming.generation import KeywordItem, PrimingSplit
from workbench.tasks.priming.logprob import keyword_logprob


def _scores(model: Any, items: Sequence[KeywordItem], pad_id: int, batch_size: int) -> tuple[float, float]:
    """(share of items whose keyword is the greedy continuation, mean log P(keyword | context) in nats)."""
    logps = []
    for kw in dict.fromkeys(i.keyword for i in items):
        group = [i for i in items if i.keyword == kw]
        logps += keyword_logprob(model, [i.context_ids for i in group], group[0].keyword_ids, batch_size=batch_size, pad_id=pad_id).tolist()
    hits = exact_match(model, [Example(i.context_ids, i.keyword_ids) for i in items])
    return hits, sum(logps) / len(logps)


def evaluate_split(model: Any, split: PrimingSplit, *, pad_id: int = 0, batch_size: int = 32) -> dict[str, float]:
    """Priming on the held-out probes (``accuracy``, ``probe_keyword_logprob_nats``) and memorization on the learned
    texts' own contexts (``memorization_accuracy``, ``own_keyword_logprob_nats``)."""
    acc, probe_logp = _scores(model, split.heldout, pad_id, batch_size)
    mem, own_logp = _scores(model, split.train, pad_id, batch_size)
    return {"accuracy": acc, "probe_keyword_logprob_nats": probe_logp, "memorization_accuracy": mem, "own_keyword_logprob_nats": own_logp}
