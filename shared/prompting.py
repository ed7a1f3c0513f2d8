"""Request inputs (prompt, chat messages or token ids) and rendering them to token ids
with the model's chat template."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandem.shared.errors import InvalidArgument
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHAT_ROLES = ("system", "user", "assistant")
# Prompts at least this long are tokenized on a worker thread (about a millisecond of
# tokenizer time), so a large prompt does not hold up other requests on the event loop.
TOKENIZE_INLINE_BYTES = 4096
# Marks where each message's content sits in the rendered chat template.
_CONTENT_MARK = re.compile("\ue000([0-9]+)\ue001")


@dataclass(frozen=True)
class PromptInput:
    """Exactly one of: a prompt string, a conversation, or token ids (validated)."""

    prompt: str | None = None
    messages: tuple[tuple[str, str], ...] = field(default_factory=tuple)
    token_ids: tuple[int, ...] = field(default_factory=tuple)
    raw: bool = False

    @classmethod
    def from_pb(cls, request: Any, *, vocab_size: int | None = None) -> PromptInput:
        """Read the ``input`` oneof of a Router or Tier request; raises InvalidArgument."""
        which = request.WhichOneof("input")
        if which is None:
            raise InvalidArgument("prompt: one of prompt or messages is required")
        if which == "prompt":
            if not request.prompt.strip():
                raise InvalidArgument("prompt: must not be empty")
            return cls(prompt=request.prompt, raw=request.raw_prompt)
        if which == "messages":
            return cls(messages=validate_messages(request.messages.messages))
        ids = tuple(request.prompt_tokens.ids)
        if not ids:
            raise InvalidArgument("prompt_tokens: must not be empty")
        if vocab_size is not None and any(not 0 <= t < vocab_size for t in ids):
            raise InvalidArgument(f"prompt_tokens: ids must be in [0, {vocab_size})")
        return cls(token_ids=ids)

    @property
    def text_bytes(self) -> int:
        """UTF-8 bytes of the text to tokenize (0 for token ids)."""
        if self.prompt is not None:
            return len(self.prompt.encode())
        return sum(len(content.encode()) for _, content in self.messages)

    def check_size(self, context_window: int, bytes_per_token: int) -> None:
        """Refuse, before tokenizing it, a prompt that cannot fit ``context_window`` tokens:
        no token covers more than ``bytes_per_token`` bytes of text."""
        if len(self.token_ids) >= context_window:
            raise InvalidArgument(f"prompt_tokens: {len(self.token_ids)} tokens do not fit the "
                                  f"context window of {context_window}")
        if self.text_bytes > context_window * bytes_per_token:
            raise InvalidArgument(
                f"prompt: {self.text_bytes} bytes cannot fit the context window of "
                f"{context_window} tokens")

    def conversation(self, history: list[dict[str, str]] | None = None) -> list[dict[str, str]]:
        """This input as chat turns appended to ``history``."""
        turns = list(history or [])
        if self.prompt is not None:
            turns.append({"role": "user", "content": self.prompt})
        turns.extend({"role": r, "content": c} for r, c in self.messages)
        return turns


def validate_messages(messages: Any) -> tuple[tuple[str, str], ...]:
    if not messages:
        raise InvalidArgument("messages: must contain at least one message")
    out = []
    for i, m in enumerate(messages):
        if m.role not in CHAT_ROLES:
            raise InvalidArgument(f"messages[{i}].role: must be one of {CHAT_ROLES}, got {m.role!r}")
        if m.role != "assistant" and not m.content.strip():
            raise InvalidArgument(f"messages[{i}].content: must not be empty")
        out.append((m.role, m.content))
    if out[-1][0] == "assistant":
        raise InvalidArgument("messages: the last message must not be from the assistant")
    return tuple(out)


def render(tokenizer: PreTrainedTokenizerBase, prompt: PromptInput,
           history: list[dict[str, str]] | None = None) -> list[int]:
    """Token ids the model sees for ``prompt`` after ``history`` (chat template applied)."""
    if prompt.token_ids:
        return list(prompt.token_ids)
    if prompt.raw and not history:
        # A raw prompt is the client's whole model input, control tokens included.
        return list(tokenizer.encode(prompt.prompt or "", add_special_tokens=False))
    return chat_token_ids(tokenizer, prompt.conversation(history))


async def render_off_loop(tokenizer: PreTrainedTokenizerBase, prompt: PromptInput,
                          history: list[dict[str, str]] | None = None) -> list[int]:
    """``render``, on a worker thread when the text is long enough to hold up the loop."""
    size = prompt.text_bytes + sum(len(t["content"]) for t in history or ())
    if size < TOKENIZE_INLINE_BYTES:
        return render(tokenizer, prompt, history)
    return await asyncio.to_thread(render, tokenizer, prompt, history)


def chat_token_ids(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]]) -> list[int]:
    """The chat template's tokens, with every message's content encoded as plain text: a
    user who writes ``<|im_end|>`` gets those characters, not a control token (else a user
    message could forge a system turn). Contents without control-token text (nearly all)
    take the plain path: the rendered template tokenized as a whole."""
    if not any(_control_text(tokenizer).search(turn["content"]) for turn in turns):
        text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
        return list(tokenizer.encode(text, add_special_tokens=False))
    marked = [{**turn, "content": f"\ue000{i}\ue001"} for i, turn in enumerate(turns)]
    text = tokenizer.apply_chat_template(marked, add_generation_prompt=True, tokenize=False)
    pieces = _CONTENT_MARK.split(text)  # template, index, template, index, ..., template
    if len(pieces) != 2 * len(turns) + 1:
        raise ValueError("the chat template does not insert message contents verbatim")
    ids: list[int] = []
    for i, piece in enumerate(pieces):
        if i % 2 == 0:
            ids += tokenizer.encode(piece, add_special_tokens=False) if piece else []
        else:
            content = turns[int(piece)]["content"]
            ids += tokenizer.encode(content, add_special_tokens=False,
                                    split_special_tokens=True) if content else []
    return ids


_CONTROL_TEXT: dict[int, re.Pattern[str]] = {}


def _control_text(tokenizer: PreTrainedTokenizerBase) -> re.Pattern[str]:
    """Matches the text of any of the tokenizer's added (control) tokens."""
    pattern = _CONTROL_TEXT.get(id(tokenizer))
    if pattern is None:
        texts = sorted((t.content for t in tokenizer.added_tokens_decoder.values()), key=len,
                       reverse=True)
        pattern = re.compile("|".join(map(re.escape, texts)) or "(?!)")
        _CONTROL_TEXT[id(tokenizer)] = pattern
    return pattern


def max_token_bytes(tokenizer: PreTrainedTokenizerBase) -> int:
    """An upper bound on the text bytes one token covers: the longest vocabulary entry's
    UTF-8 length (byte-level entries spell a byte with up to two UTF-8 bytes)."""
    return max(len(entry.encode()) for entry in tokenizer.get_vocab())


def messages_to_pb(turns: list[dict[str, str]]) -> common_pb2.Messages:
    return common_pb2.Messages(
        messages=[common_pb2.ChatMessage(role=t["role"], content=t["content"]) for t in turns])
