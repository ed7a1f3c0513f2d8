"""A small Llama forward pass in plain torch whose linear layers and FFNs are pluggable,
so that quantized, pruned, activation-sparse and flash-offloaded variants share one
attention/KV-cache implementation.

Shapes: T = tokens in this call, H = hidden, F = FFN width, V = vocab, D = head dim.
The KV cache is preallocated and truncated in place, so rolling back to a prefix costs
nothing and never re-processes it. With a KV eviction policy (edge/kv_eviction.py, H2O)
the cache holds a bounded subset of the positions seen: positions (RoPE) and cache slots
are then counted apart, and a rollback can only undo the recent window.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Protocol

import torch
import torch.nn.functional as F

from tandem.edge.kv_eviction import KVEviction
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
        self.length = 0  # cache slots in use (= position unless tokens were evicted)
        self.position = 0  # tokens of the sequence seen so far
        self.eviction: KVEviction | None = None
        self.attention_mass: torch.Tensor | None = None  # [L, KVH, capacity] with eviction
        self._rollback_limit = 0  # the last slots that are the last positions, in order
        self._rope_length = 0
        self._alloc(capacity)

    def set_kv_eviction(self, eviction: KVEviction | None) -> None:
        """Bound the cache (H2O or recent-window eviction) from the next token on; the
        cache starts empty."""
        self.truncate(0)
        self.eviction = eviction
        self.attention_mass = (torch.zeros(self.k_cache.shape[:3]) if eviction is not None
                               else None)

    def _alloc(self, capacity: int) -> None:
        s = self.shape
        # [L, KVH, capacity, D] each; grown by doubling when a sequence outgrows it.
        old_k, old_v = getattr(self, "k_cache", None), getattr(self, "v_cache", None)
        self.k_cache = torch.zeros(s.layers, s.kv_heads, capacity, s.head_dim)
        self.v_cache = torch.zeros_like(self.k_cache)
        if old_k is not None:
            self.k_cache[:, :, : self.length] = old_k[:, :, : self.length]
            self.v_cache[:, :, : self.length] = old_v[:, :, : self.length]
        mass = getattr(self, "attention_mass", None)
        if mass is not None:
            self.attention_mass = torch.zeros(self.k_cache.shape[:3])
            self.attention_mass[..., : self.length] = mass[..., : self.length]
        self.capacity = capacity
        self._rope_tables(max(capacity, self._rope_length))

    def _rope_tables(self, length: int) -> None:
        """cos/sin tables for positions [0, length) (positions outrun slots with eviction)."""
        if length <= self._rope_length:
            return
        s = self.shape
        inv_freq = 1.0 / (s.rope_theta ** (torch.arange(0, s.head_dim, 2).double() / s.head_dim))
        angles = torch.outer(torch.arange(length).double(), inv_freq)  # [length, D/2]
        emb = torch.cat([angles, angles], dim=-1)
        self._cos, self._sin = emb.cos().float(), emb.sin().float()  # [length, D]
        self._rope_length = length

    def can_truncate(self, position: int) -> bool:
        """Whether the KV of positions < ``position`` is still all there to roll back to
        (always, without eviction; with it, within the recent window, or to empty)."""
        return position == 0 or position >= self.position - self._rollback_limit

    def truncate(self, length: int) -> None:
        """Drop the KV of positions >= length (a rollback; nothing is recomputed)."""
        if length >= self.position:
            return
        if not self.can_truncate(length):
            raise ValueError(f"cannot roll back to position {length}: evicted KV (the "
                             f"recent window covers positions >= "
                             f"{self.position - self._rollback_limit})")
        drop = self.position - length
        self.position, self.length = length, self.length - drop if length else 0
        self._rollback_limit = self._rollback_limit - drop if length else 0

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
        if self.position + count > self._rope_length:
            self._rope_tables(2 * (self.position + count))
        if self.attention_mass is not None:  # slots a rollback freed held other tokens
            self.attention_mass[..., start:start + count] = 0.0
        h = self.embedding.lookup(torch.tensor(ids))  # [T, H]
        for index, layer in enumerate(self.layers):
            h = h + self._attention(index, layer, self._norm(h, layer.attn_norm), start)
            x = self._norm(h, layer.ffn_norm)
            if self.recorder is not None:
                self.recorder(index, "ffn", x)
            h = h + layer.ffn(x)
        self.length, self.position = start + count, self.position + count
        self._rollback_limit += count
        if self.eviction is not None:
            self._evict()
        if last_only:
            h = h[-1:]
        return self.embedding.logits(self._norm(h, self.final_norm))

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        variance = x.pow(2).mean(-1, keepdim=True)
        return x * torch.rsqrt(variance + self.shape.rms_eps) * weight

    def _evict(self) -> None:
        """Shrink every layer's and KV head's cache to the budget, keeping its choice of
        slots (in order) and their accumulated attention."""
        assert self.eviction is not None and self.attention_mass is not None
        budget = self.eviction.tokens(self.position)
        if self.length <= budget:
            return
        mass = self.attention_mass[..., : self.length]
        keep = self.eviction.keep(mass, budget)  # [L, KVH, budget]
        rows = keep.unsqueeze(-1).expand(-1, -1, -1, self.shape.head_dim)
        self.k_cache[:, :, :budget] = self.k_cache[:, :, : self.length].gather(2, rows)
        self.v_cache[:, :, :budget] = self.v_cache[:, :, : self.length].gather(2, rows)
        self.attention_mass[..., :budget] = mass.gather(2, keep)
        self.length = budget
        self._rollback_limit = min(self._rollback_limit, self.eviction.window(budget))

    def _rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
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
        end, position = start + count, self.position  # cache slots; RoPE positions
        self.k_cache[index, :, start:end] = self._rotate(k, position)
        self.v_cache[index, :, start:end] = v
        keys, values = self.k_cache[index, :, :end], self.v_cache[index, :, :end]  # [Hkv, S, D]
        scores = self._rotate(q, position).view(s.kv_heads, -1, count, s.head_dim) @ keys.transpose(
            1, 2).unsqueeze(1)  # [Hkv, G, T, S]
        scores = scores * (s.head_dim ** -0.5)
        if count > 1:  # causal within this call; every cached position is visible
            visible = torch.ones(count, end, dtype=torch.bool).tril(diagonal=start)
            scores = scores.masked_fill(~visible, float("-inf"))
        probs = torch.softmax(scores, dim=-1)
        if self.attention_mass is not None:  # H2O: attention each slot has received
            self.attention_mass[index, :, :end] += probs.sum(dim=(1, 2))
        out = probs @ values.unsqueeze(1)  # [Hkv, G, T, D]
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
