"""Grading answers that are right or wrong whatever their wording (the checkable-answer
prompt set, scripts/make_checkable_prompts.py).

A number is graded as GSM8K-style evaluations do: the first number the reply states that is
not one of the question's own (a reply that restates "7 weeks" before answering is not
wrong for it) must be an accepted one; number words up to twelve count as numbers. A word
answer (a capital, an opposite) is right when it appears in the reply as a whole word.
Case, accents and thousands separators are ignored."""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

NUMBER_WORDS = {w: str(i) for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve".split())}
_TOKEN = re.compile(r"\d+(?:\.\d+)?|[a-z]+")


def _tokens(text: str) -> list[str]:
    plain = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode().lower()
    plain = re.sub(r"(?<=\d),(?=\d{3}\b)", "", plain)  # 1,000 -> 1000
    return _TOKEN.findall(plain)


def _numbers(tokens: list[str]) -> list[str]:
    return [NUMBER_WORDS.get(t, t) for t in tokens if t[0].isdigit() or t in NUMBER_WORDS]


def is_correct(reply: str, question: str, answers: Sequence[str]) -> bool:
    """Whether ``reply`` answers ``question`` with one of ``answers``."""
    accepted = {" ".join(_tokens(a)) for a in answers}
    if all(a.replace(".", "").isdigit() for a in accepted if a):  # a numeric answer
        accepted = {NUMBER_WORDS.get(a, a) for a in accepted}
        given = set(_numbers(_tokens(question)))
        stated = [n for n in _numbers(_tokens(reply)) if n not in given]
        return bool(stated) and stated[0] in accepted
    words = _tokens(reply)
    text = f" {' '.join(words)} "
    return any(f" {a} " in text for a in accepted if a)
