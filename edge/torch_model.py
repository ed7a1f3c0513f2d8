"""A small Llama forward pass in plain torch whose linear layers and FFNs are pluggable,
so that quantized, pruned, activation-sparse and flash-offloaded variants share one
attention/KV-cache implementation.

Shapes: T = tokens in this call, H = hidden, F = FFN width, V = vocab, D = head dim.
The KV cache is preallocated and truncated in place, so rolling back to a prefix costs
nothing and never re-processes it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from tandem.shared.linear import Linear as PackedMatmul


@dataclass(frozen=True)
class LlamaShape:
    vocab: int
    hidden: int
    ffn: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    rope_theta: float
    rms_eps: float
    tied: bool

    @classmethod
    def from_hf_config(cls, path: Path) -> LlamaShape:
        return cls.from_dict(json.loads((path / "config.json").read_text()))

    @classmethod
    def from_dict(cls, cfg: dict) -> LlamaShape:  # type: ignore[type-arg]
        rope = cfg.get("rope_parameters") or {}
        heads = cfg["num_attention_heads"]
        return cls(vocab=cfg["vocab_size"], hidden=cfg["hidden_size"],
                   ffn=cfg["intermediate_size"], layers=cfg["num_hidden_layers"], heads=heads,
                   kv_heads=cfg.get("num_key_value_heads", heads),
                   head_dim=cfg.get("head_dim") or cfg["hidden_size"] // heads,
                   rope_theta=float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))),
                   rms_eps=float(cfg["rms_norm_eps"]),
                   tied=bool(cfg.get("tie_word_embeddings", False)))

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class Linear(Protocol):
    """y = x W^T for some storage format of W ([out, in])."""

    kind: str

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    @property
    def nbytes(self) -> int: ...

    def tensors(self) -> dict[str, torch.Tensor]: ...


class DenseLinear:
    kind = "dense"

    def __init__(self, weight: torch.Tensor) -> None:
        self.weight = weight.float().contiguous()  # [out, in]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight)

    @property
    def nbytes(self) -> int:
        return self.weight.numel() * self.weight.element_size()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"weight": self.weight}

    @classmethod
    def from_tensors(cls, t: dict[str, torch.Tensor], meta: dict[str, object]) -> DenseLinear:
        return cls(t["weight"])


class PackedLinear:
    """A dense fp32 weight packed once for oneDNN, for inference: on one core a decode
    step of SmolLM2 takes 22 ms instead of 36 ms with F.linear (MKL). The dense weight is
    gone, so it is made when an artifact is loaded for inference, after anything that
    edits or saves it."""

    kind = "dense"

    def __init__(self, weight: torch.Tensor) -> None:
        self._linear = PackedMatmul(weight.float().contiguous())

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self._linear(x)

    @property
    def nbytes(self) -> int:
        return self._linear.nbytes

    def tensors(self) -> dict[str, torch.Tensor]:
        raise TypeError("a packed linear has no dense weight to save; save the model "
                        "before loading it for inference")


class FFN(Protocol):
    """The SwiGLU block of one layer: [T, H] -> [T, H]."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...

    @property
    def dram_bytes(self) -> int: ...


class DenseFFN:
    def __init__(self, gate: Linear, up: Linear, down: Linear) -> None:
        self.gate, self.up, self.down = gate, up, down

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))

    @property
    def dram_bytes(self) -> int:
        return self.gate.nbytes + self.up.nbytes + self.down.nbytes


class Embedding(Protocol):
    """Token embedding and (tied) LM head."""

    def lookup(self, ids: torch.Tensor) -> torch.Tensor: ...  # [T] -> [T, H]

    def logits(self, h: torch.Tensor) -> torch.Tensor: ...  # [T, H] -> [T, V]

    @property
    def nbytes(self) -> int: ...


class DenseEmbedding:
    def __init__(self, weight: torch.Tensor, head: Linear | None = None) -> None:
        self.weight = weight.float().contiguous()  # [V, H]
        self.head = head or DenseLinear(self.weight)

    def lookup(self, ids: torch.Tensor) -> torch.Tensor:
        return self.weight[ids]

    def logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.head(h)

    @property
    def nbytes(self) -> int:
        tied = isinstance(self.head, DenseLinear) and self.head.weight is self.weight
        return self.weight.numel() * 4 + (0 if tied else self.head.nbytes)


@dataclass
class LayerWeights:
    attn_norm: torch.Tensor  # [H]
    q: Linear
    k: Linear
    v: Linear
    o: Linear
    ffn_norm: torch.Tensor  # [H]
    ffn: FFN

    def linears(self) -> dict[str, Linear]:
        return {"q": self.q, "k": self.k, "v": self.v, "o": self.o}


# Calibration hooks see the input of every linear site: (layer, site, x[T, in]).
Recorder = "Callable[[int, str, torch.Tensor], None]"


class LlamaRuntime:
    """Weights plus one sequence's KV cache; ``forward`` appends tokens at ``start``."""

    def __init__(self, shape: LlamaShape, embedding: Embedding, layers: list[LayerWeights],
                 final_norm: torch.Tensor, capacity: int = 1024) -> None:
        self.shape, self.embedding, self.layers, self.final_norm = shape, embedding, layers, final_norm
        self.recorder = None  # optional callable(layer, site, x) for calibration
        self.length = 0  # tokens whose KV is cached
        self._alloc(capacity)

    def _alloc(self, capacity: int) -> None:
        s = self.shape
        # [L, KVH, capacity, D] each; grown by doubling when a sequence outgrows it.
        old_k, old_v = getattr(self, "k_cache", None), getattr(self, "v_cache", None)
        self.k_cache = torch.zeros(s.layers, s.kv_heads, capacity, s.head_dim)
        self.v_cache = torch.zeros_like(self.k_cache)
        if old_k is not None:
            self.k_cache[:, :, : self.length] = old_k[:, :, : self.length]
            self.v_cache[:, :, : self.length] = old_v[:, :, : self.length]
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2).double() / s.head_dim))
        angles = torch.outer(torch.arange(capacity).double(), inv_freq)  # [capacity, D/2]
        emb = torch.cat([angles, angles], dim=-1)
        self._cos, self._sin = emb.cos().float(), emb.sin().float()  # [capacity, D]
        self.capacity = capacity

    def truncate(self, length: int) -> None:
        """Drop the KV of positions >= length (a rollback; nothing is recomputed)."""
        self.length = min(self.length, length)

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights held in DRAM (flash FFNs count only their buffers)."""
        total = self.embedding.nbytes + self.final_norm.numel() * 4
        for layer in self.layers:
            total += sum(lin.nbytes for lin in layer.linears().values())
            total += (layer.attn_norm.numel() + layer.ffn_norm.numel()) * 4 + layer.ffn.dram_bytes
        return total

    @torch.inference_mode()
    def forward(self, ids: list[int], last_only: bool = True) -> torch.Tensor:
        """Run ``ids`` after the cached prefix; logits [T or 1, V]."""
        start, count = self.length, len(ids)
        if start + count > self.capacity:
            self._alloc(max(self.capacity * 2, start + count))
        h = self.embedding.lookup(torch.tensor(ids))  # [T, H]
        for index, layer in enumerate(self.layers):
            h = h + self._attention(index, layer, self._norm(h, layer.attn_norm), start)
            x = self._norm(h, layer.ffn_norm)
            if self.recorder is not None:
                self.recorder(index, "ffn", x)
            h = h + layer.ffn(x)
        self.length = start + count
        if last_only:
            h = h[-1:]
        return self.embedding.logits(self._norm(h, self.final_norm))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.shape.rms_eps) * weight

    def _rope(self, x: torch.Tensor, start: int) -> torch.Tensor:
        # x: [heads, T, D]
        count = x.shape[1]
        cos, sin = self._cos[start:start + count], self._sin[start:start + count]
        half = x.shape[-1] // 2
        rotated = torch.cat([-x[..., half:], x[..., :half]], dim=-1)
        return x * cos + rotated * sin

    def _attention(self, index: int, layer: LayerWeights, x: torch.Tensor, start: int) -> torch.Tensor:
        s, count = self.shape, x.shape[0]
        if self.recorder is not None:
            self.recorder(index, "attn", x)
        q = layer.q(x).view(count, s.heads, s.head_dim).transpose(0, 1)  # [Hq, T, D]
        k = layer.k(x).view(count, s.kv_heads, s.head_dim).transpose(0, 1)  # [Hkv, T, D]
        v = layer.v(x).view(count, s.kv_heads, s.head_dim).transpose(0, 1)
        end = start + count
        self.k_cache[index, :, start:end] = self._rope(k, start)
        self.v_cache[index, :, start:end] = v
        keys, values = self.k_cache[index, :, :end], self.v_cache[index, :, :end]  # [Hkv, S, D]
        scores = self._rope(q, start).view(s.kv_heads, -1, count, s.head_dim) @ keys.transpose(
            1, 2).unsqueeze(1)  # [Hkv, G, T, S]
        scores = scores * (s.head_dim ** -0.5)
        if count > 1:  # causal within this call; every cached position is visible
            visible = torch.ones(count, end, dtype=torch.bool).tril(diagonal=start)
            scores = scores.masked_fill(~visible, float("-inf"))
        out = torch.softmax(scores, dim=-1) @ values.unsqueeze(1)  # [Hkv, G, T, D]
        out = out.view(1, s.heads, count, s.head_dim)
        out = out[0].transpose(0, 1).reshape(count, s.heads * s.head_dim)
        if self.recorder is not None:
            self.recorder(index, "o", out)
        return layer.o(out)


def load_hf_state(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of an HF folder's safetensors files (fp32)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for file in sorted(path.glob("*.safetensors")):
        state.update({k: v.float() for k, v in load_file(file).items()})
    return state


def dense_runtime(shape: LlamaShape, state: dict[str, torch.Tensor], capacity: int = 1024) -> LlamaRuntime:
    """The fully resident fp32 runtime from HF-named tensors."""
    layers = []
    for i in range(shape.layers):
        p = f"model.layers.{i}."
        ffn = DenseFFN(*(DenseLinear(state[f"{p}mlp.{n}_proj.weight"]) for n in ("gate", "up", "down")))
        layers.append(LayerWeights(
            attn_norm=state[f"{p}input_layernorm.weight"],
            q=DenseLinear(state[f"{p}self_attn.q_proj.weight"]),
            k=DenseLinear(state[f"{p}self_attn.k_proj.weight"]),
            v=DenseLinear(state[f"{p}self_attn.v_proj.weight"]),
            o=DenseLinear(state[f"{p}self_attn.o_proj.weight"]),
            ffn_norm=state[f"{p}post_attention_layernorm.weight"], ffn=ffn))
    embed = state["model.embed_tokens.weight"]
    head = None if shape.tied or "lm_head.weight" not in state else DenseLinear(state["lm_head.weight"])
    return LlamaRuntime(shape, DenseEmbedding(embed, head), layers, state["model.norm.weight"], capacity)
