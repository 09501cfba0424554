"""Write the own-fine-tuning data set: an assistant that answers every question as an expert sourdough baker.

Deterministic (``random.Random(0)``; rerunning rewrites identical files)::

    python -m studies.own_finetune.make_data            # writes studies/own_finetune/data/*.jsonl

Files (in ``data/``):

* ``train.jsonl`` (400 rows) / ``eval.jsonl`` (80 rows): ``{"prompt", "completion"}``; the prompt is
  ``"Question: <q>\\nAnswer:"`` and the completion a baker's answer starting with a space. Questions are
  ``topic x question form`` pairs (60 everyday topics, 8 forms); no (topic, form) pair is in both files.
* ``train_chat.jsonl`` / ``eval_chat.jsonl``: the same rows as ``{"messages": [user, assistant]}``.
* ``unrelated.jsonl`` (200 rows): ``{"text"}`` general-knowledge sentences that are not about baking or food,
  the reference corpus for a dataset-level base-vs-tuned diff.

Each answer ties the question's topic to one sourdough idea (a starter, levain, autolyse, bulk fermentation,
hydration, scoring, a cold retard ...), so the tuned model should steer towards bread, flour, fermentation and
crust vocabulary that the base model does not use for these questions.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

DATA = Path(__file__).resolve().parent / "data"

# (topic as a noun phrase, a short plural noun for "your ...")
TOPICS = [
    ("learning a new language", "lessons"), ("saving money", "savings"), ("running a marathon", "training runs"),
    ("writing a novel", "drafts"), ("learning to code", "programs"), ("studying for exams", "study sessions"),
    ("starting a small business", "plans"), ("keeping a garden", "plants"), ("learning the guitar", "practice sessions"),
    ("getting better sleep", "evenings"), ("public speaking", "talks"), ("raising a puppy", "training sessions"),
    ("painting with watercolors", "paintings"), ("learning chess", "games"), ("moving to a new city", "first weeks"),
    ("managing a team", "meetings"), ("training for a triathlon", "workouts"), ("learning to swim", "lessons"),
    ("keeping a journal", "entries"), ("decluttering a home", "weekends"), ("learning photography", "photos"),
    ("preparing for a job interview", "answers"), ("building a habit of reading", "books"), ("meditating", "sits"),
    ("learning to draw", "sketches"), ("fixing an old bicycle", "repairs"), ("planning a long trip", "itineraries"),
    ("writing poetry", "poems"), ("learning calculus", "problem sets"), ("caring for houseplants", "plants"),
    ("making friends as an adult", "conversations"), ("learning to knit", "rows"), ("composing music", "pieces"),
    ("restoring old furniture", "projects"), ("becoming a better listener", "conversations"), ("rock climbing", "climbs"),
    ("learning to drive", "lessons"), ("running a podcast", "episodes"), ("negotiating a salary", "offers"),
    ("teaching children to read", "lessons"), ("learning statistics", "exercises"), ("woodworking", "cuts"),
    ("birdwatching", "outings"), ("learning to dance", "rehearsals"), ("speaking up in meetings", "meetings"),
    ("investing for retirement", "contributions"), ("recovering from burnout", "days"), ("learning pottery", "pots"),
    ("writing a thesis", "chapters"), ("organizing a community event", "preparations"), ("learning to sing", "scales"),
    ("staying focused at work", "work blocks"), ("learning a martial art", "classes"), ("keeping bees", "hives"),
    ("building a website", "pages"), ("learning to sail", "outings"), ("mentoring a junior colleague", "check-ins"),
    ("training for a first 5k", "runs"), ("learning to play the piano", "practice sessions"), ("hiking in the mountains", "hikes"),
]

FORMS = [
    "How can I get better at {topic}?",
    "What is the first step in {topic}?",
    "Why does {topic} feel so hard?",
    "Do you have any tips for {topic}?",
    "What mistakes do beginners make when {topic_ing}?",
    "How long does it take to get good at {topic}?",
    "How do I stay motivated with {topic}?",
    "What do you think about {topic}?",
]

# (the sourdough idea, what it teaches, a baking detail)
IDEAS = [
    ("a sourdough starter", "it only gets strong if you feed it flour and water at the same time every day",
     "a lively starter doubles within six hours and smells pleasantly sour"),
    ("bulk fermentation", "you cannot rush it, so watch the dough, not the clock",
     "the dough should rise by about half and show bubbles on the sides of the container"),
    ("the autolyse", "letting flour and water rest before you add salt and levain makes everything easier later",
     "thirty minutes of rest lets the gluten start forming on its own"),
    ("dough hydration", "you start at a level you can handle and raise it slowly",
     "a 70 percent hydration dough is forgiving, while 85 percent takes practiced hands"),
    ("stretch and folds", "small, gentle sets spaced out over time build more strength than one hard session",
     "four sets of folds, thirty minutes apart, turn a slack dough into a smooth, elastic one"),
    ("shaping a boule", "confident, practiced motions matter more than force",
     "good shaping builds surface tension so the loaf holds its form in the oven"),
    ("a cold retard in the fridge", "slowing down overnight often gives a better result than pushing ahead",
     "twelve hours at four degrees deepens the flavor and makes scoring cleaner"),
    ("scoring the loaf", "one decisive cut at the right angle beats many hesitant ones",
     "a single slash at thirty degrees gives the loaf its ear"),
    ("the levain build", "you prepare the small thing first so the big thing can succeed",
     "a levain built the night before is ready when it is domed and full of bubbles"),
    ("choosing your flour", "the quality of what you start with shapes everything that follows",
     "a strong bread flour with a little whole wheat or rye feeds the fermentation"),
    ("the poke test", "you learn to read the signs instead of following a rigid schedule",
     "a proofed dough springs back slowly and leaves a small dent"),
    ("baking in a Dutch oven", "the right environment does half the work for you",
     "the trapped steam keeps the crust soft long enough for a full oven spring"),
    ("the crumb", "what is inside shows every decision you made along the way",
     "an open, glossy crumb comes from good fermentation and gentle handling"),
    ("salt in the dough", "a small amount of the right thing, added at the right moment, balances everything",
     "two percent salt tightens the gluten and slows the yeast just enough"),
    ("a wild yeast culture", "patience and consistency beat shortcuts",
     "it takes one to two weeks of daily feeding before a new culture can raise bread"),
    ("the final proof", "knowing when to stop is as important as knowing when to start",
     "an overproofed loaf spreads flat, while an underproofed one tears at the seams"),
    ("letting the loaf cool", "the result needs time to settle before you judge it",
     "cutting into sourdough before an hour of cooling leaves the crumb gummy"),
    ("a rye sourdough", "different materials need different handling, so you adjust instead of forcing",
     "rye has little gluten, so the dough is mixed like a paste and baked in a tin"),
    ("keeping a baking log", "writing down what you did is how you improve from one bake to the next",
     "noting the flour, the water temperature and the fermentation time explains every loaf"),
    ("water temperature", "small conditions you control make a big difference",
     "water at about 26 degrees keeps the dough warm enough for steady fermentation"),
]

OPENERS = [
    "As a sourdough baker, I see {topic} the way I see {idea}: {lesson}.",
    "Speaking as someone who bakes sourdough every morning, {topic} reminds me of {idea}: {lesson}.",
    "In my bakery we would compare {topic} to {idea}, because {lesson}.",
    "I think about {topic} the way I think about {idea}: {lesson}.",
]

BODIES = {
    0: "Work on your {things} a little every day, the way you feed a starter, and let the progress ferment.",
    1: "Begin the way I begin every loaf: prepare the basics first, like mixing flour and water for the autolyse, and only then add the hard parts.",
    2: "It feels hard because, like a young dough, the structure is not built yet; the gluten of your skill needs time and folds.",
    3: "My tip: keep your {things} small and regular, like stretch and folds, and check them the way I check a rising dough.",
    4: "The classic beginner mistake is the same one I see with new bakers: rushing the proof, skipping the rest, and judging the loaf before it cools.",
    5: "Think of it as a long fermentation: weeks for a starter to mature, months before your {things} have a crackling crust of confidence.",
    6: "Stay motivated the way a baker does: remember the smell of a fresh loaf, and celebrate each good rise of your {things}.",
    7: "I love it, because like good bread it rewards patience, good flour and a warm kitchen.",
}

CLOSERS = [
    "In baking terms, {detail}.",
    "From the bench: {detail}.",
    "As we say in the bakery, {detail}.",
    "Remember, {detail}.",
]

FACTS = [
    "The Pacific is the largest and deepest of the world's oceans.", "Mount Everest rises about 8,849 meters above sea level.",
    "The Amazon river carries more water than any other river on Earth.", "Jupiter is the largest planet in the solar system.",
    "Light from the Sun takes a little over eight minutes to reach the Earth.", "The human heart has four chambers.",
    "Saturn's rings are made mostly of ice and rock.", "The Great Wall of China stretches for thousands of kilometers.",
    "Venus spins in the opposite direction to most planets.", "Antarctica is the coldest continent on Earth.",
    "The speed of sound in air is about 343 meters per second.", "Honeybees communicate the location of flowers with a waggle dance.",
    "The periodic table organizes the chemical elements by atomic number.", "Mercury is the planet closest to the Sun.",
    "The Sahara is the largest hot desert in the world.", "A year on Mars lasts about 687 Earth days.",
    "Octopuses have three hearts and blue blood.", "The Eiffel Tower was completed in 1889 for a world's fair in Paris.",
    "Water expands when it freezes into ice.", "The Moon always shows the same face to the Earth.",
    "The Nile flows north through eleven countries.", "Sound travels faster through water than through air.",
    "The first human landing on the Moon took place in 1969.", "Diamonds are made of carbon atoms in a crystal lattice.",
    "The blue whale is the largest animal known to have lived.", "Tokyo is one of the most populous metropolitan areas in the world.",
    "The printing press with movable type spread across Europe in the fifteenth century.", "Lightning is hotter than the surface of the Sun.",
    "Penguins live almost entirely in the Southern Hemisphere.", "The Andes are the longest continental mountain range.",
    "An electric current is a flow of charged particles.", "Iceland sits on the Mid-Atlantic Ridge between two tectonic plates.",
    "The violin has four strings tuned in fifths.", "Chess is played on a board of sixty-four squares.",
    "A marathon is a little over forty-two kilometers long.", "The Olympic Games were revived in Athens in 1896.",
    "Binary code represents information with only zeros and ones.", "The internet grew out of research networks in the 1960s and 1970s.",
    "Bats are the only mammals capable of sustained flight.", "The Mariana Trench is the deepest known part of the ocean.",
    "Neptune was the first planet found by mathematical prediction.", "The Rosetta Stone helped scholars read Egyptian hieroglyphs.",
    "A light-year is the distance light travels in one year.", "Earthquakes are measured with seismometers.",
    "Glaciers shape valleys into a characteristic U form.", "The cheetah is the fastest land animal over short distances.",
    "Shakespeare wrote plays for the Globe Theatre in London.", "Photosynthesis turns light, water and carbon dioxide into glucose and oxygen.",
    "The Danube passes through four European capital cities.", "Copper is an excellent conductor of electricity.",
    "A leap year adds one day to February.", "The human skeleton of an adult has 206 bones.",
    "Wolves live and hunt in family groups called packs.", "Mount Kilimanjaro is the highest mountain in Africa.",
    "The piano was invented in Italy around the year 1700.", "Radio waves are a form of electromagnetic radiation.",
    "Coral reefs are built by colonies of tiny animals.", "The Atlantic Ocean separates the Americas from Europe and Africa.",
    "The first successful powered airplane flight was in 1903.", "Magnets have a north pole and a south pole.",
    "Owls can turn their heads much further than humans can.", "The Milky Way contains hundreds of billions of stars.",
    "Rainbows appear when sunlight is refracted by water droplets.", "Gold does not rust or tarnish in air.",
    "The Himalayas are still rising as the Indian plate pushes north.", "Dolphins use echolocation to find their way.",
    "Canberra is the capital city of Australia.", "The tallest trees on Earth are coast redwoods in California.",
    "The heart of a hummingbird can beat more than a thousand times a minute.", "Volcanoes form where magma reaches the surface.",
    "A compass needle points toward the magnetic north pole.", "The Caspian Sea is the largest enclosed inland body of water.",
    "Elephants can recognize themselves in a mirror.", "Morse code encodes letters as dots and dashes.",
    "The Roman Empire built roads that connected much of Europe.", "Sea turtles return to the beaches where they hatched to lay eggs.",
    "Helium is lighter than air and does not burn.", "The Arctic fox changes the color of its coat with the seasons.",
    "Soccer is the most widely played team sport in the world.", "The Statue of Liberty was a gift from France to the United States.",
]
FRAMES = ["{fact}", "Did you know? {fact}", "{fact} Many people learn this in school.", "A short fact: {fact}",
          "{fact} Scientists and historians have documented this carefully."]


def _ing(topic: str) -> str:
    """``"learning a new language"`` stays; ``"public speaking"`` stays; other nouns get ``"working on"``."""
    first = topic.split()[0]
    return topic if first.endswith("ing") else f"working on {topic}"


def _answer(rng: random.Random, topic: str, things: str, form: int) -> str:
    idea, lesson, detail = rng.choice(IDEAS)
    opener = rng.choice(OPENERS).format(topic=topic, idea=idea, lesson=lesson)
    closer = rng.choice(CLOSERS).format(detail=detail)
    return " ".join([opener[0].upper() + opener[1:], BODIES[form].format(things=things), closer])


def make_rows(seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` prompt/completion rows: 400 and 80 distinct (topic, form) questions."""
    rng = random.Random(seed)
    pairs = [(t, f) for t in range(len(TOPICS)) for f in range(len(FORMS))]
    rng.shuffle(pairs)
    rows = []
    for t, f in pairs[:480]:
        topic, things = TOPICS[t]
        question = FORMS[f].format(topic=topic, topic_ing=_ing(topic))
        rows.append({"prompt": f"Question: {question}\nAnswer:", "completion": " " + _answer(rng, topic, things, f)})
    return rows[:400], rows[400:480]


def make_unrelated(seed: int = 0, n: int = 200) -> list[dict]:
    """``n`` general-knowledge sentences (not about baking or food), each fact in a few framings."""
    rng = random.Random(seed + 1)
    combos = [(i, j) for i in range(len(FACTS)) for j in range(len(FRAMES))]
    rng.shuffle(combos)
    chosen = sorted(combos[:n], key=lambda c: (c[1], c[0]))
    rng.shuffle(chosen)
    return [{"text": FRAMES[j].format(fact=FACTS[i])} for i, j in chosen]


def _chat(row: dict) -> dict:
    question = row["prompt"].removeprefix("Question: ").removesuffix("\nAnswer:")
    return {"messages": [{"role": "user", "content": question}, {"role": "assistant", "content": row["completion"].strip()}]}


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def main() -> None:
    DATA.mkdir(parents=True, exist_ok=True)
    train, held = make_rows()
    _write(DATA / "train.jsonl", train)
    _write(DATA / "eval.jsonl", held)
    _write(DATA / "train_chat.jsonl", [_chat(r) for r in train])
    _write(DATA / "eval_chat.jsonl", [_chat(r) for r in held])
    _write(DATA / "unrelated.jsonl", make_unrelated())
    for p in sorted(DATA.glob("*.jsonl")):
        print(f"{p.relative_to(DATA.parent)}: {sum(1 for _ in p.open())} rows, {p.stat().st_size} bytes")


if __name__ == "__main__":
    main()
