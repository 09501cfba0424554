"""Counterfactual prompts for patching the entity-tracking task (Prakash et al., ICLR 2024, §3–4).

Every counterfactual has the same number of boxes as its original, so both tokenize to the same length
and positions line up. Kinds:

* ``"random"`` — an unrelated prompt (new objects, labels and query): the corruption for activation / path
  patching; the original answer's logit difference drops where information is carried.
* DCM desiderata (§4): ``target_id`` is what the *original* prompt should answer if exactly the desideratum's
  variable were taken from the counterfactual.

  - ``"object"`` — same labels and query box, all objects new: heads carrying the object *value* make the model
    say the counterfactual's answer (target = its object, not in the original prompt).
  - ``"position"`` — new labels and objects, the query at another position ``j``: heads carrying the correct
    object's *position* make the model say the original's object at ``j``.
  - ``"box_label"`` — the counterfactual queries a label ``L_k`` of the original (``k`` ≠ the query) but places it
    at another position, with new objects: heads carrying the *box label* make the model say the original's
    object in box ``L_k``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from workbench.errors import ConfigError
from workbench.tasks.entity_tracking.generation import (
    DEFAULT_LABELS,
    DEFAULT_OBJECTS,
    BoxPrompt,
    _make_prompt,
    single_token_vocab,
)

KINDS = ("random", "object", "position", "box_label")


@dataclass(frozen=True)
class CounterfactualPair:
    """``original`` and ``counterfactual`` have equal token length; ``target_id`` as described per kind."""

    original: BoxPrompt
    counterfactual: BoxPrompt
    kind: str
    target_id: int
    candidate_ids: tuple[int, ...]


def _draw(kind: str, p: BoxPrompt, objects: list[str], labels: list[str], rng: random.Random):
    n, q = p.n_boxes, p.query_index
    new_objs = rng.sample([o for o in objects if o not in p.objects], n)
    if kind == "random":
        return new_objs, rng.sample(labels, n), rng.randrange(n), None
    if kind == "object":
        return new_objs, list(p.labels), q, ("cf", q)
    if kind == "position":
        j = rng.choice([i for i in range(n) if i != q])
        return new_objs, rng.sample([lab for lab in labels if lab not in p.labels], n), j, ("orig", j)
    k = rng.choice([i for i in range(n) if i != q])  # box_label: query L_k, placed elsewhere
    m = rng.choice([i for i in range(n) if i != k])
    others = rng.sample([lab for lab in labels if lab not in p.labels], n - 1)
    new_labels = others[:m] + [p.labels[k]] + others[m:]
    return new_objs, new_labels, m, ("orig", k)


def make_pairs(tokenizer, prompts: list[BoxPrompt], kind: str, seed: int = 0, max_tries: int = 50) -> list[CounterfactualPair]:
    """One counterfactual per original prompt (deterministic given ``seed``).

    Raises:
        ValueError: unknown kind, too few spare objects / labels, or no regularly tokenized counterfactual.
    """
    if kind not in KINDS:
        raise ConfigError(f"unknown counterfactual kind {kind!r}; known: {KINDS}")
    if not prompts:
        return []
    n = max(p.n_boxes for p in prompts)
    objects = single_token_vocab(tokenizer, DEFAULT_OBJECTS, min_count=2 * n)
    labels = single_token_vocab(tokenizer, DEFAULT_LABELS, min_count=2 * n)
    rng = random.Random(seed)
    cache: dict[str, list[int]] = {}
    out = []
    for p in prompts:
        for _ in range(max_tries):
            objs, labs, q, target = _draw(kind, p, objects, labels, rng)
            cf = _make_prompt(tokenizer, objs, labs, q, p.prepend_bos, cache)
            if cf is not None and cf.length == p.length:
                break
        else:
            raise ConfigError(f"no regularly tokenized {kind!r} counterfactual for {p.text!r} in {max_tries} tries")
        if target is None:
            tid, cands = p.answer_token_id, p.object_token_ids
        elif target[0] == "cf":
            tid, cands = cf.object_token_ids[target[1]], p.object_token_ids + (cf.object_token_ids[target[1]],)
        else:
            tid, cands = p.object_token_ids[target[1]], p.object_token_ids
        out.append(CounterfactualPair(p, cf, kind, tid, tuple(cands)))
    return out
