"""Edge models for evaluation: the default GGUF re-quantized further through llama.cpp's
quantize API, so the evaluated edge/cloud pair has a real quality gap."""

from __future__ import annotations

import ctypes
from pathlib import Path

from tandem.shared.models import ModelSource, converted_dir

FTYPES = {"Q8_0": 7, "Q4_0": 2, "Q4_K_M": 15, "Q3_K_M": 12, "Q2_K": 10}


def requantized(source: ModelSource, ftype: str) -> Path:
    """``source`` (a GGUF) re-quantized to ``ftype``, cached beside its other artifacts."""
    import llama_cpp

    if ftype not in FTYPES:
        raise ValueError(f"ftype must be one of {sorted(FTYPES)}, got {ftype!r}")
    out = converted_dir(source) / f"{source.path.stem}.{ftype}.gguf"
    if out.is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = FTYPES[ftype]
    params.allow_requantize = True
    tmp = out.with_suffix(".tmp")
    code = llama_cpp.llama_model_quantize(str(source.path).encode(), str(tmp).encode(),
                                          ctypes.byref(params))
    if code != 0:
        raise RuntimeError(f"llama_model_quantize failed with code {code}")
    tmp.rename(out)
    return out
