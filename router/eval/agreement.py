"""How much an edge answer agrees with the cloud answer (the quality reference)."""

from __future__ import annotations

import re
from collections import Counter

_WORD = re.compile(r"\w+")


def words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def token_f1(candidate: str, reference: str) -> float:
    """SQuAD-style bag-of-words F1 (1.0 when both are empty)."""
    cand, ref = words(candidate), words(reference)
    if not cand or not ref:
        return float(cand == ref)
    overlap = sum((Counter(cand) & Counter(ref)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(cand), overlap / len(ref)
    return 2 * precision * recall / (precision + recall)


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F-measure: longest common subsequence of words."""
    cand, ref = words(candidate), words(reference)
    if not cand or not ref:
        return float(cand == ref)
    previous = [0] * (len(ref) + 1)
    for c in cand:
        current = [0]
        for j, r in enumerate(ref):
            current.append(previous[j] + 1 if c == r else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(cand), lcs / len(ref)
    return 2 * precision * recall / (precision + recall)


METRICS = {"f1": token_f1, "rouge_l": rouge_l}
