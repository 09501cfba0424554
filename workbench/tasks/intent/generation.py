"""Intent prompts (Minder et al., ICLR 2025, §2–3): the relations and hand-written facts (:data:`FACTS`), the
instructions of the two intents, counterfactual contexts, prompts and pairs, the train / held-out split by fact, the
training examples, and the registered task's settings and split (:func:`generate_split`).

Facts whose answer is not one token for the tokenizer are dropped (or refused) by :func:`single_token_facts`; facts
the model does not know zero-shot are removed by :func:`known_facts`.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from workbench.config import NonNegativeInt, OpenFraction, PositiveInt, check_fields
from workbench.data import Example, final_position_logits, right_pad
from workbench.errors import ConfigError

INTENTS: tuple[str, str] = ("context", "prior")
#: The two instructions, one per intent (the only text that differs between the prompts of a pair).
INSTRUCTIONS: dict[str, str] = {
    "context": "Answer from the context only, even if it is wrong.",
    "prior": "Ignore the context and answer from your own knowledge.",
}


@dataclass(frozen=True)
class Relation:
    """A relation: ``query`` completes to the answer ("The capital of {s} is"); ``statement`` asserts an
    answer ("The capital of {s} is {a}.") and makes the (counterfactual) context."""

    query: str
    statement: str


RELATIONS: dict[str, Relation] = {
    "capital": Relation("The capital of {s} is", "The capital of {s} is {a}."),
    "city_country": Relation("{s} is a city in the country of", "{s} is a city in {a}."),
    "landmark_country": Relation("{s} is in the country of", "{s} is in {a}."),
    "language": Relation("The official language of {s} is", "The official language of {s} is {a}."),
    "continent": Relation("{s} is a country on the continent of", "{s} is a country on the continent of {a}."),
    "company_country": Relation("{s} is a company from the country of", "{s} is a company from {a}."),
}


@dataclass(frozen=True)
class Fact:
    """``relation`` (a key of :data:`RELATIONS`), ``subject`` and the true ``answer`` (one word, no space)."""

    relation: str
    subject: str
    answer: str

    @property
    def query(self) -> str:
        return RELATIONS[self.relation].query.format(s=self.subject)

    def statement(self, answer: str) -> str:
        return RELATIONS[self.relation].statement.format(s=self.subject, a=answer)


def _facts(relation: str, table: str) -> list[Fact]:
    rows = [r.split(":") for r in table.split(";") if r.strip()]
    return [Fact(relation, s.strip(), a.strip()) for s, a in rows]


#: ~220 well-known facts written for this task (many are dropped for a given tokenizer or model).
FACTS: tuple[Fact, ...] = tuple(
    _facts("capital", "France:Paris; Japan:Tokyo; Italy:Rome; Germany:Berlin; Spain:Madrid; Russia:Moscow; "
           "China:Beijing; England:London; Egypt:Cairo; Greece:Athens; Portugal:Lisbon; Austria:Vienna; Ireland:Dublin; "
           "Norway:Oslo; Sweden:Stockholm; Finland:Helsinki; Denmark:Copenhagen; Poland:Warsaw; Hungary:Budapest; "
           "the Czech Republic:Prague; the Netherlands:Amsterdam; Belgium:Brussels; Turkey:Ankara; Iran:Tehran; "
           "Iraq:Baghdad; Thailand:Bangkok; South Korea:Seoul; Indonesia:Jakarta; the Philippines:Manila; Kenya:Nairobi; "
           "Peru:Lima; Cuba:Havana; Canada:Ottawa; Australia:Canberra; Afghanistan:Kabul; "
           "Syria:Damascus; Lebanon:Beirut; Saudi Arabia:Riyadh; Venezuela:Caracas; Romania:Bucharest; Bulgaria:Sofia; "
           "Serbia:Belgrade; Scotland:Edinburgh; Wales:Cardiff; Vietnam:Hanoi; Nigeria:Abuja; Pakistan:Islamabad; "
           "Bangladesh:Dhaka; Nepal:Kathmandu; Iceland:Reykjavik; Switzerland:Bern; Morocco:Rabat; Chile:Santiago; "
           "Colombia:Bogota; Ukraine:Kyiv; Israel:Jerusalem; Ghana:Accra; Qatar:Doha")
    + _facts("city_country", "Paris:France; Lyon:France; Marseille:France; Tokyo:Japan; Osaka:Japan; Kyoto:Japan; "
             "Berlin:Germany; Munich:Germany; Hamburg:Germany; Frankfurt:Germany; Rome:Italy; Milan:Italy; Venice:Italy; "
             "Naples:Italy; Florence:Italy; Madrid:Spain; Barcelona:Spain; Seville:Spain; Valencia:Spain; Lisbon:Portugal; "
             "London:England; Manchester:England; Liverpool:England; Moscow:Russia; Beijing:China; Shanghai:China; "
             "Mumbai:India; Delhi:India; Sydney:Australia; Melbourne:Australia; Toronto:Canada; Vancouver:Canada; "
             "Montreal:Canada; Cairo:Egypt; Istanbul:Turkey; Athens:Greece; Vienna:Austria; Amsterdam:Netherlands; "
             "Dublin:Ireland; Stockholm:Sweden; Oslo:Norway; Warsaw:Poland; Krakow:Poland; Budapest:Hungary; "
             "Seoul:Korea; Bangkok:Thailand; Havana:Cuba; Lima:Peru; Zurich:Switzerland; Geneva:Switzerland; "
             "Brussels:Belgium; Copenhagen:Denmark; Helsinki:Finland; Edinburgh:Scotland; Glasgow:Scotland; Tehran:Iran; "
             "Baghdad:Iraq; Jakarta:Indonesia; Manila:Philippines; Nairobi:Kenya; Lagos:Nigeria; Karachi:Pakistan")
    + _facts("landmark_country", "The Eiffel Tower:France; The Louvre:France; The Colosseum:Italy; The Great Wall:China; "
             "The Taj Mahal:India; Big Ben:England; The Kremlin:Russia; The Acropolis:Greece; The Parthenon:Greece; "
             "The Leaning Tower of Pisa:Italy; The Sagrada Familia:Spain; The Alhambra:Spain; The Brandenburg Gate:Germany; "
             "The Sphinx:Egypt; The Great Pyramid of Giza:Egypt; Mount Fuji:Japan; The Sydney Opera House:Australia; "
             "Stonehenge:England; Machu Picchu:Peru; Angkor Wat:Cambodia; Petra:Jordan; Neuschwanstein Castle:Germany; "
             "The CN Tower:Canada; Hagia Sophia:Turkey; Red Square:Russia; Buckingham Palace:England; "
             "The Forbidden City:China; Mount Kilimanjaro:Tanzania; Chichen Itza:Mexico; Edinburgh Castle:Scotland; "
             "The Vatican:Italy; The Berlin Wall:Germany; The Blue Mosque:Turkey; The Matterhorn:Switzerland; "
             "The Rijksmuseum:Netherlands")
    + _facts("language", "France:French; Germany:German; Spain:Spanish; Italy:Italian; Japan:Japanese; China:Chinese; "
             "Russia:Russian; Brazil:Portuguese; Portugal:Portuguese; Mexico:Spanish; Greece:Greek; Turkey:Turkish; "
             "Poland:Polish; Sweden:Swedish; Norway:Norwegian; the Netherlands:Dutch; Egypt:Arabic; Korea:Korean; "
             "Iran:Persian; Israel:Hebrew; Thailand:Thai; Vietnam:Vietnamese; Finland:Finnish; Hungary:Hungarian; "
             "Denmark:Danish; Argentina:Spanish; Austria:German; England:English; Australia:English; Saudi Arabia:Arabic; "
             "Peru:Spanish; Colombia:Spanish; Ukraine:Ukrainian; Romania:Romanian; Czechia:Czech")
    + _facts("continent", "France:Europe; Germany:Europe; Italy:Europe; Spain:Europe; Poland:Europe; Sweden:Europe; "
             "Norway:Europe; Greece:Europe; Portugal:Europe; Austria:Europe; Japan:Asia; China:Asia; India:Asia; "
             "Thailand:Asia; Vietnam:Asia; Korea:Asia; Indonesia:Asia; Nepal:Asia; Pakistan:Asia; Mongolia:Asia; "
             "Egypt:Africa; Kenya:Africa; Nigeria:Africa; Ghana:Africa; Ethiopia:Africa; Morocco:Africa; Senegal:Africa; "
             "Zimbabwe:Africa; Uganda:Africa; Tanzania:Africa; Algeria:Africa; Sudan:Africa")
    + _facts("company_country", "Toyota:Japan; Sony:Japan; Honda:Japan; Nintendo:Japan; Samsung:Korea; BMW:Germany; "
             "Volkswagen:Germany; Mercedes:Germany; Adidas:Germany; Ferrari:Italy; Fiat:Italy; Nokia:Finland; IKEA:Sweden; "
             "Volvo:Sweden; Nestle:Switzerland; Renault:France; Peugeot:France; Lego:Denmark; Huawei:China; Siemens:Germany")
)


@dataclass(frozen=True)
class IntentPrompt:
    """One prompt: ``intent`` is "context" or "prior"; ``answer_id`` is the token it should produce
    (``context_answer_id`` for the context intent, ``prior_answer_id`` for the prior intent)."""

    fact: Fact
    intent: str
    counterfactual: str
    text: str
    input_ids: tuple[int, ...]
    context_answer_id: int
    prior_answer_id: int

    @property
    def answer_id(self) -> int:
        return self.context_answer_id if self.intent == "context" else self.prior_answer_id


@dataclass(frozen=True)
class IntentPair:
    """The same (context, query) with both intents."""

    context: IntentPrompt
    prior: IntentPrompt

    def prompts(self) -> tuple[IntentPrompt, IntentPrompt]:
        return self.context, self.prior


@dataclass(frozen=True)
class IntentSplit:
    """Train and held-out pairs built from disjoint fact sets (``train_facts`` ∩ ``heldout_facts`` = ∅)."""

    train: list[IntentPair]
    heldout: list[IntentPair]
    train_facts: list[Fact]
    heldout_facts: list[Fact]


def _ids(tokenizer, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def answer_token(tokenizer, answer: str) -> int | None:
    """The id of ``" " + answer`` when it is exactly one token, else ``None``."""
    ids = _ids(tokenizer, " " + answer)
    return ids[0] if len(ids) == 1 else None


def single_token_facts(tokenizer, facts: Sequence[Fact], on_multi: str = "drop") -> tuple[list[Fact], list[Fact]]:
    """Split ``facts`` into (kept, dropped) by whether ``" " + answer`` is one token for ``tokenizer``.

    Duplicates (same relation and subject) are kept once. ``on_multi="raise"`` refuses any multi-token
    answer instead of dropping it.

    Raises:
        ConfigError: an empty fact list, an unknown relation, ``on_multi`` not "drop"/"raise", a
            multi-token answer with ``on_multi="raise"``, or no fact left.
    """
    if on_multi not in ("drop", "raise"):
        raise ConfigError(f"on_multi must be 'drop' or 'raise', got {on_multi!r}")
    if not facts:
        raise ConfigError("the fact list is empty; pass at least one Fact (e.g. workbench.tasks.intent.FACTS)")
    bad_rel = sorted({f.relation for f in facts} - set(RELATIONS))
    if bad_rel:
        raise ConfigError(f"unknown relation(s) {bad_rel}; known: {sorted(RELATIONS)}")
    kept, dropped, seen = [], [], set()
    for f in facts:
        if (f.relation, f.subject) in seen:
            continue
        seen.add((f.relation, f.subject))
        (kept if answer_token(tokenizer, f.answer) is not None else dropped).append(f)
    if dropped and on_multi == "raise":
        raise ConfigError(f"{len(dropped)} answers are not single tokens for this tokenizer: "
                          f"{[' ' + f.answer for f in dropped][:10]}; use on_multi='drop' to skip them")
    if not kept:
        raise ConfigError(f"no fact has a single-token answer for this tokenizer (all {len(dropped)} dropped)")
    return kept, dropped


@torch.no_grad()
def known_facts(model: nn.Module, tokenizer, facts: Sequence[Fact], *, batch_size: int = 32, pad_id: int = 0,
                prepend_bos: bool = False) -> list[Fact]:
    """The facts whose bare query the model answers right zero-shot (greedy top-1 = the answer's token).

    Raises:
        ConfigError: empty ``facts``, a multi-token answer (filter with :func:`single_token_facts`
            first), or no fact known.
    """
    if not facts:
        raise ConfigError("known_facts() got an empty fact list")
    bos = [tokenizer.bos_token_id] if prepend_bos else []
    answers = [answer_token(tokenizer, f.answer) for f in facts]
    if None in answers:
        raise ConfigError(f"multi-token answer ' {facts[answers.index(None)].answer}'; filter with single_token_facts() first")
    kept = []
    for start in range(0, len(facts), batch_size):
        chunk = facts[start : start + batch_size]
        top = final_position_logits(model, *right_pad([bos + _ids(tokenizer, f.query) for f in chunk], pad_id)).argmax(-1).tolist()
        kept += [f for f, t, a in zip(chunk, top, answers[start : start + batch_size]) if t == a]
    if not kept:
        raise ConfigError(f"the model answers none of the {len(facts)} bare queries correctly; nothing to study")
    return kept


def prompt_text(fact: Fact, counterfactual: str, intent: str) -> str:
    """The prompt of ``fact`` with the counterfactual context and ``intent``'s instruction."""
    return f"{INSTRUCTIONS[intent]}\nContext: {fact.statement(counterfactual)}\nQuery: {fact.query}"


def make_pairs(tokenizer, facts: Sequence[Fact], *, n_contexts: int = 1, seed: int = 0, answer_pool: Sequence[Fact] | None = None,
               prepend_bos: bool = False) -> list[IntentPair]:
    """For each fact, ``n_contexts`` counterfactual contexts (distinct other answers of the same relation,
    drawn from ``answer_pool``'s answers, default ``facts``), each asked with both intents.

    Deterministic given ``seed``. A fact whose relation offers fewer than ``n_contexts`` other answers gets
    as many contexts as there are.

    Raises:
        ConfigError: ``n_contexts < 1`` or no pair could be made (e.g. each relation has one answer only).
    """
    if n_contexts < 1:
        raise ConfigError(f"n_contexts must be >= 1, got {n_contexts}")
    pool: dict[str, list[str]] = {}
    for f in answer_pool if answer_pool is not None else facts:
        if answer_token(tokenizer, f.answer) is not None and f.answer not in pool.setdefault(f.relation, []):
            pool[f.relation].append(f.answer)
    rng = random.Random(seed)
    bos = [tokenizer.bos_token_id] if prepend_bos else []
    pairs = []
    for f in facts:
        prior_id = answer_token(tokenizer, f.answer)
        others = sorted(a for a in pool.get(f.relation, []) if answer_token(tokenizer, a) != prior_id)
        for cf in rng.sample(others, min(n_contexts, len(others))):
            made = [IntentPrompt(f, intent, cf, t := prompt_text(f, cf, intent), tuple(bos + _ids(tokenizer, t)),
                                 answer_token(tokenizer, cf), prior_id) for intent in INTENTS]
            pairs.append(IntentPair(*made))
    if not pairs:
        raise ConfigError("no counterfactual context could be made: every relation needs >= 2 distinct answers")
    return pairs


def split_facts(facts: Sequence[Fact], heldout_fraction: float, seed: int) -> tuple[list[Fact], list[Fact]]:
    """Shuffle (seeded) and split facts into (train, held-out) with no fact in both; stratified by relation.

    Raises:
        ConfigError: ``heldout_fraction`` outside (0, 1), or an empty split.
    """
    if not 0 < heldout_fraction < 1:
        raise ConfigError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    rng = random.Random(seed)
    train, held = [], []
    for rel in sorted({f.relation for f in facts}):
        group = [f for f in facts if f.relation == rel]
        rng.shuffle(group)
        n_held = round(len(group) * heldout_fraction)
        held += group[:n_held]
        train += group[n_held:]
    if not train or not held:
        raise ConfigError(f"empty split after filtering: {len(train)} train and {len(held)} held-out facts from "
                          f"{len(facts)}; use more facts or another heldout_fraction")
    return train, held


def generate(tokenizer, facts: Sequence[Fact], *, heldout_fraction: float = 0.4, n_train_contexts: int = 2,
             n_heldout_contexts: int = 1, seed: int = 0, prepend_bos: bool = False) -> IntentSplit:
    """Train / held-out pairs from disjoint facts (counterfactual answers drawn from all ``facts``).

    Raises:
        ConfigError: an empty fact list or an empty split (see :func:`split_facts`).
    """
    if not facts:
        raise ConfigError("generate() got an empty fact list (did the zero-shot filter drop every fact?)")
    train_f, held_f = split_facts(facts, heldout_fraction, seed)
    train = make_pairs(tokenizer, train_f, n_contexts=n_train_contexts, seed=seed, answer_pool=facts, prepend_bos=prepend_bos)
    held = make_pairs(tokenizer, held_f, n_contexts=n_heldout_contexts, seed=seed + 1, answer_pool=facts, prepend_bos=prepend_bos)
    return IntentSplit(train, held, train_f, held_f)


def flat(pairs: Sequence[IntentPair]) -> list[IntentPrompt]:
    """The prompts of ``pairs``: pair 0's context and prior prompts, then pair 1's, ..."""
    return [p for pair in pairs for p in pair.prompts()]


def to_examples(pairs: Sequence[IntentPair]) -> list:
    """:class:`workbench.data.Example` per prompt (answer-only loss on the intent's answer token)."""
    return [Example(p.input_ids, (p.answer_id,)) for p in flat(pairs)]


@dataclass(frozen=True, kw_only=True)
class IntentTaskConfig:
    """Settings of the ``intent`` task.

    Attributes:
        relations: relations of :data:`RELATIONS` to use (empty = all).
        max_facts: keep at most this many single-token facts (seeded sample; 0 = all).
        heldout_fraction: share of facts held out (train and held-out facts are disjoint).
        n_train_contexts, n_heldout_contexts: counterfactual contexts per fact.
        seed: drives the sample, the split and the counterfactuals.

    Raises:
        ConfigError: unknown relation, ``heldout_fraction`` outside (0, 1), a count below its minimum.
    """

    relations: tuple[str, ...] = field(default_factory=tuple)
    max_facts: NonNegativeInt = 0
    heldout_fraction: OpenFraction = 0.4
    n_train_contexts: PositiveInt = 2
    n_heldout_contexts: PositiveInt = 1
    seed: int = 0

    def __post_init__(self) -> None:
        check_fields(self)
        object.__setattr__(self, "relations", tuple(self.relations))
        bad = sorted(set(self.relations) - set(RELATIONS))
        if bad:
            raise ConfigError(f"IntentTaskConfig.relations: unknown {bad}; known: {sorted(RELATIONS)}")


def generate_split(tokenizer: Any, cfg: IntentTaskConfig, prepend_bos: bool = False) -> IntentSplit:
    """The task's split: the single-token facts of ``cfg.relations`` (a seeded sample of ``cfg.max_facts``), through
    :func:`generate`."""
    facts, _ = single_token_facts(tokenizer, [f for f in FACTS if not cfg.relations or f.relation in cfg.relations])
    if 0 < cfg.max_facts < len(facts):
        facts = sorted(random.Random(cfg.seed).sample(facts, cfg.max_facts), key=facts.index)
    return generate(tokenizer, facts, heldout_fraction=cfg.heldout_fraction, n_train_contexts=cfg.n_train_contexts,
                    n_heldout_contexts=cfg.n_heldout_contexts, seed=cfg.seed, prepend_bos=prepend_bos)
