"""Loading the cloud model with transformers, de-quantizing a GGUF once and caching the
result as safetensors so later starts skip the slow conversion."""

from __future__ import annotations

import logging
import os
import shutil
import time
from typing import TYPE_CHECKING

import torch

from tandem.shared.log import log_event
from tandem.shared.models import ModelSource, converted_dir

if TYPE_CHECKING:
    from transformers import PreTrainedModel

logger = logging.getLogger(__name__)


def load_causal_lm(source: ModelSource, dtype: str) -> PreTrainedModel:
    """The model in eval mode with ``dtype`` weights."""
    from transformers import AutoModelForCausalLM

    torch_dtype = getattr(torch, dtype)
    started = time.perf_counter()
    path = dequantized_folder(source) if source.is_gguf else source.path
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    model.eval()
    log_event(logger, "cloud model loaded", model=source.name, dtype=dtype,
              seconds=round(time.perf_counter() - started, 2))
    return model


def dequantized_folder(source: ModelSource) -> os.PathLike[str]:
    """An HF folder (config + fp32 safetensors) converted from the GGUF, cached."""
    from transformers import AutoModelForCausalLM

    folder = converted_dir(source) / "hf"
    if (folder / "config.json").is_file():
        return folder
    log_event(logger, "de-quantizing GGUF to safetensors (once; cached)", model=source.name,
              cache=str(folder))
    model = AutoModelForCausalLM.from_pretrained(
        source.path.parent, gguf_file=source.path.name, dtype=torch.float32)
    # The weights are plain tensors now; drop the GGUF marker that blocks saving them.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = folder.with_name(f"hf.tmp{os.getpid()}")
    model.save_pretrained(tmp)
    folder.parent.mkdir(parents=True, exist_ok=True)
    if folder.exists():  # another process finished first
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, folder)
    return folder
