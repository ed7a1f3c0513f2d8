"""Writing a transformers Llama model into a GGUF that the llama.cpp edge serves.

The tokenizer and the descriptive metadata come from a template GGUF (the model the
weights started from: `tandem distill` trains the packaged model); the architecture's
hyper-parameters come from the model's own config, so a model of another size is described
correctly too. Tensors are written in F32; quantizing is left to llama.cpp's own quantize
API (`gguf_quant.requantize`), which picks per-tensor fallbacks the way every llama.cpp
model is made.

llama.cpp's rotary embedding rotates adjacent pairs of a head's dimensions, transformers'
Llama rotates its two halves (rotate_half), so a GGUF stores the query and key rows of
each head interleaved: `_interleave_heads` is the permutation transformers undoes when it
loads a GGUF.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

ARCHITECTURE = "llama"
# Template keys not copied: the writer's own header fields, the architecture's
# hyper-parameters (written from the config) and what describes the template's weights.
_NOT_COPIED = ("GGUF.", f"{ARCHITECTURE}.", "general.architecture", "general.file_type",
               "general.quantization_version")


def export_gguf(model: Any, template: Path, out: Path) -> Path:
    """Write ``model`` (a transformers LlamaForCausalLM) to ``out`` as an F32 GGUF with
    ``template``'s tokenizer; returns ``out``."""
    import gguf

    config = model.config
    if config.model_type != ARCHITECTURE:
        raise ValueError(f"GGUF export supports {ARCHITECTURE!r} models, got "
                         f"{config.model_type!r}")
    reader = gguf.GGUFReader(str(template))
    template_vocab = len(reader.fields["tokenizer.ggml.tokens"].data)
    if template_vocab != config.vocab_size:
        raise ValueError(f"the template's tokenizer has {template_vocab} tokens, the model "
                         f"{config.vocab_size}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp{os.getpid()}")
    writer = gguf.GGUFWriter(str(tmp), ARCHITECTURE)
    try:
        _copy_metadata(reader, writer)
        _write_hyperparameters(config, writer)
        writer.add_file_type(gguf.LlamaFileType.ALL_F32)
        for name, tensor in _gguf_tensors(model):
            writer.add_tensor(name, tensor)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    os.replace(tmp, out)
    return out


def _copy_metadata(reader: Any, writer: Any) -> None:
    import gguf

    for field in reader.fields.values():
        if field.name.startswith(_NOT_COPIED):
            continue
        kind = field.types[0]
        sub_type = field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), kind, sub_type=sub_type)


def _write_hyperparameters(config: Any, writer: Any) -> None:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_vocab_size(config.vocab_size)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(head_dim)


def _rope_theta(config: Any) -> float:
    # transformers 5 keeps it in rope_parameters; older configs as an attribute.
    parameters = getattr(config, "rope_parameters", None) or {}
    if parameters.get("rope_type", "default") != "default":
        raise ValueError(f"GGUF export supports plain RoPE, got {parameters['rope_type']!r}")
    return float(parameters.get("rope_theta") or config.rope_theta)


def gguf_names(model: Any) -> dict[str, str]:
    """The model's tensor names -> their GGUF names; the output head is left out when it is
    the embedding (tied), as llama.cpp then reuses token_embd."""
    import gguf

    config = model.config
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, config.num_hidden_layers)
    out = {}
    for name in model.state_dict():
        if name == "lm_head.weight" and config.tie_word_embeddings:
            continue
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        if gguf_name is None:
            raise ValueError(f"no GGUF name for the model's tensor {name!r}")
        out[name] = gguf_name
    return out


def _gguf_tensors(model: Any):
    """(GGUF name, F32 array) for every weight, query and key rows interleaved."""
    config = model.config
    state = model.state_dict()
    for name, gguf_name in gguf_names(model).items():
        weight = state[name].detach().to(torch.float32)
        if name.endswith("self_attn.q_proj.weight"):
            weight = _interleave_heads(weight, config.num_attention_heads)
        elif name.endswith("self_attn.k_proj.weight"):
            weight = _interleave_heads(weight, config.num_key_value_heads)
        yield gguf_name, np.ascontiguousarray(weight.numpy())


def _interleave_heads(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head from [first half, second half] to alternating pairs."""
    rows = weight.shape[0]
    return (weight.reshape(heads, 2, rows // heads // 2, *weight.shape[1:])
            .transpose(1, 2).reshape(weight.shape))
