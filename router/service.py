"""The Router gRPC servicer: converts protobuf in and out and delegates to the
transport-independent RouterCore (router/core.py), which the edge SDK also runs. The
caller's API key (metadata ``authorization: Bearer KEY``) goes through the same `Gate`
as the HTTP front's (router/auth.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tandem.router.auth import Gate
from tandem.router.core import response_from_chunks
from tandem.shared.deadlines import Deadline
from tandem.v1 import router_pb2, router_pb2_grpc


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, gate: Gate) -> None:
        self.gate = gate
        self.core = gate.core

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        return Deadline.from_context(context, self.core.config.default_timeout_seconds)

    def _answer(self, request: router_pb2.GenerateRequest,
                context: grpc.aio.ServicerContext) -> AsyncIterator[router_pb2.GenerateChunk]:
        """The gate's stream for the caller's key (refused at once without a valid one)."""
        authorization = dict(context.invocation_metadata() or ()).get("authorization")
        key = self.gate.authenticate(str(authorization) if authorization else None)
        return self.gate.stream(key, request, self._deadline(context))

    async def GenerateStream(self, request: router_pb2.GenerateRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[router_pb2.GenerateChunk]:
        async for chunk in self._answer(request, context):
            yield chunk

    async def Generate(self, request: router_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> router_pb2.GenerateResponse:
        chunks = [chunk async for chunk in self._answer(request, context)]
        return response_from_chunks(chunks, request.session_id)
