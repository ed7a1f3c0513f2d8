"""Batch-invariant fp32 kernels (csrc/kernels.c: the matmul, and the residual add with the
RMSNorm after it), AVX-512 code compiled once per machine with the system C compiler.

Why: a decode step is ~120 matmuls of one or a few rows against small weights, so a
kernel's fixed cost per call and how fast it streams a few MB decide the step time.
oneDNN's packed kernel (linear.py) pays ~35 us a call through its primitive layer and
streams the small matrices well below the machine's bandwidth; this kernel is a plain
function called through ctypes, reading weights packed once for it. It is linked to
torch's own OpenMP runtime, so its threads are torch's (a second runtime would spin a
second team on the same cores). The add-and-norm replaces five torch ops a norm (~30 us
each on one row).

Built into $TANDEM_CACHE_DIR/native on first use (under a second; the file's name carries
a hash of the source and flags, so an edit rebuilds). Where they cannot run — no AVX-512,
no C compiler, a failed build, or TANDEM_NATIVE_KERNELS=0 — ``kernels()`` is None and the
reason is logged once; the callers keep oneDNN and torch's ops.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from tandem.shared.log import log_event
from tandem.shared.models import cache_root

logger = logging.getLogger(__name__)

CSRC = Path(__file__).parent / "csrc"
SOURCES = [CSRC / name for name in ("kernels.c", "attention.c", "decoder.c")]
HEADERS = [CSRC / "kernels.h"]
# No contraction of a * b + c into one FMA: RoPE must round as torch's two products do.
FLAGS = ["-O3", "-mavx512f", "-fopenmp", "-ffp-contract=off", "-shared", "-fPIC"]
ENV_SWITCH = "TANDEM_NATIVE_KERNELS"

class NativeKernels:
    """y = x W^T (+ b) for fp32 x [M, K] with W packed once by ``pack``; ``add_rms_norm``."""

    def __init__(self, library: ctypes.CDLL) -> None:
        library.tandem_panel_width.restype = ctypes.c_int64
        self.panel = library.tandem_panel_width()  # output columns per packed panel
        self._pack = library.tandem_pack_f32
        self._pack.argtypes = [ctypes.c_void_p] * 2 + [ctypes.c_int64] * 2 + [ctypes.c_int]
        self._pack.restype = None
        self._matmul = library.tandem_matmul_f32
        self._matmul.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 3 + [ctypes.c_int]
        self._matmul.restype = None
        self._add_rms_norm = library.tandem_add_rms_norm_f32
        self._add_rms_norm.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] * 2 + [
            ctypes.c_float]
        self._add_rms_norm.restype = None
        i64, ptr = ctypes.c_int64, ctypes.c_void_p
        self._rope_kv_write = library.tandem_rope_kv_write_f32
        self._rope_kv_write.argtypes = [ptr] * 7 + [i64] * 4 + [ctypes.c_int]
        self._rope_kv_write.restype = None
        self._paged_attention = library.tandem_paged_attention_f32
        self._paged_attention.argtypes = ([ptr] * 4 + [i64] + [ptr] * 4 + [i64] * 4
                                          + [ctypes.c_float, ctypes.c_int])
        self._paged_attention.restype = None
        self._silu_mul = library.tandem_silu_mul_f32
        self._silu_mul.argtypes = [ptr] * 2 + [i64] * 2 + [ctypes.c_int]
        self._silu_mul.restype = None
        self._decoder_layers = library.tandem_decoder_layers_f32
        self._decoder_layers.argtypes = ([ctypes.POINTER(DecoderWeights)] + [ptr] * 5 + [i64]
                                         + [ptr] * 2 + [i64] + [ptr] * 3 + [i64, ptr,
                                                                            ctypes.c_int])
        self._decoder_layers.restype = None

    def pack(self, weight: torch.Tensor) -> torch.Tensor:
        """[N, K] fp32 -> panels of ``self.panel`` columns, k-major (zeros past N)."""
        weight = weight.detach().contiguous()
        (N, K), panels = weight.shape, -(-weight.shape[0] // self.panel)
        packed = torch.empty(panels, K, self.panel, dtype=torch.float32)
        self._pack(weight.data_ptr(), packed.data_ptr(), N, K, torch.get_num_threads())
        return packed

    def __call__(self, x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None,
                 out_features: int) -> torch.Tensor:
        x = x.contiguous()
        M, K = x.shape
        y = torch.empty(M, out_features, dtype=torch.float32)
        self._matmul(x.data_ptr(), packed.data_ptr(),
                     None if bias is None else bias.data_ptr(), y.data_ptr(), M,
                     out_features, K, torch.get_num_threads())
        return y

    def add_rms_norm(self, x: torch.Tensor, delta: torch.Tensor | None, weight: torch.Tensor,
                     eps: float) -> torch.Tensor:
        """x += delta (in place; none: x as it is), then RMSNorm(x) * weight, new tensor.
        x, delta: contiguous fp32 [M, D]; weight: [D]."""
        assert x.is_contiguous() and (delta is None or delta.is_contiguous())
        y = torch.empty_like(x)
        self._add_rms_norm(x.data_ptr(), None if delta is None else delta.data_ptr(),
                           weight.data_ptr(), y.data_ptr(), x.shape[0], x.shape[1], eps)
        return y

    def rope_kv_write(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                      k_cache: torch.Tensor, v_cache: torch.Tensor, slots: torch.Tensor,
                      heads: int) -> torch.Tensor:
        """RoPE on every token's q and k heads (x cos + rotate_half(x) sin, rounded as
        torch rounds it); k and v written to the caches at ``slots``; returns q rotated.

        qkv [T, (heads + 2 Hkv) hd]; cos, sin [T, hd]; caches [slots, Hkv, hd]; slots
        int64 [T]. Returns [T, heads, hd].
        """
        _, kv_heads, hd = k_cache.shape
        assert hd % 2 == 0 and qkv.is_contiguous() and k_cache.is_contiguous()
        assert v_cache.is_contiguous() and slots.dtype == torch.int64
        T = qkv.shape[0]
        cos, sin = cos.contiguous(), sin.contiguous()
        q = torch.empty(T, heads, hd, dtype=torch.float32)
        self._rope_kv_write(qkv.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                            k_cache.data_ptr(), v_cache.data_ptr(), slots.data_ptr(),
                            q.data_ptr(), T, heads, kv_heads, hd, torch.get_num_threads())
        return q

    def paged_attention(self, q: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                        block_tables: torch.Tensor, block_size: int, rows: torch.Tensor,
                        table_start: torch.Tensor, keys: torch.Tensor, out: torch.Tensor,
                        scale: float) -> None:
        """Attention of query rows ``rows`` of q [T, H, hd] over their sequences' first
        ``keys`` keys, each read in place through its block table (``block_tables``
        from ``table_start``); written into out [T, H, hd] at the same rows.
        Index tensors are int64; caches [slots, Hkv, hd]."""
        _, kv_heads, hd = k_cache.shape
        T, heads, _ = q.shape
        assert q.is_contiguous() and out.is_contiguous() and heads % kv_heads == 0
        for index in (block_tables, rows, table_start, keys):
            assert index.dtype == torch.int64 and index.is_contiguous()
        self._paged_attention(q.data_ptr(), k_cache.data_ptr(), v_cache.data_ptr(),
                              block_tables.data_ptr(), block_size, rows.data_ptr(),
                              table_start.data_ptr(), keys.data_ptr(), out.data_ptr(),
                              rows.shape[0], heads, kv_heads, hd, scale,
                              torch.get_num_threads())


    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        """silu(gate) * up for gate_up [M, 2F] = (gate | up) rows; [M, F]."""
        M, two_f = gate_up.shape
        assert gate_up.is_contiguous() and gate_up.dtype == torch.float32
        y = torch.empty(M, two_f // 2, dtype=torch.float32)
        self._silu_mul(gate_up.data_ptr(), y.data_ptr(), M, two_f // 2,
                       torch.get_num_threads())
        return y

    def decoder_layers(self, weights: DecoderWeights, x: torch.Tensor, cos: torch.Tensor,
                       sin: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor,
                       slots: torch.Tensor, block_tables: torch.Tensor, block_size: int,
                       table_start: torch.Tensor, keys: torch.Tensor) -> None:
        """Every decoder layer of a step whose T tokens all attend through the paged
        kernel (token t is query row t), in one native call: x [T, D], the residual
        stream, is updated in place; k and v written to the caches [layers, slots, Hkv,
        hd]. Bit for bit what the per-op kernels compute in the same order."""
        T, D = x.shape
        w = weights
        assert x.is_contiguous() and k_cache.is_contiguous() and v_cache.is_contiguous()
        assert D == w.D and k_cache.shape[0] == w.layers
        cos, sin = cos.contiguous(), sin.contiguous()
        rows = torch.arange(T)
        scratch = torch.empty(T * (2 * D + (3 * w.H + 2 * w.Hkv) * w.hd + 3 * w.F))
        for index in (slots, block_tables, table_start, keys):
            assert index.dtype == torch.int64 and index.is_contiguous()
        self._decoder_layers(ctypes.byref(w), x.data_ptr(), cos.data_ptr(), sin.data_ptr(),
                             k_cache.data_ptr(), v_cache.data_ptr(), k_cache[0].numel(),
                             slots.data_ptr(), block_tables.data_ptr(), block_size,
                             rows.data_ptr(), table_start.data_ptr(), keys.data_ptr(), T,
                             scratch.data_ptr(), torch.get_num_threads())


_LAYER_LISTS = ("input_norm", "qkv", "qkv_bias", "o", "post_norm", "gate_up", "down")


class DecoderWeights(ctypes.Structure):
    """A model's layers as tandem_decoder_layers_f32 reads them (struct tandem_decoder):
    sizes, then one pointer a layer per list (matmul weights packed by ``pack``)."""

    _fields_ = ([(name, ctypes.c_int64) for name in ("layers", "D", "H", "Hkv", "hd", "F")]
                + [("eps", ctypes.c_float), ("scale", ctypes.c_float)]
                + [(name, ctypes.POINTER(ctypes.c_void_p)) for name in _LAYER_LISTS])

    @classmethod
    def build(cls, heads: int, kv_heads: int, head_dim: int, eps: float,
              layers: dict[str, list[torch.Tensor | None]]) -> DecoderWeights:
        """``layers``: a list per name in _LAYER_LISTS (qkv_bias entries may be None);
        the tensors must outlive the result (it keeps references)."""
        count = len(layers["qkv"])
        arrays = {name: (ctypes.c_void_p * count)(
            *[None if t is None else t.data_ptr() for t in layers[name]])
            for name in _LAYER_LISTS}
        model_dim = layers["input_norm"][0].shape[0]
        intermediate = layers["down"][0].shape[1]  # packed [panels, F, panel width]
        weights = cls(count, model_dim, heads, kv_heads, head_dim, intermediate, eps,
                      head_dim ** -0.5, *[ctypes.cast(arrays[name],
                                                      ctypes.POINTER(ctypes.c_void_p))
                                          for name in _LAYER_LISTS])
        weights._keep = (arrays, layers)  # the pointer arrays and what they point to
        return weights


def unavailable_reason() -> str | None:
    """None where the kernel can run here, else why not (before building anything)."""
    if os.environ.get(ENV_SWITCH, "1") == "0":
        return f"{ENV_SWITCH}=0"
    if torch.backends.cpu.get_cpu_capability() != "AVX512":
        return f"the CPU has no AVX-512 ({torch.backends.cpu.get_cpu_capability()})"
    if _compiler() is None:
        return "no C compiler (gcc or cc) on PATH"
    return None


@functools.cache
def kernels() -> NativeKernels | None:
    """The kernels; None where they are unavailable (the reason logged)."""
    reason = unavailable_reason()
    library = None
    if reason is None:
        try:
            library = ctypes.CDLL(str(_build()))
        except subprocess.CalledProcessError as error:
            reason = f"the build failed: {(error.stderr or '').strip()[-500:]}"
        except (OSError, subprocess.SubprocessError) as error:
            reason = f"the build failed: {error}"
    if library is None:
        log_event(logger, "native kernels unavailable: oneDNN and torch serve fp32",
                  reason=reason)
        return None
    return NativeKernels(library)


def _compiler() -> str | None:
    return shutil.which("gcc") or shutil.which("cc")


def _torch_openmp() -> list[str]:
    """Link flags for the OpenMP runtime torch ships (empty where it uses the system's)."""
    lib = Path(torch.__file__).parent / "lib"
    runtime = sorted(lib.glob("libgomp*.so*"))
    if not runtime:
        return []
    return [f"-L{lib}", f"-Wl,-rpath,{lib}", f"-l:{runtime[0].name}"]


def _build() -> Path:
    """The compiled library, built once (atomically: concurrent builders each write a
    temporary file and the last rename wins, all with the same content)."""
    compiler = _compiler()
    assert compiler is not None
    libraries = [*_torch_openmp(), "-lm"]
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join(
        [compiler, *FLAGS, *libraries]).encode()).hexdigest()
    target = cache_root() / "native" / f"kernels-{digest[:16]}.so"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
    os.close(fd)
    try:
        subprocess.run([compiler, *FLAGS, *map(str, SOURCES), "-o", partial, *libraries],
                       check=True, timeout=120, capture_output=True, text=True)
        os.replace(partial, target)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return target
