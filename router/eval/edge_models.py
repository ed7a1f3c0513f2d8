"""Edge models for evaluation: the default GGUF re-quantized further through llama.cpp's
quantize API, so the evaluated edge/cloud pair has a real quality gap."""

from __future__ import annotations

import os
from pathlib import Path

from tandem.shared.gguf_quant import requantize
from tandem.shared.models import ModelSource, converted_dir


def requantized(source: ModelSource, ftype: str) -> Path:
    """``source`` (a GGUF) re-quantized to ``ftype``, cached beside its other artifacts."""
    cached = converted_dir(source) / f"{source.path.stem}.{ftype}.gguf"
    if cached.is_file():
        return cached
    return Path(requantize(source.path, converted_dir(source), ftype, os.cpu_count() or 1).path)
