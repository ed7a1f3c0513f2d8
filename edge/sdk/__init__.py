"""The Tandem client SDK an app embeds: ``TandemClient`` / ``AsyncTandemClient`` (on-device
or remote mode), their configuration, the response types and the typed errors.

    from tandem.edge.sdk import TandemClient
"""

from tandem.edge.sdk.client import (AsyncChatSession, AsyncStream, AsyncTandemClient,
                                    ChatSession, Stream, TandemClient)
from tandem.edge.sdk.engines import ClientConfig
from tandem.edge.sdk.types import (CancelledError, DeadlineExceededError, Decision,
                                   FailedPreconditionError, InternalError,
                                   InvalidArgumentError, ResourceExhaustedError, Response,
                                   Segment, StreamChunk, TandemError, UnavailableError, Usage)

__all__ = ["AsyncChatSession", "AsyncStream", "AsyncTandemClient", "CancelledError",
           "ChatSession", "ClientConfig", "DeadlineExceededError", "Decision",
           "FailedPreconditionError", "InternalError", "InvalidArgumentError",
           "ResourceExhaustedError", "Response", "Segment", "Stream", "StreamChunk",
           "TandemClient", "TandemError", "UnavailableError", "Usage"]
