"""Edge artifacts written by `tandem compress` and loaded by the torch backend: a folder
with manifest.json (shape, recipe, per-component kinds and parameters), weights.safetensors
(every resident tensor, in its compressed format) and, for flash models, ffn.flash."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tandem.edge.activation_quant import W8A8Linear
from tandem.edge.flash import AlignedBuffer, FlashStore, Int8Selector, Predictor
from tandem.edge.flash_window import capacity_for, choose_window
from tandem.edge.flash_ffn import NaiveFlashFFN, WindowedFlashFFN
from tandem.edge.quantize import Int4Linear, Int8Embedding, Int8Linear
from tandem.edge.sparsity import ActivationSparseFFN
from tandem.edge.torch_model import (DenseEmbedding, DenseFFN, DenseLinear, LayerWeights,
                                     LlamaRuntime, LlamaShape, PackedLinear)
from tandem.shared.memory import release_free_memory

MANIFEST = "manifest.json"
# Bumped when saved tensors change meaning (2: INT4 as bf16 scale and zero, not fp16 minimum)
FORMAT = 2
WEIGHTS = "weights.safetensors"
LINEARS: dict[str, Any] = {"dense": DenseLinear, "int8": Int8Linear, "int4": Int4Linear,
                           "w8a8": W8A8Linear}


@dataclass
class Built:
    """A runtime in memory, as `tandem compress` builds it and as an artifact loads."""

    runtime: LlamaRuntime
    model_bytes: int  # every weight of the model in this format (resident + on flash)
    window: int = 0
    capacity: int = 0  # flash: buffer rows per layer
    store: FlashStore | None = None
    # flash: the selectors' choices on calibration tokens ([L, N, F] bool), to pick k
    selections: np.ndarray | None = None
    ffn_file_bytes: int = 0  # flash: FFN weight bytes on storage (without padding)

    def close(self) -> None:
        if self.store is not None:
            self.store.close()



def save(built: Built, recipe: Any, folder: Path, source: str) -> None:
    """Write ``built`` (its flash file must already be ``folder``/ffn.flash); ``recipe``
    (the dataclass it was built with) goes into the manifest, whose flash settings
    loading reads."""
    from safetensors.torch import save_file

    rt = built.runtime
    tensors: dict[str, torch.Tensor] = {"final_norm": rt.final_norm}
    emb = rt.embedding
    if isinstance(emb, Int8Embedding):
        tensors.update({"embedding.q": emb.head.q, "embedding.scale": emb.head.scale})
        emb_kind = "int8"
    else:
        tensors["embedding.weight"] = emb.weight  # type: ignore[attr-defined]
        emb_kind = "dense"
    layers = []
    for i, layer in enumerate(rt.layers):
        p = f"layers.{i}."
        tensors[p + "attn_norm"], tensors[p + "ffn_norm"] = layer.attn_norm, layer.ffn_norm
        kinds = {}
        for name, lin in layer.linears().items():
            kinds[name] = _put_linear(tensors, p + name, lin)
        layers.append({"linears": kinds, "ffn": _put_ffn(tensors, p + "ffn.", layer.ffn)})
    manifest = {"format": FORMAT, "source": source, "shape": rt.shape.to_dict(),
                "recipe": asdict(recipe), "embedding": emb_kind, "layers": layers, "model_bytes": built.model_bytes,
                "window": built.window, "capacity": built.capacity,
                "ffn_file_bytes": built.ffn_file_bytes}
    if built.selections is not None:  # packed bits: [L, N, F/8]
        tensors["calibration_selections"] = torch.from_numpy(np.packbits(built.selections, axis=-1))
    folder.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(folder / WEIGHTS))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=1))


def _put_linear(tensors: dict[str, torch.Tensor], prefix: str, lin: Any) -> str:
    for key, value in lin.tensors().items():
        tensors[f"{prefix}.{key}"] = value
    return lin.kind


def _put_ffn(tensors: dict[str, torch.Tensor], prefix: str, ffn: Any) -> dict[str, Any]:
    if isinstance(ffn, NaiveFlashFFN):
        return {"kind": "flash_naive"}
    if isinstance(ffn, WindowedFlashFFN):
        sel = ffn.predictor
        if isinstance(sel, Predictor):
            tensors[prefix + "pred.a"], tensors[prefix + "pred.b"] = sel.a, sel.b
            selector = "lowrank"
        else:
            for part in ("gate", "up"):
                _put_linear(tensors, f"{prefix}sel.{part}", getattr(sel, part))
            selector = "int8"
        return {"kind": "flash", "selector": selector, "select_threshold": sel.threshold,
                "threshold": ffn.act_threshold, "max_gap": ffn.max_gap}
    kinds = {name: _put_linear(tensors, prefix + name, getattr(ffn, name))
             for name in ("gate", "up", "down")}
    if isinstance(ffn, ActivationSparseFFN):
        return {"kind": "act_sparse", "linears": kinds, "threshold": ffn.threshold}
    return {"kind": "dense", "linears": kinds}


def load(folder: Path, io_threads: int = 8, window: int | None = None,
         budget_fraction: float | None = None, io_engine: str | None = None) -> Built:
    """The runtime stored in ``folder``. Flash models: ``budget_fraction`` sets another
    DRAM budget (and so the buffer size), ``window`` another k (default: the largest k
    the budget fits, from the calibration statistics), ``io_engine`` another reader."""
    manifest = json.loads((folder / MANIFEST).read_text())
    if not is_current(folder):
        raise ValueError(f"{folder}: artifact format {manifest.get('format', 1)}, this Tandem "
                         f"reads {FORMAT}; rebuild it (tandem compress)")
    t = read_safetensors(folder / WEIGHTS)
    shape = LlamaShape(**manifest["shape"])
    recipe = manifest["recipe"]
    if manifest["embedding"] == "int8":
        embedding: Any = Int8Embedding(t["embedding.q"], t["embedding.scale"])
    else:
        embedding = DenseEmbedding(t["embedding.weight"])
    store = None
    if recipe["flash"]:
        store = FlashStore(str(folder / "ffn.flash"), shape.layers, shape.ffn, shape.hidden,
                           recipe["io_mode"], io_threads, recipe["flash_dtype"],
                           io_engine or recipe["io_engine"])
    naive_buffer = store.buffer(shape.ffn) if recipe["flash"] == "naive" else None  # type: ignore[union-attr]
    capacity, k = manifest["capacity"], manifest["window"]
    if budget_fraction is not None:
        capacity = capacity_for(manifest["model_bytes"], manifest["ffn_file_bytes"], budget_fraction,
                                shape.layers, shape.ffn, store.record)  # type: ignore[union-attr]
        selections = np.unpackbits(t["calibration_selections"].numpy(), axis=-1)[..., : shape.ffn]
        k = choose_window(selections.astype(bool), capacity)
    if window is not None:
        k = window
    layers = []
    for i, spec in enumerate(manifest["layers"]):
        p = f"layers.{i}."
        linear = {name: _get_linear(t, p + name, kind) for name, kind in spec["linears"].items()}
        ffn = _get_ffn(t, p + "ffn.", spec["ffn"], i, store, naive_buffer, capacity, k)
        layers.append(LayerWeights(t[p + "attn_norm"], linear["q"], linear["k"], linear["v"],
                                   linear["o"], t[p + "ffn_norm"], ffn))
    runtime = LlamaRuntime(shape, embedding, layers, t["final_norm"])
    del t
    # The heap that loading freed (file tensors, unpacked INT4 rows) goes back to the OS,
    # so RSS shows the model, not the load (INT4: 704 -> 387 MB).
    release_free_memory()
    return Built(runtime, manifest["model_bytes"], window=k, capacity=capacity, store=store,
                 ffn_file_bytes=manifest["ffn_file_bytes"])


def is_current(folder: Path) -> bool:
    """Whether ``folder`` holds an artifact this version of Tandem can load."""
    path = folder / MANIFEST
    return path.is_file() and json.loads(path.read_text()).get("format", 1) == FORMAT


SAFETENSORS_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
                      "I64": torch.int64, "I32": torch.int32, "I8": torch.int8, "U8": torch.uint8,
                      "BOOL": torch.bool}


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """Every tensor of a safetensors file, each read into memory of its own. Not
    safetensors' loader: its tensors sit at arbitrary offsets of one mapping of the file
    (the INT8 kernel needs aligned rows, and a copy would keep both resident)."""
    tensors = {}
    with open(path, "rb") as fh:
        size = int.from_bytes(fh.read(8), "little")
        header = json.loads(fh.read(size))
        header.pop("__metadata__", None)
        for name, spec in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            start, end = spec["data_offsets"]
            tensor = torch.empty(spec["shape"], dtype=SAFETENSORS_DTYPES[spec["dtype"]])
            fh.seek(8 + size + start)
            if end > start and fh.readinto(tensor.view(-1).view(torch.uint8).numpy()) != end - start:
                raise ValueError(f"{path}: tensor {name} is truncated")
            tensors[name] = tensor
    return tensors


def _get_linear(t: dict[str, torch.Tensor], prefix: str, kind: str, pack: bool = True) -> Any:
    """The linear at ``prefix``; dense weights are packed for oneDNN unless ``pack`` is
    False (a caller that reads the dense weight itself)."""
    parts = {k[len(prefix) + 1:]: v for k, v in t.items() if k.startswith(prefix + ".")}
    if kind == "dense" and pack:
        return PackedLinear(parts["weight"])
    return LINEARS[kind].from_tensors(parts, {})


def _get_ffn(t: dict[str, torch.Tensor], prefix: str, spec: dict[str, Any], layer: int,
             store: FlashStore | None, naive_buffer: AlignedBuffer | None, capacity: int,
             window: int) -> Any:
    kind = spec["kind"]
    if kind == "flash_naive":
        return NaiveFlashFFN(layer, store, naive_buffer)  # type: ignore[arg-type]
    if kind == "flash":
        if spec["selector"] == "lowrank":
            selector: Any = Predictor(t[prefix + "pred.a"], t[prefix + "pred.b"], spec["select_threshold"])
        else:
            selector = Int8Selector.__new__(Int8Selector)
            selector.gate, selector.up = (_get_linear(t, f"{prefix}sel.{part}", "int8")
                                          for part in ("gate", "up"))
            selector.threshold = spec["select_threshold"]
        return WindowedFlashFFN(layer, store, selector, spec["threshold"], capacity, window,  # type: ignore[arg-type]
                                spec["max_gap"])
    # act_sparse gathers the surviving neurons' rows of a dense down projection
    gate, up, down = (_get_linear(t, prefix + n, spec["linears"][n],
                                  pack=kind != "act_sparse" or n != "down")
                      for n in ("gate", "up", "down"))
    if kind == "act_sparse":
        return ActivationSparseFFN(gate, up, down, spec["threshold"])
    return DenseFFN(gate, up, down)


def flash_file_in(folder: Path) -> str:
    return os.path.join(folder, "ffn.flash")
