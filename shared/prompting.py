"""Request inputs (prompt, chat messages or token ids) and rendering them to token ids
with the model's chat template."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from tandem.shared.errors import InvalidArgument
from tandem.v1 import common_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

CHAT_ROLES = ("system", "user", "assistant")


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
        return list(tokenizer.encode(prompt.prompt or "", add_special_tokens=False))
    return chat_token_ids(tokenizer, prompt.conversation(history))


def chat_token_ids(tokenizer: PreTrainedTokenizerBase, turns: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)
    return list(tokenizer.encode(text, add_special_tokens=False))


def messages_to_pb(turns: list[dict[str, str]]) -> common_pb2.Messages:
    return common_pb2.Messages(
        messages=[common_pb2.ChatMessage(role=t["role"], content=t["content"]) for t in turns])
