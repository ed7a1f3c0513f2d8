"""The request bodies the HTTP API accepts (OpenAI's fields, plus Tandem's extras
``session_id``, ``policy`` and ``tenant``). They check types only: values are checked
once, by the router core, for both fronts. Fields OpenAI has that Tandem does not
implement are declared so that convert.py can refuse them by name; any other field is
refused as unknown (``extra="forbid"``), never ignored."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class StreamOptions(_Body):
    include_usage: bool = Field(False, description="Send a last chunk with the usage.")


class ChatMessage(_Body):
    role: Literal["system", "developer", "user", "assistant"] = Field(
        description="developer is taken as system.")
    content: str | list[dict[str, Any]] | None = Field(
        None, description="Text, or a list of content parts of type 'text'.")
    name: str | None = Field(None, description="Not supported (refused when set).")


class _Request(_Body):
    """What both endpoints take."""

    model: str | None = Field(None, description="tandem-<policy>; default: the router's "
                                                "default policy (tandem-auto).")
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="The end user, as in OpenAI's API (not used).")
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    n: int | None = Field(None, description="Only 1.")
    logit_bias: dict[str, float] | None = Field(None, description="Not supported.")
    # Tandem's extras (extra_body in the openai client).
    session_id: str | None = Field(None, description="Continue (or start) a conversation "
                                                     "stored by the router.")
    policy: str | None = Field(None, description="The policy, instead of naming it in model.")
    tenant: str | None = Field(None, description="The tenant (with API keys: the key's "
                                                 "tenant, whatever this says).")


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage]
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = Field(None, description="Not supported.")
    tool_choice: str | dict[str, Any] | None = Field(None, description="Only 'none'.")
    parallel_tool_calls: bool | None = None
    functions: list[dict[str, Any]] | None = Field(None, description="Not supported.")
    function_call: str | dict[str, Any] | None = Field(None, description="Only 'none'.")
    logprobs: bool | None = Field(None, description="Not supported.")
    top_logprobs: int | None = Field(None, description="Not supported.")
    response_format: dict[str, Any] | None = Field(None, description="Only type 'text'.")


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="One string, sent to the model without the chat template.")
    max_tokens: int | None = None
    logprobs: int | None = Field(None, description="Not supported.")
    echo: bool | None = Field(None, description="Not supported.")
    suffix: str | None = Field(None, description="Not supported.")
    best_of: int | None = Field(None, description="Only 1.")
