#!/usr/bin/env python3
"""Generate Tandem's shipped prompt sets (router/data/prompts_*.jsonl), deterministically.

Prompts come from templates across five kinds (facts, instructions, reasoning, writing,
code), easy and hard. The held-out set (`prompts_heldout.jsonl`) uses fillers the
training set never sees and two templates of its own, so evaluating on it measures
generalisation to unseen prompts. The fresh set (`prompts_fresh.jsonl`) has fillers of its
own and templates of its own but one (the code template, with new tasks). It was written
after the cascade's scorers and their features were fixed: nothing was trained,
calibrated or chosen on it.

Usage: scripts/make_prompts.py [OUT_DIR]   (default router/data)
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

COUNTRIES = ["France", "Japan", "Italy", "Spain", "Germany", "Canada", "Egypt", "Brazil",
             "Kenya", "Norway", "Peru", "India", "Mexico", "Greece", "Portugal", "Poland",
             "Sweden", "Chile", "Turkey", "Ireland", "Argentina", "Thailand", "Vietnam",
             "Morocco", "Austria", "Hungary", "Finland", "Cuba", "Nepal", "Ghana"]
ELEMENTS = ["oxygen", "gold", "iron", "sodium", "carbon", "helium", "silver", "copper",
            "nitrogen", "potassium", "calcium", "neon", "zinc", "lead", "tin"]
WORDS = ["happy", "fast", "big", "cold", "smart", "angry", "quiet", "brave", "tiny",
         "bright", "ancient", "calm", "difficult", "funny", "strong"]
PHRASES = ["good morning", "thank you", "see you tomorrow", "where is the station",
           "I love books", "the weather is nice", "how much does it cost", "good night",
           "my name is Anna", "I am hungry", "open the door", "happy birthday"]
CATEGORIES = ["fruits", "colors", "planets", "musical instruments", "ocean animals",
              "European capitals", "programming languages", "kitchen tools", "sports",
              "vegetables", "birds", "metals", "board games", "flowers", "trees"]
TOPICS = ["the ocean", "autumn leaves", "a lighthouse", "city traffic", "a lost key",
          "the first snow", "an old library", "a robot learning to paint", "the desert",
          "a thunderstorm", "a quiet village", "space travel", "a forgotten letter",
          "a mountain lake", "the last train home", "a busy market", "a sleeping cat",
          "a broken clock"]
CONCEPTS = ["gravity", "photosynthesis", "inflation", "a black hole", "democracy",
            "evolution", "the internet", "a vaccine", "machine learning", "climate change",
            "an atom", "supply and demand", "DNA", "a volcano", "electricity", "recursion",
            "encryption", "the water cycle"]
CODE_TASKS = ["reverses a string", "checks whether a number is even",
              "returns the largest element of a list", "counts the vowels in a string",
              "computes the factorial of n", "removes duplicates from a list",
              "sums the digits of an integer", "checks whether a string is a palindrome",
              "returns the square of a number", "merges two dictionaries",
              "finds the average of a list of numbers", "converts Celsius to Fahrenheit",
              "returns the first n Fibonacci numbers", "sorts a list of words by length"]


def arithmetic(rng: random.Random) -> str:
    a, b = rng.randint(12, 99), rng.randint(12, 99)
    return rng.choice([f"What is {a} times {b}?", f"What is {a * 7} divided by 7?",
                       f"What is {a} plus {b} minus {b // 2}?"])


def speed(rng: random.Random) -> str:
    km, h = rng.randint(60, 600), rng.randint(2, 8)
    return f"A train travels {km} km in {h} hours. What is its average speed in km/h?"


def word_problem(rng: random.Random) -> str:
    n, k = rng.randint(5, 40), rng.randint(2, 4)
    return (f"Sara has {n} apples. She gives away {k} and then buys twice as many as "
            f"she has left. How many apples does she have now?")


# (kind, difficulty, template, fillers) — a filler list of None means a generator.
TEMPLATES = [
    ("facts", "easy", "What is the capital of {}?", COUNTRIES),
    ("facts", "easy", "What is the chemical symbol for {}?", ELEMENTS),
    ("instructions", "easy", "Give one synonym for the word '{}'.", WORDS),
    ("instructions", "easy", "List three {}.", CATEGORIES),
    ("instructions", "hard", "Translate '{}' into French.", PHRASES),
    ("reasoning", "hard", None, arithmetic),
    ("reasoning", "hard", None, speed),
    ("reasoning", "hard", None, word_problem),
    ("writing", "hard", "Write a short poem about {}.", TOPICS),
    ("writing", "hard", "Write the opening sentence of a story about {}.", TOPICS),
    ("explanation", "easy", "Explain {} in one sentence.", CONCEPTS),
    ("code", "hard", "Write a Python function that {}.", CODE_TASKS),
]
# Templates only the held-out set uses.
HELDOUT_TEMPLATES = [
    ("facts", "easy", "Which continent is {} in?", COUNTRIES),
    ("explanation", "hard", "Why is {} important? Answer briefly.", CONCEPTS),
]

# The fresh set: its own fillers, and its own templates but the code one.
ANIMALS = ["an elephant", "a dolphin", "an owl", "a bee", "a penguin", "a wolf", "a camel",
           "a frog", "a shark", "a butterfly", "a horse", "an octopus"]
INVENTIONS = ["the printing press", "the telephone", "the light bulb", "the compass",
              "the steam engine", "the bicycle", "the radio", "the microscope", "paper",
              "the wheel", "the refrigerator", "the camera"]
JOBS = ["a nurse", "a pilot", "a baker", "a teacher", "a firefighter", "a librarian",
        "a farmer", "a plumber", "an architect", "a journalist", "a chef", "a gardener"]
OBJECTS = ["an umbrella", "a pencil", "a chair", "a bridge", "a candle", "a mirror",
           "a backpack", "a ladder", "a kettle", "a map", "a bell", "a window"]
CITIES = ["Paris", "Tokyo", "Cairo", "Sydney", "Toronto", "Rome", "Moscow", "Lima",
          "Nairobi", "Oslo", "Madrid", "Berlin"]
LIST_TASKS = ["returns the smallest element of a list", "counts the words in a sentence",
              "checks whether a year is a leap year", "capitalizes every word in a string",
              "returns the last element of a list", "converts kilometres to miles",
              "checks whether a list is sorted", "returns the number of uppercase letters",
              "multiplies all numbers in a list", "returns the length of the longest word",
              "checks whether two strings are anagrams", "flattens a list of lists"]


def percentage(rng: random.Random) -> str:
    p, n = rng.choice([10, 20, 25, 50]), rng.randint(4, 40) * 10
    return f"What is {p} percent of {n}?"


def ages(rng: random.Random) -> str:
    a, d = rng.randint(8, 30), rng.randint(2, 9)
    return f"Tom is {a} years old and his sister is {d} years younger. How old is she?"


FRESH_TEMPLATES = [
    ("facts", "easy", "What sound does {} make?", ANIMALS),
    ("facts", "easy", "In which country is {}?", CITIES),
    ("explanation", "easy", "Who invented {}?", INVENTIONS),
    ("explanation", "hard", "Describe what {} does at work.", JOBS),
    ("instructions", "easy", "Name two things you can do with {}.", OBJECTS),
    ("reasoning", "hard", None, percentage),
    ("reasoning", "hard", None, ages),
    ("writing", "hard", "Write a haiku about {}.", ANIMALS),
    ("writing", "hard", "Write a two-sentence advertisement for {}.", OBJECTS),
    ("code", "hard", "Write a Python function that {}.", LIST_TASKS),
]


def expand(templates: list, rng: random.Random, keep: callable) -> list[dict]:
    rows = []
    for kind, difficulty, text, fillers in templates:
        if callable(fillers):
            for i in range(12):
                prompt = fillers(rng)
                if keep(i):
                    rows.append({"prompt": prompt, "kind": kind, "difficulty": difficulty})
            continue
        for i, filler in enumerate(fillers):
            if keep(i):
                rows.append({"prompt": text.format(filler), "kind": kind,
                             "difficulty": difficulty})
    return rows


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "router/data")
    out.mkdir(parents=True, exist_ok=True)
    train = expand(TEMPLATES, random.Random(1), keep=lambda i: i % 4 != 3)
    heldout = expand(TEMPLATES, random.Random(2), keep=lambda i: i % 4 == 3)
    heldout += expand(HELDOUT_TEMPLATES, random.Random(3), keep=lambda i: i % 3 == 0)
    train_prompts = {r["prompt"] for r in train}
    heldout = [r for r in heldout if r["prompt"] not in train_prompts]
    fresh = expand(FRESH_TEMPLATES, random.Random(4), keep=lambda i: True)
    for name, rows in (("prompts_train.jsonl", train), ("prompts_heldout.jsonl", heldout),
                       ("prompts_fresh.jsonl", fresh)):
        with open(out / name, "w") as fh:
            for row in rows:
                fh.write(json.dumps(row) + "\n")
        print(f"{out / name}: {len(rows)} prompts")


if __name__ == "__main__":
    main()
