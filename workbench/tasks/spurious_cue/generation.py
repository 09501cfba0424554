"""Spurious-cue prompts (Casademunt et al. 2025, §5): the noun pools, templates and pronouns, the two designs, the
three splits (train / heldout: cues agree; ood: cues disagree), concept prompts from the other noun pool, examples and
tensors; the registered task's split (:func:`generate_split`, optionally with BOS)."""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from jaxtyping import Int
from torch import Tensor

from workbench.config import PositiveInt, check_fields
from workbench.data import Example
from workbench.errors import ConfigError

#: Single-token (SmolLM2) nouns by gender. ``kinship`` nouns are gendered by definition; ``professions``
#: carry a stereotyped gender only (WinoBias-style lists, Zhao et al. 2018).
NOUNS: dict[str, dict[str, tuple[str, ...]]] = {
    "kinship": {
        "female": ("mother", "woman", "queen", "actress", "girl", "sister", "aunt", "wife", "daughter", "lady",
                   "grandmother", "bride", "princess", "nun", "witch"),
        "male": ("father", "man", "king", "actor", "boy", "brother", "uncle", "husband", "son", "gentleman",
                 "grandfather", "groom", "prince", "monk", "nephew"),
    },
    "professions": {
        "female": ("nurse", "secretary", "librarian", "dancer", "maid", "teacher", "cleaner", "clerk",
                   "designer", "assistant"),
        "male": ("engineer", "mechanic", "carpenter", "pilot", "surgeon", "soldier", "programmer", "farmer",
                 "sheriff", "CEO"),
    },
}
#: Sentences with a blank; all give prompts of equal token length with SmolLM2's tokenizer.
TEMPLATES: dict[str, tuple[str, ...]] = {
    "subject": ("The {n} said that ___ was tired.", "The {n} hoped that ___ would win.", "The {n} knew that ___ had won.",
                "The {n} thinks that ___ is late.", "The {n} felt that ___ was right.", "The {n} wrote that ___ was busy.",
                "The {n} said that ___ was sick.", "The {n} knew that ___ is here."),
    "object": ("The {n} said that we saw ___.", "The {n} thinks that they like ___.", "The {n} felt that we hurt ___.",
               "The {n} wrote that we paid ___.", "The {n} said that I thanked ___.", "The {n} hoped that we met ___.",
               "The {n} knew that we like ___.", "The {n} thinks that we need ___."),
}
PRONOUNS: dict[tuple[str, str], str] = {("subject", "male"): "he", ("subject", "female"): "she",
                                        ("object", "male"): "him", ("object", "female"): "her"}
FORMATS: dict[str, str] = {"choice": "Fill in the blank: {sentence} Options: {first}, {second}. Answer:",
                           "judgement": "{sentence} Is this sentence grammatical? Answer:"}
DESIGNS = tuple(FORMATS)
_OTHER = {"male": "female", "female": "male", "subject": "object", "object": "subject"}


@dataclass(frozen=True, kw_only=True)
class SpuriousCueConfig:
    """Generation settings.

    Attributes:
        n_train, n_heldout, n_ood: prompts per split (train and heldout: cues agree; ood: cues disagree).
        nouns: noun pool of the task, ``"kinship"`` (explicit gender) or ``"professions"`` (stereotyped).
        design: ``"judgement"`` (grammatical? yes/no) or ``"choice"`` (pick one of two pronouns).
        seed: makes every split deterministic.

    Raises:
        ConfigError: a non-positive count, an unknown noun pool or design.
    """

    n_train: PositiveInt = 256
    n_heldout: PositiveInt = 128
    n_ood: PositiveInt = 128
    nouns: str = "kinship"
    design: str = "judgement"
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        if self.nouns not in NOUNS:
            raise ConfigError(f"SpuriousCueConfig.nouns must be one of {sorted(NOUNS)}, got {self.nouns!r}")
        if self.design not in DESIGNS:
            raise ConfigError(f"SpuriousCueConfig.design must be one of {list(DESIGNS)}, got {self.design!r}")


@dataclass(frozen=True)
class CuePrompt:
    """One prompt. ``answer_id`` is what grammar (cue A) gives, ``other_id`` the other answer token.

    ``options``: the two answers as words (``("she", "him")`` for ``choice``, ``("yes", "no")`` for
    ``judgement``); ``pronoun``: the pronoun written in the sentence (``judgement``) or the grammatical
    option (``choice``); ``grammatical``: whether the sentence as written is grammatical (always True for
    ``choice``, whose sentence has a blank). ``gender_id`` is the answer cue B gives (== ``answer_id``
    iff ``cues_agree``). ``noun_pos`` / ``pronoun_pos``: token positions of the noun and of the written
    pronoun (``judgement``) or the blank (``choice``) in ``input_ids`` — where gender is read.
    """

    text: str
    input_ids: tuple[int, ...] = field(repr=False)
    design: str
    noun: str
    noun_gender: str  # "female" | "male"
    slot: str  # "subject" | "object"
    pronoun: str
    options: tuple[str, str]
    answer: str
    answer_id: int
    other_id: int
    grammatical: bool
    cues_agree: bool
    noun_pos: int = -1
    pronoun_pos: int = -1

    @property
    def gender_id(self) -> int:
        return self.answer_id if self.cues_agree else self.other_id


@dataclass(frozen=True)
class SpuriousCueSplit:
    train: list[CuePrompt]
    heldout: list[CuePrompt]
    ood: list[CuePrompt]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def _single(tokenizer, word: str) -> int:
    ids = _ids(tokenizer, " " + word)
    if len(ids) != 1:
        raise ConfigError(f"{word!r} is {len(ids)} tokens for this tokenizer; the task needs single-token words")
    return ids[0]


def _positions(tokenizer, ids: list[int], noun: str, pronoun: str | None) -> dict[str, int]:
    """Token positions of `` {noun}`` and of `` {pronoun}`` (or of the blank's first token when ``None``)."""
    noun_pos = ids.index(_single(tokenizer, noun))
    if pronoun is not None:
        return {"noun_pos": noun_pos, "pronoun_pos": ids.index(_single(tokenizer, pronoun), noun_pos)}
    blank = next(i for i in range(noun_pos, len(ids)) if "_" in tokenizer.decode([ids[i]]))
    return {"noun_pos": noun_pos, "pronoun_pos": blank}


def _choice(tokenizer, noun: str, gender: str, template: str, slot: str, agree: bool, swap: bool) -> CuePrompt:
    """Blank + two options; the grammatical option has gender ``gender`` (agree) or the other one."""
    answer_gender = gender if agree else _OTHER[gender]
    answer = PRONOUNS[(slot, answer_gender)]
    other = PRONOUNS[(_OTHER[slot], _OTHER[answer_gender])]
    first, second = (other, answer) if swap else (answer, other)
    text = FORMATS["choice"].format(sentence=template.format(n=noun), first=first, second=second)
    ids = _ids(tokenizer, text)
    return CuePrompt(text=text, input_ids=tuple(ids), design="choice", noun=noun, noun_gender=gender,
                     slot=slot, pronoun=answer, options=(first, second), answer=" " + answer,
                     answer_id=_single(tokenizer, answer), other_id=_single(tokenizer, other), grammatical=True,
                     cues_agree=agree, **_positions(tokenizer, ids, noun, None))


def _judgement(tokenizer, noun: str, gender: str, template: str, slot: str, agree: bool) -> CuePrompt:
    """Pronoun written in (it refers to the noun, so it has the noun's gender); grammatical iff the noun
    is female (agree) or male (disagree)."""
    grammatical = (gender == "female") == agree
    pronoun = PRONOUNS[(slot if grammatical else _OTHER[slot], gender)]
    text = FORMATS["judgement"].format(sentence=template.replace("___", pronoun).format(n=noun))
    answer, other = ("yes", "no") if grammatical else ("no", "yes")
    ids = _ids(tokenizer, text)
    return CuePrompt(text=text, input_ids=tuple(ids), design="judgement", noun=noun,
                     noun_gender=gender, slot=slot, pronoun=pronoun, options=("yes", "no"), answer=" " + answer,
                     answer_id=_single(tokenizer, answer), other_id=_single(tokenizer, other),
                     grammatical=grammatical, cues_agree=agree, **_positions(tokenizer, ids, noun, pronoun))


def _all_prompts(tokenizer, nouns: dict[str, tuple[str, ...]], agree: bool, design: str) -> list[CuePrompt]:
    out = []
    for gender, pool in nouns.items():
        for noun in pool:
            _single(tokenizer, noun)
            for slot, templates in TEMPLATES.items():
                for template in templates:
                    if design == "choice":
                        out += [_choice(tokenizer, noun, gender, template, slot, agree, swap) for swap in (False, True)]
                    else:
                        out.append(_judgement(tokenizer, noun, gender, template, slot, agree))
    return out


def _check_lengths(prompts: Sequence[CuePrompt]) -> None:
    lengths = sorted({len(p.input_ids) for p in prompts})
    if len(lengths) > 1:
        raise ConfigError(f"prompts tokenize to different lengths {lengths} with this tokenizer; "
                          "edit TEMPLATES / NOUNS so that every prompt has the same token count")


def generate(tokenizer, cfg: SpuriousCueConfig) -> SpuriousCueSplit:
    """Sample the three splits, deterministic given ``cfg.seed``.

    ``train`` and ``heldout`` are disjoint samples of the cue-agreeing prompts; ``ood`` is a sample of
    the cue-disagreeing prompts (same nouns and templates; only the pairing of gender with the label is
    flipped). Each split is balanced over noun gender x slot as far as the counts allow (stratified
    round-robin).

    Raises:
        ConfigError: a noun or pronoun is not a single token, prompts of unequal token length, or more
            prompts requested than the pool holds.
    """
    nouns = NOUNS[cfg.nouns]
    rng = random.Random(cfg.seed)
    agree, disagree = _all_prompts(tokenizer, nouns, True, cfg.design), _all_prompts(tokenizer, nouns, False, cfg.design)
    _check_lengths(agree + disagree)
    if cfg.n_train + cfg.n_heldout > len(agree) or cfg.n_ood > len(disagree):
        raise ConfigError(f"requested {cfg.n_train}+{cfg.n_heldout} agreeing / {cfg.n_ood} disagreeing prompts; "
                          f"the {cfg.nouns!r} pool holds {len(agree)} of each for design {cfg.design!r}")
    agree_order = _stratified(agree, rng)
    train, heldout = agree_order[: cfg.n_train], agree_order[cfg.n_train : cfg.n_train + cfg.n_heldout]
    ood = _stratified(disagree, rng)[: cfg.n_ood]
    return SpuriousCueSplit(train=train, heldout=heldout, ood=ood)


def _stratified(prompts: list[CuePrompt], rng: random.Random, key=lambda p: (p.noun_gender, p.slot)) -> list[CuePrompt]:
    """Shuffle within each cell of ``key`` (default: noun gender x slot), then interleave the cells."""
    cells: dict[tuple, list[CuePrompt]] = {}
    for p in prompts:
        cells.setdefault(key(p), []).append(p)
    groups = [cells[k] for k in sorted(cells)]
    for g in groups:
        rng.shuffle(g)
    return [g[i] for i in range(max(len(g) for g in groups)) for g in groups if i < len(g)]


def concept_cue_prompts(tokenizer, task_nouns: str = "kinship", n: int = 64, seed: int = 0,
                        design: str = "judgement") -> list[CuePrompt]:
    """Gender-labelled prompts (``noun_gender``) for choosing CAFT components.

    The task's template (``design``) with nouns from the *other* pool (professions when the task uses
    kinship nouns and vice versa), so that the concept is identified on words never trained on. Cue-
    agreeing and cue-disagreeing prompts are mixed and stratified, so slot and answer are balanced and
    independent of the noun's gender: only gender separates the classes. Read them at the last token.

    Raises:
        ConfigError: unknown pool or design, or a word that is not a single token.
    """
    if task_nouns not in NOUNS or design not in DESIGNS:
        raise ConfigError(f"task_nouns must be one of {sorted(NOUNS)} and design one of {list(DESIGNS)}, "
                          f"got {task_nouns!r}, {design!r}")
    pool = NOUNS["professions" if task_nouns == "kinship" else "kinship"]
    both = _all_prompts(tokenizer, pool, True, design) + _all_prompts(tokenizer, pool, False, design)
    return _stratified(both, random.Random(seed), key=lambda p: (p.noun_gender, p.slot, p.answer))[:n]


def concept_prompts(tokenizer, task_nouns: str = "kinship", n: int = 64, seed: int = 0,
                    design: str = "judgement") -> tuple[list[tuple[int, ...]], list[int]]:
    """:func:`concept_cue_prompts` as ``(prompt ids, labels)``, label 1 = female noun."""
    prompts = concept_cue_prompts(tokenizer, task_nouns, n, seed, design)
    return [p.input_ids for p in prompts], [int(p.noun_gender == "female") for p in prompts]


def to_examples(prompts: Sequence[CuePrompt]) -> list[Example]:
    """Training examples for :func:`workbench.train.fit` (loss on the single answer token)."""
    return [Example(p.input_ids, (p.answer_id,)) for p in prompts]


def to_tensors(prompts: Sequence[CuePrompt]) -> tuple[Int[Tensor, "batch pos"], Int[Tensor, " batch"], Int[Tensor, " batch"]]:
    """``(input_ids, answer_ids, other_ids)``.

    Raises:
        ConfigError: empty list or prompts of unequal length.
    """
    if not prompts:
        raise ConfigError("to_tensors needs at least one prompt")
    _check_lengths(prompts)
    return (torch.tensor([p.input_ids for p in prompts]), torch.tensor([p.answer_id for p in prompts]),
            torch.tensor([p.other_id for p in prompts]))


def _with_bos(prompts: list[CuePrompt], bos: int) -> list[CuePrompt]:
    """The prompts with ``bos`` in front (token positions shift by one)."""
    return [dataclasses.replace(p, input_ids=(bos, *p.input_ids), noun_pos=p.noun_pos + 1, pronoun_pos=p.pronoun_pos + 1) for p in prompts]


def generate_split(tokenizer: Any, cfg: SpuriousCueConfig, prepend_bos: bool = False) -> SpuriousCueSplit:
    """The task's split: :func:`generate`, with the tokenizer's BOS in front of every prompt when ``prepend_bos``.

    Raises:
        ConfigError: as :func:`generate`; ``prepend_bos`` with a tokenizer that has no BOS.
    """
    split = generate(tokenizer, cfg)
    if not prepend_bos:
        return split
    if tokenizer.bos_token_id is None:
        raise ConfigError("prepend_bos=True but the tokenizer has no bos_token_id")
    bos = tokenizer.bos_token_id
    return SpuriousCueSplit(_with_bos(split.train, bos), _with_bos(split.heldout, bos), _with_bos(split.ood, bos))
