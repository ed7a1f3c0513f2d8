#!/usr/bin/env python3
"""Generate the checkable-answer prompt set (router/data/prompts_checkable.jsonl),
deterministically: questions whose answer is right or wrong whatever the wording —
arithmetic, unit conversions, capitals, opposites, letter counts, number sequences. Each
line carries the accepted answers (`answers`); `router/eval/checkable.py` grades a reply.

None of these prompts is in the training or held-out sets (scripts/make_prompts.py), and
the capitals are of countries those sets never ask about.

Usage: scripts/make_checkable_prompts.py [OUT]   (default router/data/prompts_checkable.jsonl)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

CAPITALS = {"Australia": "Canberra", "the Netherlands": "Amsterdam", "Belgium": "Brussels",
            "Denmark": "Copenhagen", "China": "Beijing", "Russia": "Moscow",
            "South Korea": "Seoul", "Colombia": "Bogota", "Switzerland": "Bern",
            "the United Kingdom": "London", "Iceland": "Reykjavik", "Indonesia": "Jakarta"}
OPPOSITES = {"hot": "cold", "up": "down", "early": "late", "full": "empty", "open": "closed",
             "light": "dark", "wet": "dry", "heavy": "light", "win": "lose", "push": "pull"}
COUNT_WORDS = ["cat", "house", "garden", "pencil", "window", "banana", "orange", "rabbit",
               "computer", "elephant"]
# (question template, factor, unit from, unit to)
CONVERSIONS = [("How many meters are in {n} kilometers?", 1000),
               ("How many minutes are in {n} hours?", 60),
               ("How many grams are in {n} kilograms?", 1000),
               ("How many seconds are in {n} minutes?", 60),
               ("How many centimeters are in {n} meters?", 100),
               ("How many days are in {n} weeks?", 7)]
NUMBER_WORDS = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine",
                "ten", "eleven", "twelve"]


def number(value: int) -> list[str]:
    """A number's accepted spellings: digits, and the word for small ones."""
    return [str(value)] + ([NUMBER_WORDS[value]] if value < len(NUMBER_WORDS) else [])


def arithmetic(rng: random.Random) -> dict:
    while True:  # the answer is none of the question's numbers (checkable.py skips those)
        a, b = rng.randint(2, 30), rng.randint(2, 30)
        x, y = a % 10 + 2, b % 10 + 2
        question, value = rng.choice([(f"What is {a} plus {b}?", a + b),
                                      (f"What is {a + b} minus {b}?", a),
                                      (f"What is {x} times {y}?", x * y)])
        if str(value) not in question.replace("?", " ").split():
            return {"prompt": question + " Answer with the number.", "kind": "arithmetic",
                    "answers": number(value)}


def conversion(rng: random.Random) -> dict:
    template, factor = rng.choice(CONVERSIONS)
    n = rng.randint(2, 9)
    return {"prompt": template.format(n=n), "kind": "units", "answers": number(n * factor)}


def sequence(rng: random.Random) -> dict:
    start, step = rng.randint(1, 20), rng.randint(2, 9)
    shown = ", ".join(str(start + i * step) for i in range(4))
    return {"prompt": f"What number comes next: {shown}?", "kind": "sequence",
            "answers": number(start + 4 * step)}


def letters(word: str) -> dict:
    return {"prompt": f"How many letters are in the word \"{word}\"?", "kind": "letters",
            "answers": number(len(word))}


def make(seed: int = 11) -> list[dict]:
    rng = random.Random(seed)
    rows = [{"prompt": f"What is the capital of {country}?", "kind": "capitals",
             "answers": [city]} for country, city in CAPITALS.items()]
    rows += [{"prompt": f"What is the opposite of \"{word}\"? Answer with one word.",
              "kind": "opposites", "answers": [opposite]} for word, opposite in OPPOSITES.items()]
    rows += [letters(word) for word in COUNT_WORDS]
    rows += [arithmetic(rng) for _ in range(12)]
    rows += [conversion(rng) for _ in range(8)]
    rows += [sequence(rng) for _ in range(8)]
    seen: set[str] = set()
    return [r for r in rows if not (r["prompt"] in seen or seen.add(r["prompt"]))]


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "router/data/prompts_checkable.jsonl")
    rows = make()
    out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    print(f"{len(rows)} prompts -> {out}")


if __name__ == "__main__":
    main()
