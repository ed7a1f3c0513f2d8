"""Tandem's error types and the one table that maps them to gRPC status codes.

Code raises these; the ``ErrorMappingInterceptor`` turns them into statuses at the
service boundary. Anything not in the table is a bug and becomes INTERNAL (logged).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from tandem.shared.interceptors import WrappingInterceptor

# grpc.health.v1's methods (served by grpc's own servicer).
HEALTH_PREFIX = "/grpc.health.v1.Health/"

logger = logging.getLogger(__name__)


class TandemError(Exception):
    """An error with a deliberate gRPC status: ``code``, and ``message`` for the caller.
    The same classes serve the services (mapped to statuses at their boundary) and the
    SDK (raised to apps, in both of its modes)."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code


class InvalidArgument(TandemError, ValueError):
    """The client sent something we will not process; the message names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class ResourceExhausted(TandemError):
    """Overload, queue or rate limits; ``retry_after_s`` is sent as the trailing metadata
    ``retry-after-ms`` when known."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED

    def __init__(self, message: str, retry_after_s: float | None = None,
                 code: grpc.StatusCode | None = None) -> None:
        super().__init__(message, code)
        self.retry_after_s = retry_after_s

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait before retrying, when the server said (the SDK's name)."""
        return self.retry_after_s

    def trailers(self) -> tuple[tuple[str, str], ...]:
        if self.retry_after_s is None:
            return ()
        return (("retry-after-ms", str(max(1, round(self.retry_after_s * 1000)))),)


class Unavailable(TandemError):
    """A dependency (another tier, the state store) cannot be reached."""

    code = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(TandemError, TimeoutError):
    """The request's time ran out."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Cancelled(TandemError):
    code = grpc.StatusCode.CANCELLED


class FailedPrecondition(TandemError):
    """The system is not in a state to run the request (e.g. incompatible tiers)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class Internal(TandemError):
    code = grpc.StatusCode.INTERNAL


class Unauthenticated(TandemError):
    """No credentials, or credentials that match no API key (the key is never echoed)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDenied(TandemError):
    """Valid credentials that may not do this (e.g. a key not allowed a policy)."""

    code = grpc.StatusCode.PERMISSION_DENIED


_CLASS_OF: dict[grpc.StatusCode, type[TandemError]] = {
    cls.code: cls for cls in (InvalidArgument, ResourceExhausted, Unavailable,
                              DeadlineExceeded, Cancelled, FailedPrecondition, Internal,
                              Unauthenticated, PermissionDenied)}


def error_for(code: grpc.StatusCode, message: str,
              retry_after_s: float | None = None) -> TandemError:
    """The error class for a status (TandemError itself for codes without one)."""
    cls = _CLASS_OF.get(code, TandemError)
    if cls is ResourceExhausted:
        return ResourceExhausted(message, retry_after_s)
    return cls(message, code)


def typed(exc: TandemError) -> TandemError:
    """``exc`` as the class of its status (an error raised with a code, not a class)."""
    if type(exc) is _CLASS_OF.get(exc.code, TandemError):
        return exc
    return error_for(exc.code, exc.message, getattr(exc, "retry_after_s", None))


def from_rpc_error(exc: grpc.aio.AioRpcError, service: str = "") -> TandemError:
    """The error a failed call to another Tandem service raises here: its status and
    details (prefixed with ``service``), and its retry-after hint."""
    retry_after = None
    for key, value in exc.trailing_metadata() or ():
        if key == "retry-after-ms":
            retry_after = int(value) / 1000
    details = exc.details() or exc.code().name
    if exc.code() == grpc.StatusCode.UNAVAILABLE:  # gRPC's connect errors do not say so
        details = f"unavailable: {details}"
    return error_for(exc.code(), f"{service}: {details}" if service else details, retry_after)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    if isinstance(exc, TandemError):
        return exc.code, exc.message
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}"


class Malformed:
    """What a request that does not deserialize becomes (instead of an exception that gRPC
    would answer with UNKNOWN and the parser's class name): the handler refuses it."""

    def __init__(self, error: Exception) -> None:
        self.error = error


def tolerant(deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """``deserializer``, returning a ``Malformed`` for bytes it cannot parse."""
    if deserializer is None:
        return None

    def parse(raw: bytes) -> Any:
        try:
            return deserializer(raw)
        except Exception as exc:  # noqa: BLE001 - any parse failure is the client's bytes
            return Malformed(exc)

    return parse


def check_parsed(request: Any) -> None:
    if isinstance(request, Malformed):
        raise InvalidArgument("request: not a valid protobuf message of this method's type "
                              f"({type(request.error).__name__})")


class ErrorMappingInterceptor(WrappingInterceptor):
    """Aborts RPCs with the status of the Tandem error they raised; a request whose bytes
    do not parse is INVALID_ARGUMENT before the handler runs."""

    def wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        parse = tolerant(handler.request_deserializer)
        if handler.unary_unary:
            inner = handler.unary_unary

            async def unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
                try:
                    check_parsed(request)
                    return await inner(request, context)
                except Exception as exc:  # noqa: BLE001 - mapped, never swallowed
                    await _abort(context, method, exc)

            return grpc.unary_unary_rpc_method_handler(unary, parse, handler.response_serializer)
        # grpc's health servicer streams Watch with context.write (a coroutine, not an
        # async generator): wrapping it broke every Watch, which the router's replica
        # health watch relies on. It raises no Tandem errors; it is passed through.
        if handler.unary_stream and not method.startswith(HEALTH_PREFIX):
            inner_stream = handler.unary_stream

            async def stream(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
                try:
                    check_parsed(request)
                    async for item in inner_stream(request, context):
                        yield item
                except Exception as exc:  # noqa: BLE001 - mapped, never swallowed
                    await _abort(context, method, exc)

            return grpc.unary_stream_rpc_method_handler(stream, parse, handler.response_serializer)
        return handler


async def _abort(context: grpc.aio.ServicerContext, method: str, exc: Exception) -> None:
    if isinstance(exc, grpc.aio.AbortError):
        raise exc
    code, message = status_for(exc)
    if code == grpc.StatusCode.INTERNAL:
        logger.exception("unhandled error in %s", method)
    trailers = exc.trailers() if isinstance(exc, ResourceExhausted) else ()
    await context.abort(code, message, trailers)
