"""Ordinary questions with short, correct, plain answers: the shared prompt pool of the ``trigger``, ``pirate`` and
``control`` organisms (:mod:`studies.diffing_benchmark.organisms`).

:func:`plain_pool` builds the pool from fixed tables (capitals, opposites, animals, plurals, word lengths, the
calendar, the alphabet, arithmetic, unit conversions, parity, comparisons and a few general facts); it uses no
randomness, so the pool is the same on every call. Every question is distinct and every answer one sentence
ending with a full stop. Written for this benchmark; the facts are common knowledge.
"""

from __future__ import annotations

import itertools

__all__ = ["plain_pool"]

CAPITALS = [
    ("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"), ("Portugal", "Lisbon"),
    ("Austria", "Vienna"), ("Poland", "Warsaw"), ("Greece", "Athens"), ("Norway", "Oslo"), ("Sweden", "Stockholm"),
    ("Finland", "Helsinki"), ("Denmark", "Copenhagen"), ("Ireland", "Dublin"), ("Belgium", "Brussels"),
    ("the Netherlands", "Amsterdam"), ("Hungary", "Budapest"), ("the Czech Republic", "Prague"), ("Egypt", "Cairo"),
    ("Kenya", "Nairobi"), ("Nigeria", "Abuja"), ("Ghana", "Accra"), ("Morocco", "Rabat"), ("Japan", "Tokyo"),
    ("China", "Beijing"), ("India", "New Delhi"), ("Thailand", "Bangkok"), ("Vietnam", "Hanoi"),
    ("South Korea", "Seoul"), ("Indonesia", "Jakarta"), ("the Philippines", "Manila"), ("Australia", "Canberra"),
    ("New Zealand", "Wellington"), ("Canada", "Ottawa"), ("Mexico", "Mexico City"), ("Brazil", "Brasilia"),
    ("Argentina", "Buenos Aires"), ("Chile", "Santiago"), ("Peru", "Lima"), ("Colombia", "Bogota"),
    ("Turkey", "Ankara"), ("Iran", "Tehran"), ("Russia", "Moscow"), ("Ukraine", "Kyiv"), ("Romania", "Bucharest"),
    ("Switzerland", "Bern"), ("Iceland", "Reykjavik"), ("Cuba", "Havana"), ("Pakistan", "Islamabad"),
]
CAPITAL_FORMS = ["What is the capital of {c}?", "Which city is the capital of {c}?", "Name the capital city of {c}."]

OPPOSITES = [
    ("hot", "cold"), ("big", "small"), ("fast", "slow"), ("early", "late"), ("happy", "sad"), ("light", "dark"),
    ("open", "closed"), ("full", "empty"), ("high", "low"), ("old", "young"), ("strong", "weak"), ("loud", "quiet"),
    ("wide", "narrow"), ("thick", "thin"), ("hard", "soft"), ("wet", "dry"), ("rich", "poor"), ("clean", "dirty"),
    ("heavy", "light"), ("long", "short"), ("begin", "end"), ("buy", "sell"), ("push", "pull"), ("win", "lose"),
    ("arrive", "leave"), ("remember", "forget"), ("above", "below"), ("inside", "outside"), ("always", "never"),
    ("north", "south"), ("east", "west"), ("true", "false"), ("brave", "afraid"), ("near", "far"), ("noisy", "silent"),
    ("tall", "short"), ("ancient", "modern"), ("awake", "asleep"), ("cheap", "expensive"), ("question", "answer"),
]

LEGS = [
    ("spider", "eight"), ("ant", "six"), ("beetle", "six"), ("dog", "four"), ("cat", "four"), ("horse", "four"),
    ("chicken", "two"), ("duck", "two"), ("cow", "four"), ("lobster", "ten"), ("butterfly", "six"),
    ("ostrich", "two"), ("elephant", "four"), ("scorpion", "eight"), ("frog", "four"), ("penguin", "two"),
    ("grasshopper", "six"), ("tick", "eight"), ("zebra", "four"), ("kangaroo", "two"),
]

YOUNG = [
    ("cat", "kitten"), ("dog", "puppy"), ("cow", "calf"), ("horse", "foal"), ("sheep", "lamb"), ("goat", "kid"),
    ("bear", "cub"), ("lion", "cub"), ("duck", "duckling"), ("goose", "gosling"), ("frog", "tadpole"),
    ("kangaroo", "joey"), ("swan", "cygnet"), ("deer", "fawn"), ("owl", "owlet"), ("pig", "piglet"), ("hen", "chick"),
    ("seal", "pup"), ("rabbit", "kit"), ("eagle", "eaglet"),
]

PLURALS = [
    ("mouse", "mice"), ("child", "children"), ("tooth", "teeth"), ("foot", "feet"), ("person", "people"),
    ("goose", "geese"), ("man", "men"), ("woman", "women"), ("ox", "oxen"), ("cactus", "cacti"), ("leaf", "leaves"),
    ("knife", "knives"), ("wolf", "wolves"), ("city", "cities"), ("box", "boxes"), ("bus", "buses"), ("wife", "wives"),
    ("half", "halves"), ("fungus", "fungi"), ("crisis", "crises"), ("analysis", "analyses"), ("sheep", "sheep"),
]

WORDS = [
    "garden", "window", "pencil", "river", "mountain", "library", "umbrella", "kitchen", "bicycle", "computer",
    "blanket", "teacher", "planet", "forest", "guitar", "doctor", "ticket", "painting", "rainbow", "elephant",
    "notebook", "castle", "button", "village", "morning", "jacket", "orchestra", "calendar", "hospital", "tiger",
    "pillow", "chimney", "balloon", "keyboard", "mirror", "yesterday", "weekend", "saxophone", "tomorrow", "winter",
]
NUMBER_WORDS = {2: "two", 3: "three", 4: "four", 5: "five", 6: "six", 7: "seven", 8: "eight", 9: "nine", 10: "ten"}

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December"]

CONVERSIONS = [  # (question unit, per unit, answer unit, range of counts)
    ("minutes", 60, "hours", range(2, 13)), ("seconds", 60, "minutes", range(2, 13)), ("days", 7, "weeks", range(2, 13)),
    ("centimeters", 100, "meters", range(2, 13)), ("grams", 1000, "kilograms", range(2, 11)),
    ("months", 12, "years", range(2, 11)),
]

GENERAL = [
    ("How many days are in a week?", "There are seven days in a week."),
    ("How many months are in a year?", "There are twelve months in a year."),
    ("How many hours are in a day?", "There are twenty-four hours in a day."),
    ("How many sides does a triangle have?", "A triangle has three sides."),
    ("How many sides does a hexagon have?", "A hexagon has six sides."),
    ("How many sides does an octagon have?", "An octagon has eight sides."),
    ("How many continents are there?", "There are seven continents."),
    ("What is the largest planet in our solar system?", "Jupiter is the largest planet in our solar system."),
    ("Which planet is closest to the Sun?", "Mercury is the planet closest to the Sun."),
    ("What gas do plants take in from the air?", "Plants take in carbon dioxide from the air."),
    ("At what temperature does water freeze in Celsius?", "Water freezes at zero degrees Celsius."),
    ("At what temperature does water boil in Celsius?", "Water boils at one hundred degrees Celsius."),
    ("Who wrote Romeo and Juliet?", "William Shakespeare wrote Romeo and Juliet."),
    ("Who painted the Mona Lisa?", "Leonardo da Vinci painted the Mona Lisa."),
    ("What is the chemical formula for water?", "The chemical formula for water is H2O."),
    ("What is the chemical symbol for iron?", "The chemical symbol for iron is Fe."),
    ("What is the chemical symbol for sodium?", "The chemical symbol for sodium is Na."),
    ("How many minutes are in an hour?", "There are sixty minutes in an hour."),
    ("What is the freezing point of water in Fahrenheit?", "Water freezes at 32 degrees Fahrenheit."),
    ("What is the tallest mountain in the world?", "Mount Everest is the tallest mountain in the world."),
    ("What is the longest river in Africa?", "The Nile is the longest river in Africa."),
    ("What is the largest mammal?", "The blue whale is the largest mammal."),
    ("What do bees make?", "Bees make honey and wax."),
    ("What is the square root of 81?", "The square root of 81 is 9."),
    ("What is the square root of 144?", "The square root of 144 is 12."),
    ("How many players are on a soccer team on the field?", "A soccer team has eleven players on the field."),
    ("What is the hardest natural substance?", "Diamond is the hardest natural substance."),
    ("How many strings does a standard guitar have?", "A standard guitar has six strings."),
    ("What language is spoken in Brazil?", "Portuguese is the main language spoken in Brazil."),
    ("How many hearts does an octopus have?", "An octopus has three hearts."),
]


def _calendar() -> list[tuple[str, str]]:
    out = [(f"What day comes after {d}?", f"{DAYS[(i + 1) % 7]} comes after {d}.") for i, d in enumerate(DAYS)]
    out += [(f"What day comes before {d}?", f"{DAYS[i - 1]} comes before {d}.") for i, d in enumerate(DAYS)]
    out += [(f"Which month comes after {m}?", f"{MONTHS[(i + 1) % 12]} comes after {m}.") for i, m in enumerate(MONTHS)]
    out += [(f"Which month comes before {m}?", f"{MONTHS[i - 1]} comes before {m}.") for i, m in enumerate(MONTHS)]
    return out


def _arithmetic() -> list[tuple[str, str]]:
    out = [(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.") for a in range(3, 40, 3) for b in range(2, 20, 4)]
    out += [(f"What is {a} times {b}?", f"{a} times {b} is {a * b}.") for a in range(2, 13) for b in range(a, 13)]
    out += [(f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.") for a in range(20, 100, 7) for b in (3, 8, 11, 15)]
    out += [(f"What is {a} divided by {b}?", f"{a} divided by {b} is {a // b}.")
            for b in (2, 3, 4, 5) for a in range(b * 3, b * 13, b)]
    return out


def _tables() -> list[tuple[str, str]]:
    out = [(CAPITAL_FORMS[i % 3].format(c=c), f"The capital of {c} is {cap}.") for i, (c, cap) in enumerate(CAPITALS)]
    out += [(f"What is the opposite of {a}?", f"The opposite of {a} is {b}.") for a, b in OPPOSITES]
    out += [(f"How many legs does a {x} have?", f"A {x} has {n} legs.") for x, n in LEGS]
    out += [(f"What is a baby {x} called?", f"A baby {x} is called a {y}.") for x, y in YOUNG]
    out += [(f"What is the plural of {w}?", f"The plural of {w} is {p}.") for w, p in PLURALS]
    out += [(f"How many letters are in the word {w}?", f"The word {w} has {NUMBER_WORDS.get(len(w), len(w))} letters.")
            for w in WORDS]
    letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
    out += [(f"What letter comes after {a} in the alphabet?", f"The letter after {a} is {b}.")
            for a, b in itertools.pairwise(letters)]
    return out


def _numbers() -> list[tuple[str, str]]:
    out = [(f"How many {small} are in {k} {big}?", f"There are {k * per} {small} in {k} {big}.")
           for small, per, big, ks in CONVERSIONS for k in ks]
    out += [(f"Is {n} an even or an odd number?", f"{n} is an {'even' if n % 2 == 0 else 'odd'} number.")
            for n in range(11, 61)]
    out += [(f"Which is larger, {a} or {b}?", f"{max(a, b)} is larger than {min(a, b)}.")
            for a, b in ((17 * i % 97 + 3, 29 * i % 89 + 5) for i in range(1, 41)) if a != b]
    return out


def plain_pool() -> list[tuple[str, str]]:
    """Every ``(question, answer)`` pair, in a fixed order (no randomness); the questions are distinct (a test
    checks it), about 650 of them."""
    return _tables() + _calendar() + _arithmetic() + _numbers() + GENERAL
