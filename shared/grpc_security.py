"""Who may talk to a Tandem gRPC service, and how the router talks to the tiers: TLS on
a service's port, mTLS (a tier with a CA refuses clients without a certificate signed by
it) and a shared internal token, the second way for a tier to tell the router from a
client that tries to bypass the router's keys, limits and budgets.

The server side is `server_credentials` and `InternalTokenInterceptor` (used by
`grpc_server.serve`); the client side is `ChannelSecurity`, which opens the channels the
router (and tests) use to reach the tiers.
"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from tandem.shared.service_config import ServiceConfig

# Metadata key of the internal token (gRPC metadata keys are lower case).
TOKEN_METADATA_KEY = "x-tandem-internal-token"
# Health checks stay open: load balancers, `tandem up` and probes carry no secret.
OPEN_SERVICE_PREFIX = "/grpc.health.v1.Health/"


def _read(path: str | None) -> bytes | None:
    return Path(path).read_bytes() if path else None


def server_credentials(config: ServiceConfig, internal: bool) -> grpc.ServerCredentials | None:
    """TLS for the service's port (None: plaintext). With ``internal`` (a tier) and a CA,
    clients must present a certificate signed by that CA."""
    if not config.tls_cert or not config.tls_key:
        return None
    pair = [(_read(config.tls_key), _read(config.tls_cert))]
    if internal and config.tls_ca:
        return grpc.ssl_server_credentials(pair, root_certificates=_read(config.tls_ca),
                                           require_client_auth=True)
    return grpc.ssl_server_credentials(pair)


class InternalTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuses (UNAUTHENTICATED) every call but health checks that lacks the token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def intercept_service(
        self, continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler_call_details.method.startswith(OPEN_SERVICE_PREFIX):
            return handler
        sent = dict(handler_call_details.invocation_metadata or ()).get(TOKEN_METADATA_KEY, "")
        if hmac.compare_digest(str(sent).encode(), self._token):
            return handler
        return _refusing(handler)


def _refusing(handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
    """A handler of the same kind as ``handler`` that aborts before doing any work."""

    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                            "this service only answers the router (missing or wrong internal "
                            "token)")

    serializers = (handler.request_deserializer, handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, *serializers)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, *serializers)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, *serializers)
    return grpc.stream_stream_rpc_method_handler(refuse, *serializers)


def _with_token(details: Any, token: str) -> Any:
    metadata = grpc.aio.Metadata(*(details.metadata or ()), (TOKEN_METADATA_KEY, token))
    return details._replace(metadata=metadata)


# One class per call kind: grpc.aio files an interceptor under the first kind it
# implements only, so one class for both would leave streams without the token.
class _TokenUnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_unary(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_token(client_call_details, self.token), request)


class _TokenUnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_unary_stream(self, continuation, client_call_details, request):  # type: ignore[no-untyped-def]
        return await continuation(_with_token(client_call_details, self.token), request)


@dataclass(frozen=True)
class ChannelSecurity:
    """How a client reaches a tier: TLS checked against ``ca`` (presenting ``cert`` and
    ``key`` for mTLS when given) and/or the internal token; all None is plaintext."""

    ca: str | None = None
    cert: str | None = None
    key: str | None = None
    internal_token: str | None = None

    @classmethod
    def of(cls, config: ServiceConfig) -> ChannelSecurity:
        """The router's way to its tiers: its own certificate, the CA, the token."""
        return cls(config.tls_ca, config.tls_cert, config.tls_key, config.internal_token)

    def credentials(self) -> grpc.ChannelCredentials | None:
        if not self.ca:
            return None
        return grpc.ssl_channel_credentials(root_certificates=_read(self.ca),
                                            private_key=_read(self.key),
                                            certificate_chain=_read(self.cert))

    def aio_channel(self, address: str, options: Sequence[tuple[str, Any]],
                    interceptors: Sequence[Any] | None = None) -> grpc.aio.Channel:
        chain = [*(interceptors or ())]
        if self.internal_token:
            chain += [_TokenUnaryUnary(self.internal_token),
                      _TokenUnaryStream(self.internal_token)]
        credentials = self.credentials()
        if credentials is None:
            return grpc.aio.insecure_channel(address, options=options,
                                             interceptors=chain or None)
        return grpc.aio.secure_channel(address, credentials, options=options,
                                       interceptors=chain or None)
