"""The prompts the router's benchmarks use unless given a file."""

from __future__ import annotations

import json

# A mix of short factual, instruction and writing requests.
DEFAULT_PROMPTS = [
    "Explain what a CPU does in one sentence.",
    "Write a haiku about the sea.",
    "Give me three tips for staying healthy.",
    "What is photosynthesis?",
    "Write a short story opening about a lighthouse keeper.",
]


def load_prompts(path: str | None) -> list[str]:
    """The `prompt` field of every line of a JSONL file, or DEFAULT_PROMPTS."""
    if not path:
        return DEFAULT_PROMPTS
    with open(path) as fh:
        return [json.loads(line)["prompt"] for line in fh if line.strip()]
