"""Entity tracking prompts (Prakash et al., ICLR 2024, §2): settings, generation, batching, tensors, examples.

"Fine-Tuning Enhances Existing Mechanisms: A Case Study on Entity Tracking".
A prompt binds objects to labelled boxes and queries one box::

    The apple is in Box F, the key is in Box C, the ring is in Box A. Box C contains the
    -> " key"

Prompts are generated for a given tokenizer and kept only when they tokenize
*regularly* (every object and label is one token in context), so all prompts
with the same ``n_boxes`` have the same token length (``7 * n_boxes + 4``, plus
one with BOS). Token positions are indices into ``input_ids``; with
``generate(..., prepend_bos=True)`` the BOS is at position 0 and every
position / length already includes it.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.config import PositiveInt, check_fields
from workbench.data import Example
from workbench.errors import ConfigError

DEFAULT_OBJECTS: tuple[str, ...] = tuple(
    "apple key ring book coin cup hat bell ball bag pen map car boat train plane bird "
    "fish cat dog egg fan fork knife spoon plate bowl bottle bread cake shoe sock shirt "
    "coat lamp clock watch phone camera chair table bed door window rock leaf stone "
    "shell flower tree cookie drum guitar flag kite rope glove mask brush comb toy doll "
    "paper letter card ticket wallet pencil candle".split()
)
DEFAULT_LABELS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
MIN_BOXES, MAX_BOXES = 3, 7


@dataclass(frozen=True, kw_only=True)
class EntityTrackingConfig:
    """Generation settings. ``n_boxes`` is one count or a tuple sampled uniformly per prompt."""

    n_boxes: int | tuple[int, ...] = 3
    n_train: PositiveInt
    n_heldout: PositiveInt
    seed: int = 0
    objects: tuple[str, ...] | None = None
    labels: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        nb = (self.n_boxes,) if isinstance(self.n_boxes, int) else tuple(self.n_boxes)
        if not nb or any(
            isinstance(n, bool) or not isinstance(n, int) or not MIN_BOXES <= n <= MAX_BOXES
            for n in nb
        ):
            raise ConfigError(
                f"n_boxes must be an int or non-empty tuple of ints in "
                f"{MIN_BOXES}..{MAX_BOXES}, got {self.n_boxes!r}"
            )
        if not isinstance(self.n_boxes, int):
            object.__setattr__(self, "n_boxes", nb)
        check_fields(self)
        for name in ("objects", "labels"):
            pool = getattr(self, name)
            if pool is None:
                continue
            pool = tuple(pool)
            if len(set(pool)) != len(pool) or len(pool) < max(nb):
                raise ConfigError(
                    f"{name} must hold at least max(n_boxes)={max(nb)} distinct strings, "
                    f"got {len(set(pool))}"
                )
            object.__setattr__(self, name, pool)

    @property
    def box_counts(self) -> tuple[int, ...]:
        return (self.n_boxes,) if isinstance(self.n_boxes, int) else self.n_boxes


@dataclass(frozen=True)
class BoxPrompt:
    """One prompt. Positions index ``input_ids`` (which includes BOS iff ``prepend_bos``).

    ``query_label_pos``: the earlier (context) mention of the queried box's label,
    e.g. the " C" of "the key is in Box C" — the position structure-reader heads
    read from. ``query_mention_pos``: the queried object's token (" key").
    ``object_token_ids[i]`` is the id of " <objects[i]>".
    """

    text: str
    answer: str
    objects: tuple[str, ...]
    labels: tuple[str, ...]
    query_label: str
    query_index: int
    n_boxes: int
    answer_token_id: int
    object_token_ids: tuple[int, ...]
    query_label_pos: int
    query_mention_pos: int
    length: int
    input_ids: tuple[int, ...] = field(repr=False)
    prepend_bos: bool = False


@dataclass(frozen=True)
class EntityTrackingSplit:
    train: list[BoxPrompt]
    heldout: list[BoxPrompt]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def single_token_vocab(
    tokenizer, words: Sequence[str], leading_space: bool = True, min_count: int = 1
) -> list[str]:
    """Words whose ``" word"`` (or ``"word"``) is exactly one token; order preserved.

    Raises ValueError if fewer than ``min_count`` survive.
    """
    prefix = " " if leading_space else ""
    kept = [w for w in words if len(_ids(tokenizer, prefix + w)) == 1]
    if len(kept) < min_count:
        raise ConfigError(
            f"only {len(kept)} of {len(words)} candidates are single tokens for this "
            f"tokenizer (need >= {min_count}): {kept}"
        )
    return kept


def _pieces(objects: Sequence[str], labels: Sequence[str], q: int) -> list[tuple[str, str]]:
    """Template as (role, text) pieces, one token each when tokenized regularly."""
    out: list[tuple[str, str]] = []
    for i, (o, lab) in enumerate(zip(objects, labels)):
        out += [("", "The" if i == 0 else " the"), (f"obj{i}", " " + o), ("", " is"),
                ("", " in"), ("", " Box"), (f"lab{i}", " " + lab),
                ("", "." if i == len(objects) - 1 else ",")]
    return out + [("", " Box"), ("qlab", " " + labels[q]), ("", " contains"), ("", " the")]


def _make_prompt(tokenizer, objects, labels, q, prepend_bos, cache) -> BoxPrompt | None:
    pieces = _pieces(objects, labels, q)
    expected: list[int] = []
    for _, t in pieces:
        if t not in cache:
            cache[t] = _ids(tokenizer, t)
        expected += cache[t]
    text = "".join(t for _, t in pieces)
    if len(expected) != len(pieces) or _ids(tokenizer, text) != expected:
        return None  # irregular tokenization in context
    off = 1 if prepend_bos else 0
    if prepend_bos:
        if tokenizer.bos_token_id is None:
            raise ConfigError("prepend_bos=True but the tokenizer has no bos_token_id")
        expected = [tokenizer.bos_token_id] + expected
    roles = {r: i + off for i, (r, _) in enumerate(pieces) if r}
    obj_ids = tuple(cache[" " + o][0] for o in objects)
    return BoxPrompt(
        text=text, answer=" " + objects[q], objects=tuple(objects), labels=tuple(labels),
        query_label=labels[q], query_index=q, n_boxes=len(objects),
        answer_token_id=obj_ids[q], object_token_ids=obj_ids,
        query_label_pos=roles[f"lab{q}"], query_mention_pos=roles[f"obj{q}"],
        length=len(expected), input_ids=tuple(expected), prepend_bos=prepend_bos,
    )


def generate(tokenizer, cfg: EntityTrackingConfig, prepend_bos: bool = False) -> EntityTrackingSplit:
    """Sample ``cfg.n_train`` + ``cfg.n_heldout`` unique, regularly tokenized prompts.

    Deterministic given ``cfg.seed`` (a private ``random.Random``). Objects and labels
    are distinct within a prompt; the queried box is uniform. Train and held-out
    share no prompt text. Raises ValueError if not enough unique prompts arise.
    """
    need = max(cfg.box_counts)
    objects = single_token_vocab(tokenizer, cfg.objects or DEFAULT_OBJECTS, min_count=need)
    labels = single_token_vocab(tokenizer, cfg.labels or DEFAULT_LABELS, min_count=need)
    rng = random.Random(cfg.seed)
    total = cfg.n_train + cfg.n_heldout
    max_attempts = 20 * total + 1000
    seen: set[str] = set()
    out: list[BoxPrompt] = []
    cache: dict[str, list[int]] = {}
    attempts = irregular = 0
    while len(out) < total and attempts < max_attempts:
        attempts += 1
        n = rng.choice(cfg.box_counts)
        p = _make_prompt(tokenizer, rng.sample(objects, n), rng.sample(labels, n),
                         rng.randrange(n), prepend_bos, cache)
        if p is None:
            irregular += 1
        elif p.text not in seen:
            seen.add(p.text)
            out.append(p)
    if len(out) < total:
        raise ConfigError(
            f"could only produce {len(out)} unique regular prompts of {total} requested "
            f"(n_train + n_heldout) after {attempts} attempts ({irregular} tokenized "
            f"irregularly); enlarge the object/label pools or request fewer prompts"
        )
    train, heldout = out[: cfg.n_train], out[cfg.n_train :]
    assert not {p.text for p in train} & {p.text for p in heldout}
    return EntityTrackingSplit(train=train, heldout=heldout)


def batches(
    prompts: Sequence[BoxPrompt], batch_size: int, shuffle_seed: int | None = None
) -> Iterator[list[BoxPrompt]]:
    """Equal-length batches (never mixing token lengths), deterministic.

    Without ``shuffle_seed``: groups by ascending length, input order within a group.
    With it: items shuffled within each group and batch order shuffled.
    """
    if batch_size < 1:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    groups: dict[int, list[BoxPrompt]] = {}
    for p in prompts:
        groups.setdefault(p.length, []).append(p)
    rng = random.Random(shuffle_seed) if shuffle_seed is not None else None
    out: list[list[BoxPrompt]] = []
    for length in sorted(groups):
        g = list(groups[length])
        if rng is not None:
            rng.shuffle(g)
        out += [g[i : i + batch_size] for i in range(0, len(g), batch_size)]
    if rng is not None:
        rng.shuffle(out)
    yield from out


def to_tensors(
    prompts: Sequence[BoxPrompt],
) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"], Int[Tensor, "batch n_boxes"]]:
    """(input_ids [batch, pos], answer_ids [batch], object_ids [batch, n_boxes]) as LongTensors."""
    if not prompts:
        raise ConfigError("to_tensors needs at least one prompt")
    lengths = sorted({p.length for p in prompts})
    boxes = sorted({p.n_boxes for p in prompts})
    if len(lengths) > 1 or len(boxes) > 1:
        raise ConfigError(
            f"prompts of unequal length: token lengths {lengths}, n_boxes {boxes}; "
            f"group them with batches()"
        )
    return (
        torch.tensor([p.input_ids for p in prompts], dtype=torch.long),
        torch.tensor([p.answer_token_id for p in prompts], dtype=torch.long),
        torch.tensor([p.object_token_ids for p in prompts], dtype=torch.long),
    )


def to_examples(prompts: Sequence[BoxPrompt]) -> list[tuple[str, str]]:
    """(prompt text, answer with leading space) pairs for generic trainers."""
    return [(p.text, p.answer) for p in prompts]


def examples(prompts: Sequence[BoxPrompt]) -> list[Example]:
    """One :class:`~workbench.data.Example` per prompt (answer-only loss on the answer object's token): the task's
    training examples."""
    return [Example(p.input_ids, (p.answer_token_id,)) for p in prompts]
