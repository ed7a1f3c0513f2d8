"""argparse types shared by the subcommands: a value outside its range is a usage error
(exit 2 with the reason), not a traceback later."""

from __future__ import annotations

import argparse


def unit_interval(text: str) -> float:
    """A number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {value}")
    return value


def shares(text: str) -> str:
    """Comma-separated numbers in (0, 1] (kept as text; empty for none)."""
    try:
        values = [float(v) for v in text.split(",")] if text else []
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if not all(0.0 < v <= 1.0 for v in values):
        raise argparse.ArgumentTypeError(f"each value must be in (0, 1]: {text!r}")
    return text


def gguf_types(text: str) -> list[str]:
    """Comma-separated llama.cpp weight types (`gguf_quant.GGUF_TYPES`; empty for none)."""
    from tandem.shared.gguf_quant import GGUF_TYPES

    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in GGUF_TYPES]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown GGUF type(s) {', '.join(unknown)}; known: {', '.join(GGUF_TYPES)}")
    return names
