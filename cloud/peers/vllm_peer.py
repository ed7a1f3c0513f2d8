"""Running vLLM (its CPU build, `vllm-cpu`) beside the built-in engine, as its CPU guide
runs it, on the same weights: `tandem bench cloud --peer vllm`.

vLLM lives in its own venv (scripts/install-vllm.sh: it pins a transformers older than
Tandem's) and is measured by `vllm_probe.py` in a child process of the bench, which hands
it the workload's token ids and reads back its figures.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from tandem.shared.errors import Unavailable
from tandem.shared.models import ModelSource, converted_dir

VLLM_CPU_VERSION = "0.32.0"  # scripts/install-vllm.sh installs this one
DEFAULT_PYTHON = ".venv-vllm/bin/python"
PROBE = Path(__file__).with_name("vllm_probe.py")
BLOCK_SIZE = 32  # vLLM's CPU backend needs a multiple of 32
KV_CACHE_GIB = 2
TCMALLOC = "libtcmalloc_minimal.so.4"


class PeerUnavailable(Unavailable):
    """vLLM is not installed or failed: the bench says so instead of a peer's figures."""


def peer_python(explicit: str | None) -> Path:
    """``explicit``, else $TANDEM_VLLM_PYTHON, else the checkout's .venv-vllm (where
    scripts/install-vllm.sh puts it), else .venv-vllm under the current folder."""
    in_checkout = Path(__file__).resolve().parents[2] / DEFAULT_PYTHON
    python = Path(explicit or os.environ.get("TANDEM_VLLM_PYTHON")
                  or (in_checkout if in_checkout.is_file() else DEFAULT_PYTHON))
    if not python.is_file():
        raise PeerUnavailable(f"vLLM's interpreter {python} does not exist: install it with "
                              "scripts/install-vllm.sh, or pass --peer-python")
    return python


def model_folder(source: ModelSource) -> Path:
    """An HF folder vLLM can load: weights, config and tokenizer side by side (Tandem caches
    a GGUF's de-quantized weights and its tokenizer in sibling folders), as links."""
    from tandem.shared.model_loader import dequantized_folder
    from tandem.shared.models import load_tokenizer

    if not source.is_gguf:
        return source.path
    load_tokenizer(source)  # converted and cached, once
    folder = converted_dir(source) / "vllm"
    folder.mkdir(exist_ok=True)
    for part in (Path(dequantized_folder(source)), converted_dir(source) / "tokenizer"):
        for file in part.iterdir():
            link = folder / file.name
            if not link.exists():
                link.symlink_to(file)
    return folder


def environment(python: Path, threads: int) -> dict[str, str]:
    """vLLM's CPU guide: OpenMP threads bound to the cores, a KV space, tcmalloc and the
    Intel OpenMP runtime its wheel ships preloaded."""
    preload = [TCMALLOC]
    iomp = sorted(python.parent.parent.glob("lib/**/libiomp5.so"))
    preload += [str(iomp[0])] if iomp else []
    return {**os.environ, "VLLM_CPU_OMP_THREADS_BIND": f"0-{threads - 1}",
            "VLLM_CPU_KVCACHE_SPACE": str(KV_CACHE_GIB), "LD_PRELOAD": " ".join(preload),
            "TOKENIZERS_PARALLELISM": "false"}


def measure(python: Path, workload: dict[str, Any], threads: int,
            timeout_s: float = 1800.0) -> dict[str, Any]:
    """vLLM's figures for ``workload`` (see vllm_probe.py); the end of its log goes to
    stderr when it fails."""
    with tempfile.TemporaryDirectory(prefix="tandem-vllm-") as folder:
        result = Path(folder) / "result.json"
        try:
            done = subprocess.run([str(python), str(PROBE)],
                                  input=json.dumps(workload | {"result_file": str(result)}),
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                  timeout=timeout_s, env=environment(python, threads))
        except subprocess.TimeoutExpired as exc:
            raise PeerUnavailable(f"vLLM did not finish within {timeout_s:.0f} s") from exc
        if not result.is_file():
            sys.stderr.write(done.stdout[-4000:])
            raise PeerUnavailable(f"vLLM's probe failed (exit {done.returncode}); the end "
                                  "of its log is above")
        if done.returncode != 0:  # the file is written last: every figure was measured
            sys.stderr.write(f"vLLM's probe exited with {done.returncode} after writing its "
                             "figures (a crash in its teardown); they are used\n")
        return json.loads(result.read_text())
