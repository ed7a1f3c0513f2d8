"""Re-quantizing a GGUF through llama.cpp's quantize API (llama_model_quantize), and one
tensor's round trip through a llama.cpp type (what distillation puts in the loop).

SmolLM2's 576-wide rows are not a multiple of the 256-element K-quant super-block, so
llama.cpp stores those tensors in a compatible fallback type; the summary reports the
file size that actually results. Re-quantizing an already quantized model (the packaged
Q4_1) needs allow_requantize and cannot recover precision the source lost.
"""

from __future__ import annotations

import ctypes
import os
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from tandem.shared.models import ModelSource, converted_dir

# Weight formats a GGUF can be re-quantized to -> llama_cpp's LLAMA_FTYPE_* constant
# (`tandem compress --gguf-types`, `tandem eval --edge-quant`). "Q3_K" is the name
# `tandem compress` has always documented for Q3_K_M.
GGUF_TYPES = {
    "Q8_0": "LLAMA_FTYPE_MOSTLY_Q8_0",
    "Q4_1": "LLAMA_FTYPE_MOSTLY_Q4_1",
    "Q4_0": "LLAMA_FTYPE_MOSTLY_Q4_0",
    "Q4_K_M": "LLAMA_FTYPE_MOSTLY_Q4_K_M",
    "Q3_K_M": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q3_K": "LLAMA_FTYPE_MOSTLY_Q3_K_M",
    "Q2_K": "LLAMA_FTYPE_MOSTLY_Q2_K",
}


@dataclass
class GgufResult:
    name: str
    path: str
    bytes: int


def requantize(source: Path, out_dir: Path, name: str, threads: int) -> GgufResult:
    """Write ``out_dir``/<stem>.<name>.gguf quantized to ``name`` (a GGUF_TYPES key)."""
    import llama_cpp

    if name not in GGUF_TYPES:
        raise ValueError(f"unknown GGUF type {name!r}; known: {sorted(GGUF_TYPES)}")
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{source.stem}.{name}.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, GGUF_TYPES[name])
    params.allow_requantize = True
    params.nthread = threads
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    status = llama_cpp.llama_model_quantize(str(source).encode(), str(tmp).encode(), params)
    if status != 0:
        tmp.unlink(missing_ok=True)
        raise RuntimeError(f"llama_model_quantize to {name} failed with status {status}")
    os.replace(tmp, target)
    return GgufResult(name, str(target), target.stat().st_size)


def requantized(source: ModelSource, name: str) -> Path:
    """``source`` (a GGUF) re-quantized to ``name``, made once and cached beside its other
    conversions (the edge serving another weight format, the cascade evaluation's edge)."""
    cached = converted_dir(source) / f"{source.path.stem}.{name}.gguf"
    if cached.is_file():
        return cached
    return Path(requantize(source.path, converted_dir(source), name, os.cpu_count() or 1).path)


def tensor_types(path: Path) -> dict[str, int]:
    """GGUF tensor name -> its ggml type (``gguf.GGMLQuantizationType`` value): what
    llama.cpp chose per tensor, fallbacks for rows that do not fit a K-quant included."""
    import gguf

    return {t.name: int(t.tensor_type) for t in gguf.GGUFReader(str(path)).tensors}


def round_trip(weight: np.ndarray, ggml_type: int) -> np.ndarray:
    """``weight`` [rows, n] (fp32) as llama.cpp serves it in ``ggml_type``: quantized by
    ggml's own ``ggml_quantize_chunk`` (what llama_model_quantize calls, so the values are
    the file's) and read back with the gguf package's de-quantizer."""
    import gguf

    kind = gguf.GGMLQuantizationType(ggml_type)
    if kind in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
        return weight.astype(np.float16).astype(np.float32) if kind.name == "F16" else weight
    rows, n = weight.shape
    block, block_bytes = gguf.GGML_QUANT_SIZES[kind]
    if n % block:
        raise ValueError(f"rows of {n} do not divide into {kind.name} blocks of {block}")
    src = np.ascontiguousarray(weight, dtype=np.float32)
    dst = np.empty((rows, n // block * block_bytes), dtype=np.uint8)
    _ggml().ggml_quantize_chunk(int(kind), src.ctypes.data, dst.ctypes.data, 0, rows, n, None)
    return gguf.quants.dequantize(dst, kind)


@cache
def _ggml() -> ctypes.CDLL:
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_void_p]
    return lib
