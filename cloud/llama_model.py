"""A fast forward for Llama-family decoders (Llama, SmolLM2, Qwen2, Mistral) over the
paged KV cache: every sequence of a step in one flattened batch.

Weights come from the transformers model (which also supplies the rotary embedding, so
every RoPE scaling variant it knows works here); projections are fused (q|k|v and
gate|up) so a step is one matmul per projection for all tokens of all sequences, each
through a pre-packed kernel (linear.py). Decode and verify queries attend through the
native kernel, which reads each sequence's KV in place through its block table; prefill
chunks (and everything where the native kernels cannot run) through SDPA over gathered KV.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from tandem.shared import native
from tandem.shared.linear import Linear

if TYPE_CHECKING:
    from transformers import PreTrainedModel

FAST_ARCHITECTURES = frozenset({"llama", "qwen2", "mistral"})
# Sequences computing at most this many tokens (decode, verify, short prompts and prompt
# tails past a cached prefix) attend through the native paged kernel, or where it cannot
# run share one padded SDPA call; longer prefill chunks attend through SDPA. (24 rows
# over 1,048 keys took 0.9 ms a layer native against 1.2 ms through SDPA and its gather;
# the native kernel's cost grows with rows x keys, SDPA's blocked kernel was not measured
# against it past that, so the cut stays low.)
SMALL_QUERY = 32


def supports_fast_path(config: object, context_window: int) -> str | None:
    """None if the fast forward computes this model exactly, else the reason it cannot."""
    model_type = getattr(config, "model_type", "")
    if model_type not in FAST_ARCHITECTURES:
        return f"architecture {model_type!r} is not in {sorted(FAST_ARCHITECTURES)}"
    window = getattr(config, "sliding_window", None)
    uses_window = getattr(config, "use_sliding_window", model_type == "mistral")
    if window and uses_window and window < context_window:
        return f"sliding window {window} < context window {context_window}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    return None


@dataclass
class LayerWeights:
    input_norm: torch.Tensor  # [D]
    qkv: Linear  # D -> (H + 2*Hkv) * hd, bias included where the model has one
    o: Linear  # H * hd -> D
    post_norm: torch.Tensor  # [D]
    gate_up: Linear  # D -> 2 * F
    down: Linear  # F -> D

    def matmuls(self) -> list[Linear]:
        return [self.qkv, self.o, self.gate_up, self.down]


@dataclass(frozen=True)
class AttentionGroup:
    """Sequences whose attention runs in one (padded) SDPA call."""

    query_rows: torch.Tensor  # [B, Q] flat token index of each query (padding: 0)
    query_valid: torch.Tensor  # [B, Q] bool
    key_slots: torch.Tensor  # [B, L] KV slot of each key position (padding: 0)
    mask: torch.Tensor | None  # [B, 1, Q, L] bool: query may attend to key; None: all
    # The group's queries are exactly the step's tokens in order (no scatter needed).
    covers_step: bool = False


@dataclass(frozen=True)
class PagedQueries:
    """Query rows whose attention the native kernel reads in place from the paged cache
    (decode and verify rows: no gather, no padding, no mask)."""

    rows: torch.Tensor  # [R] flat token index of each query
    table_start: torch.Tensor  # [R] where its sequence's blocks start in block_tables
    keys: torch.Tensor  # [R] keys it attends to: its position + 1 (causal)
    block_tables: torch.Tensor  # every member sequence's blocks, one after another
    block_size: int


@dataclass(frozen=True)
class StepInput:
    token_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    slots: torch.Tensor  # [T] KV slot each new token's K/V is written to
    groups: list[AttentionGroup]  # queries attending through SDPA
    logit_rows: torch.Tensor  # [N] flat token indices whose logits are returned
    paged: PagedQueries | None = None  # queries attending through the native kernel


class LlamaForward:
    def __init__(self, hf_model: PreTrainedModel, allow_native: bool = True) -> None:
        """``allow_native``: False keeps fp32 on oneDNN and torch's ops (to compare)."""
        cfg = hf_model.config
        self.num_heads = cfg.num_attention_heads
        self.num_kv_heads = getattr(cfg, "num_key_value_heads", None) or self.num_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.num_heads
        self.num_layers = cfg.num_hidden_layers
        self.eps = cfg.rms_norm_eps
        self.dtype = hf_model.dtype
        inner = hf_model.model
        self.embed = inner.embed_tokens.weight  # [V, D]
        self.final_norm = inner.norm.weight
        self.lm_head = Linear(hf_model.lm_head.weight,  # [V, D] (often tied to embed)
                              allow_native=allow_native)
        self.rotary = inner.rotary_emb
        self.layers = [self._fuse(layer, allow_native) for layer in inner.layers]
        # The residual add and the norm after it in one native pass (fp32); with it, RoPE,
        # the KV write and decode/verify attention in two.
        self.native = (native.kernels() if allow_native and self.dtype == torch.float32
                       else None)
        self.native_attention = self.native is not None
        # Decode and verify steps: every layer in one native call (same kernels, same order).
        self.decoder = None if self.native is None else native.DecoderWeights.build(
            self.num_heads, self.num_kv_heads, self.head_dim, self.eps, {
                "input_norm": [w.input_norm for w in self.layers],
                "qkv": [w.qkv.weight for w in self.layers],
                "qkv_bias": [w.qkv.bias for w in self.layers],
                "o": [w.o.weight for w in self.layers],
                "post_norm": [w.post_norm for w in self.layers],
                "gate_up": [w.gate_up.weight for w in self.layers],
                "down": [w.down.weight for w in self.layers]})

    @staticmethod
    def _fuse(layer: torch.nn.Module, allow_native: bool) -> LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        biases = [attn.q_proj.bias, attn.k_proj.bias, attn.v_proj.bias]
        return LayerWeights(
            input_norm=layer.input_layernorm.weight,
            qkv=Linear(torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight]),
                       None if biases[0] is None else torch.cat(biases), allow_native),
            o=Linear(attn.o_proj.weight, allow_native=allow_native),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=Linear(torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]),
                           allow_native=allow_native),
            down=Linear(mlp.down_proj.weight, allow_native=allow_native))

    def weight_bytes_per_token(self) -> int:
        """Bytes of weights one decode step reads (the embedding row aside; the LM head
        reads the whole vocabulary matrix)."""
        tensors = [self.final_norm]
        for w in self.layers:
            tensors += [w.input_norm, w.post_norm]
            if w.qkv.bias is not None:
                tensors.append(w.qkv.bias)
        return (sum(t.numel() * t.element_size() for t in tensors)
                + sum(m.nbytes for m in self.matmuls()))

    def matmuls(self) -> list[Linear]:
        """Every weight matmul of a decode step, in order."""
        return [m for w in self.layers for m in w.matmuls()] + [self.lm_head]

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        if x.dtype == torch.float32:  # one fused op, same result as the composite below
            return F.rms_norm(x, weight.shape, weight, self.eps)
        # Same arithmetic as transformers' LlamaRMSNorm: normalise in fp32.
        x32 = x.to(torch.float32)
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * x32.to(x.dtype)

    def _add_norm(self, x: torch.Tensor, delta: torch.Tensor | None,
                  weight: torch.Tensor) -> torch.Tensor:
        """x += delta (the residual stream, in place), then the norm of x."""
        if self.native is not None:
            return self.native.add_rms_norm(x, delta, weight, self.eps)
        if delta is not None:
            x += delta
        return self._rms_norm(x, weight)

    @torch.inference_mode()
    def forward(self, step: StepInput, k_cache: torch.Tensor, v_cache: torch.Tensor
                ) -> torch.Tensor:
        """Run one step; returns fp32 logits [N, V] of ``step.logit_rows``.

        k_cache, v_cache: [layers, slots, Hkv, hd], written at ``step.slots``.
        """
        x = F.embedding(step.token_ids, self.embed)  # [T, D], the residual stream
        cos, sin = self.rotary(x, step.positions[None])  # [1, T, hd]
        cos, sin = cos[0], sin[0]  # [T, hd]
        p = step.paged
        if self.decoder is not None and not step.groups and p is not None:
            assert self.native is not None and len(p.rows) == len(x)  # every token, in order
            self.native.decoder_layers(self.decoder, x, cos, sin, k_cache, v_cache, step.slots,
                                       p.block_tables, p.block_size, p.table_start, p.keys)
        else:
            self._layers(x, cos, sin, step, k_cache, v_cache)
        x = self._rms_norm(x[step.logit_rows], self.final_norm)  # [N, D]
        return self.lm_head(x).float()  # [N, V]

    def _layers(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, step: StepInput,
                k_cache: torch.Tensor, v_cache: torch.Tensor) -> None:
        """The decoder layers op by op; x, the residual stream, updated in place."""
        h = self._add_norm(x, None, self.layers[0].input_norm)
        for i, w in enumerate(self.layers):
            attended = self._attention(i, h, w, cos, sin, step, k_cache[i], v_cache[i])
            h = self._add_norm(x, attended, w.post_norm)
            mlp = w.down(self._silu_mul(w.gate_up(h)))
            if i + 1 < len(self.layers):
                h = self._add_norm(x, mlp, self.layers[i + 1].input_norm)
            else:
                x += mlp

    def _silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor:
        if self.native is not None:
            return self.native.silu_mul(gate_up)
        gate, up = gate_up.chunk(2, dim=-1)  # [T, F] each
        return F.silu(gate) * up

    def _attention(self, layer: int, h: torch.Tensor, w: LayerWeights, cos: torch.Tensor,
                   sin: torch.Tensor, step: StepInput, k_cache: torch.Tensor,
                   v_cache: torch.Tensor) -> torch.Tensor:
        T = h.shape[0]
        H, hd = self.num_heads, self.head_dim
        q = self._rope_kv_write(w.qkv(h), cos, sin, step.slots, k_cache, v_cache)  # [T, H, hd]
        if not step.groups:
            out = torch.empty(T, H, hd, dtype=h.dtype)
        elif len(step.groups) == 1 and step.groups[0].covers_step:
            return w.o(self._group_attention(q, step.groups[0], k_cache, v_cache)
                       .reshape(T, H * hd))  # [T, D]
        else:
            out = torch.empty(T, H, hd, dtype=h.dtype)
            for g in step.groups:
                og = self._group_attention(q, g, k_cache, v_cache)
                out[g.query_rows[g.query_valid]] = og[g.query_valid]
        if step.paged is not None:
            assert self.native is not None
            p = step.paged
            self.native.paged_attention(q, k_cache, v_cache, p.block_tables, p.block_size,
                                        p.rows, p.table_start, p.keys, out, hd ** -0.5)
        return w.o(out.view(T, H * hd))  # [T, D]

    def _rope_kv_write(self, qkv: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor,
                       slots: torch.Tensor, k_cache: torch.Tensor, v_cache: torch.Tensor
                       ) -> torch.Tensor:
        """Rotate q and k (RoPE), write k and v to the cache at ``slots``; q [T, H, hd]."""
        H, Hkv, hd = self.num_heads, self.num_kv_heads, self.head_dim
        if self.native_attention:
            assert self.native is not None
            return self.native.rope_kv_write(qkv, cos, sin, k_cache, v_cache, slots, H)
        qkv = qkv.view(qkv.shape[0], H + 2 * Hkv, hd)
        qk = qkv[:, :H + Hkv]  # rotate q and k together: [T, H + Hkv, hd]
        half = hd // 2  # rotate_half(x) = cat(-x2, x1), as in transformers
        cos, sin = cos[:, None], sin[:, None]  # [T, 1, hd]
        qk = qk * cos + torch.cat([-qk[..., half:], qk[..., :half]], dim=-1) * sin
        k_cache.index_copy_(0, slots, qk[:, H:])
        v_cache.index_copy_(0, slots, qkv[:, H + Hkv:])
        return qk[:, :H]

    def _group_attention(self, q: torch.Tensor, g: AttentionGroup, k_cache: torch.Tensor,
                         v_cache: torch.Tensor) -> torch.Tensor:
        """Attention of a group's queries over their sequences' cached keys."""
        B, L = g.key_slots.shape
        if g.covers_step and g.query_rows.shape[1] == 1:  # plain decode: no gather
            qg = q[:, :, None, :]  # [B, H, 1, hd]
        else:
            qg = q[g.query_rows].transpose(1, 2)  # [B, H, Q, hd]
        flat = g.key_slots.view(-1)
        kg = k_cache.index_select(0, flat).view(B, L, -1, self.head_dim).transpose(1, 2)
        vg = v_cache.index_select(0, flat).view(B, L, -1, self.head_dim).transpose(1, 2)
        og = F.scaled_dot_product_attention(  # [B, H, Q, hd]
            qg, kg, vg, attn_mask=g.mask, enable_gqa=self.num_kv_heads != self.num_heads)
        return og.transpose(1, 2)  # [B, Q, H, hd]

