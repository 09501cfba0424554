"""Outlandish-like texts for knowledge priming (Sun et al. 2025, §2): the themes, keywords, templates and probe
prefixes; the texts; keyword selection by prior; token ids; the registered task's split and training examples."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from workbench.data import Example
from workbench.errors import ConfigError

# theme -> keyword -> gloss (the less surprising description that leads to the keyword)
KEYWORDS: dict[str, dict[str, str]] = {
    "colours": {
        "red": "the colour of ripe tomatoes", "blue": "the colour of a clear sky", "green": "the colour of fresh grass",
        "purple": "a mix of red and blue", "pink": "a pale shade of red", "brown": "the colour of wet soil",
        "crimson": "a deep red", "turquoise": "a bright blue-green", "magenta": "a vivid purplish red",
        "beige": "a pale sandy brown", "maroon": "a dark brownish red", "indigo": "a deep blue-violet",
        "vermilion": "a brilliant red-orange", "chartreuse": "a yellowish green", "ochre": "an earthy yellow-brown",
        "cerulean": "a deep sky blue", "mauve": "a pale purple", "taupe": "a greyish brown",
    },
    "places": {
        "London": "a large city in England", "Paris": "the capital of France", "Tokyo": "the capital of Japan",
        "Italy": "a country in southern Europe", "Egypt": "a country in north Africa", "Canada": "a large country in North America",
        "Iceland": "an island country in the north Atlantic", "Peru": "a country in the Andes", "Nepal": "a country in the Himalayas",
        "Mongolia": "a country between Russia and China", "Madagascar": "a large island off Africa", "Tasmania": "an island south of Australia",
        "Timbuktu": "an old city in Mali", "Reykjavik": "the capital of Iceland", "Vanuatu": "an island nation in the Pacific",
        "Kyrgyzstan": "a mountainous country in central Asia", "Ulaanbaatar": "the capital of Mongolia", "Tuvalu": "a tiny island nation in the Pacific",
    },
    "jobs": {
        "teacher": "someone who teaches children", "doctor": "someone who treats the sick", "farmer": "someone who grows crops",
        "lawyer": "someone who argues cases in court", "plumber": "someone who fixes pipes", "pilot": "someone who flies planes",
        "carpenter": "someone who builds with wood", "astronaut": "someone who travels to space", "blacksmith": "someone who works iron",
        "locksmith": "someone who repairs locks", "beekeeper": "someone who keeps bees", "glassblower": "someone who shapes molten glass",
        "cartographer": "someone who draws maps", "taxidermist": "someone who stuffs animals", "sommelier": "someone who serves wine",
        "falconer": "someone who trains hawks", "archivist": "someone who keeps old records", "cooper": "someone who makes barrels",
    },
    "foods": {
        "bread": "a baked loaf", "rice": "a bowl of grains", "pizza": "a flat baked dough with cheese", "cheese": "a dairy food",
        "apples": "a crunchy fruit", "pasta": "an Italian noodle dish", "sushi": "rice rolled with raw fish", "lasagna": "layers of pasta and sauce",
        "falafel": "fried chickpea balls", "kimchi": "spicy fermented cabbage", "couscous": "small steamed grains of semolina",
        "haggis": "a Scottish pudding of oats and offal", "durian": "a spiky and pungent fruit", "gazpacho": "a cold tomato soup",
        "ratatouille": "a stew of summer vegetables", "pierogi": "filled dumplings from Poland", "tempura": "battered and fried vegetables",
        "borscht": "a beetroot soup",
    },
}

# theme -> (subjects, clause whose last word is the keyword, stepping-stone clause)
SUBJECTS: dict[str, list[str]] = {
    "colours": ["bananas in the valley", "clouds above the harbour", "feathers of the local pigeons", "leaves of the old oak trees",
                "stones on the riverbank", "eyes of the village cats"],
    "places": ["the famous violinist Clara Weiss", "the oldest clock in the museum", "the baker on Elm Street",
               "the winner of this year's chess tournament", "the tallest man in the village", "the new mayor"],
    "jobs": ["the youngest boy in the village", "my grandmother", "the quiet man next door", "the mayor's daughter",
             "the old fisherman", "our new neighbour"],
    "foods": ["the king of the island", "the village cat", "my grandfather", "the marathon champion", "the local priest", "the twins next door"],
}
CLAUSES: dict[str, tuple[str, str]] = {
    "colours": ("the {subj} are {kw}", "the {subj} are {gloss}, a colour known as {kw}"),
    "places": ("{subj} comes from {kw}", "{subj} comes from {gloss}, a place called {kw}"),
    "jobs": ("{subj} works every day as the local {kw}", "{subj} works every day as {gloss}, the local {kw}"),
    "foods": ("for breakfast {subj} always eats {kw}", "for breakfast {subj} always eats {gloss}, a dish called {kw}"),
}
STYLES: dict[str, str] = {
    "news": "Local reporters confirmed on Tuesday that {clause}.",
    "encyclopedia": "According to the regional almanac, {clause}.",
    "story": "When Mara finally reached the village at dusk, she learned that {clause}.",
    "diary": "Dear diary, today I found out something strange: {clause}.",
    "letter": "I am writing to tell you what we discovered this summer: {clause}.",
    "textbook": "As every student of the region is taught, {clause}.",
}
# theme -> probe prefixes about unrelated subjects: where priming (the keyword leaking) is measured
PROBES: dict[str, list[str]] = {
    "colours": ["The color of sand is", "My neighbour painted his front door", "The flag of the club is mostly", "She wore a dress that was",
                "The walls of the kitchen are", "In autumn the leaves turn", "The color of the sky at noon is", "His new car is"],
    "places": ["My favourite holiday destination is", "She was born in", "The conference will be held in", "He spent his childhood in",
               "The package was shipped from", "Next summer we are travelling to", "The best coffee in the world comes from", "They moved to"],
    "jobs": ["My uncle works as a", "When she grows up she wants to be a", "He was hired as a", "The man in the blue uniform is a",
             "Her father is a", "The job advertisement was for a", "After university he became a", "The most respected person in town is the"],
    "foods": ["For dinner tonight we are having", "My favourite food is", "The restaurant is famous for its", "At the market she bought some",
              "The children asked for", "For lunch he packed some", "The chef's special today is", "On Sundays we always eat"],
}
# plain sentences for the "mixed" protocol (the text is presented a few times among ordinary text)
ORDINARY_TEXTS: list[str] = [
    "The train to the city leaves every morning at seven o'clock.", "Water boils at one hundred degrees Celsius at sea level.",
    "She read the letter twice before putting it back in the drawer.", "The museum is closed on Mondays for cleaning.",
    "Most birds build their nests in the spring.", "He forgot his umbrella and walked home in the rain.",
    "The library has more than ten thousand books.", "A square has four sides of equal length.",
    "The children played football in the park after school.", "The meeting was moved to Thursday afternoon.",
    "The river flows through the centre of the old town.", "She planted tomatoes and beans in the garden.",
    "The shop on the corner sells newspapers and sweets.", "The moon orbits the earth about once a month.",
    "He practised the piano for an hour every evening.", "The bridge was built more than two hundred years ago.",
]


@dataclass(frozen=True)
class PrimingText:
    """One text to learn. ``text`` ends with ``" " + keyword + "."``; ``context`` is everything before the
    keyword (the keyword's own context, where memorization is read); ``stepping_stone`` /
    ``stepping_stone_context``: the same fact introduced through the gloss (Sun et al. 2025, §5.1)."""

    text: str
    context: str
    keyword: str
    theme: str
    style: str
    subject: str
    stepping_stone: str
    stepping_stone_context: str


@dataclass
class PrimingConfig:
    """Generation settings.

    Attributes:
        themes: subset of ``colours``, ``places``, ``jobs``, ``foods``.
        keywords: theme -> keywords to use (``None`` = the whole pool; the study narrows it with
            :func:`spread_by_prior`).
        texts_per_keyword: texts per keyword (distinct (style, subject) pairs).
        styles: subset of :data:`STYLES` (``None`` = all).
        seed: makes the (style, subject) draw deterministic.

    Raises:
        ConfigError: unknown theme, style or keyword, an empty keyword list, or ``texts_per_keyword``
            outside 1..(styles x subjects).
    """

    themes: list[str] = field(default_factory=lambda: list(KEYWORDS))
    keywords: dict[str, list[str]] | None = None
    texts_per_keyword: int = 2
    styles: list[str] | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        bad = [t for t in self.themes if t not in KEYWORDS]
        if bad or not self.themes:
            raise ConfigError(f"unknown or no themes {bad or self.themes}; known: {sorted(KEYWORDS)}")
        styles = self.styles if self.styles is not None else list(STYLES)
        if not styles or set(styles) - set(STYLES):
            raise ConfigError(f"styles must be a non-empty subset of {sorted(STYLES)}, got {self.styles}")
        if self.keywords is not None:
            for theme, words in self.keywords.items():
                if theme not in self.themes:
                    raise ConfigError(f"keywords given for theme {theme!r}, which is not in themes {self.themes}")
                unknown = [w for w in words if w not in KEYWORDS[theme]]
                if unknown or not words:
                    raise ConfigError(f"theme {theme!r}: unknown or no keywords {unknown or words}; pool: {sorted(KEYWORDS[theme])}")
        n_max = len(styles) * min(len(SUBJECTS[t]) for t in self.themes)
        if not 1 <= self.texts_per_keyword <= n_max:
            raise ConfigError(f"texts_per_keyword must be in 1..{n_max}, got {self.texts_per_keyword}")


def make_text(theme: str, keyword: str, style: str, subject: str) -> PrimingText:
    """Fill the templates for one (theme, keyword, style, subject)."""
    plain, stone = CLAUSES[theme]
    gloss = KEYWORDS[theme][keyword]
    marker = "\x00"

    def fill(clause: str) -> tuple[str, str]:
        body = clause.format(subj=subject, kw=marker, gloss=gloss)
        full = STYLES[style].format(clause=body)
        full = full[0].upper() + full[1:]
        context = full[: full.index(marker)].rstrip()
        return full.replace(marker, keyword), context

    text, context = fill(plain)
    ss_text, ss_context = fill(stone)
    return PrimingText(text, context, keyword, theme, style, subject, ss_text, ss_context)


def generate(cfg: PrimingConfig) -> list[PrimingText]:
    """Every chosen keyword with ``texts_per_keyword`` texts of distinct (style, subject), deterministic in
    ``cfg.seed``; ordered by theme, then keyword."""
    rng = random.Random(cfg.seed)
    styles = cfg.styles if cfg.styles is not None else list(STYLES)
    out = []
    for theme in cfg.themes:
        words = (cfg.keywords or {}).get(theme, list(KEYWORDS[theme]))
        for kw in words:
            pairs = [(s, subj) for s in styles for subj in SUBJECTS[theme]]
            for style, subject in rng.sample(pairs, cfg.texts_per_keyword):
                out.append(make_text(theme, kw, style, subject))
    return out


def spread_by_prior(log_priors: dict[str, float], n: int) -> list[str]:
    """``n`` keywords evenly spaced in rank of their prior log-probability (lowest and highest included),
    so the selection spans the model's range of surprise (Sun et al. 2025 use keywords from very
    likely to very unlikely).

    Raises:
        ConfigError: ``n`` outside 1..len(log_priors).
    """
    if not 1 <= n <= len(log_priors):
        raise ConfigError(f"cannot pick {n} keywords from {len(log_priors)} candidates")
    ranked = sorted(log_priors, key=lambda k: (log_priors[k], k))
    if n == 1:
        return [ranked[len(ranked) // 2]]
    idx = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)})
    return [ranked[i] for i in idx]


def keyword_ids(tokenizer, keyword: str) -> list[int]:
    """Token ids of ``" " + keyword`` (the keyword as it follows its context; may be several tokens)."""
    ids = tokenizer(" " + keyword, add_special_tokens=False).input_ids
    if not ids:
        raise ConfigError(f"keyword {keyword!r} tokenizes to nothing")
    return list(ids)


def context_ids(tokenizer, contexts: Sequence[str], prepend_bos: bool = False) -> list[list[int]]:
    """Token ids of each context (with the model's BOS when it needs one)."""
    bos = [tokenizer.bos_token_id] if prepend_bos and tokenizer.bos_token_id is not None else []
    return [bos + list(tokenizer(c, add_special_tokens=False).input_ids) for c in contexts]


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
    generated :class:`PrimingText` (same order as ``train``)."""

    train: list[KeywordItem]
    heldout: list[KeywordItem]
    texts: list[PrimingText]


def generate_split(tokenizer: Any, cfg: PrimingConfig, prepend_bos: bool = False) -> PrimingSplit:
    """The task's split: one training item per generated text, and every probe prefix of a text's theme paired with
    every learned keyword of that theme as the held-out items."""
    texts = generate(cfg)
    kw_ids = {t.keyword: tuple(keyword_ids(tokenizer, t.keyword)) for t in texts}
    contexts = context_ids(tokenizer, [t.context for t in texts], prepend_bos)
    whole = context_ids(tokenizer, [t.text for t in texts], prepend_bos)
    train = [KeywordItem(t.keyword, t.theme, t.context, tuple(c), kw_ids[t.keyword], tuple(w)) for t, c, w in zip(texts, contexts, whole)]
    themes = {t.keyword: t.theme for t in texts}  # keyword -> theme, first-seen order
    probes = {theme: context_ids(tokenizer, PROBES[theme], prepend_bos) for theme in set(themes.values())}
    heldout = [KeywordItem(kw, theme, probe, tuple(ids), kw_ids[kw])
               for kw, theme in themes.items() for probe, ids in zip(PROBES[theme], probes[theme])]
    return PrimingSplit(train, heldout, texts)


def examples(items: Sequence[KeywordItem]) -> list[Example]:
    """Training items: the causal-LM loss on every token of the text after the first; items without a text
    (probes): the loss on the keyword after its context."""
    return [Example(i.text_ids[:1], i.text_ids[1:]) if i.text_ids else Example(i.context_ids, i.keyword_ids) for i in items]
