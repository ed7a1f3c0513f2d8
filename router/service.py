"""The Router gRPC servicer: converts protobuf in and out and delegates to the
transport-independent RouterCore (router/core.py), which the edge SDK also runs."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tandem.router.core import RouterCore, response_from_chunks
from tandem.shared.deadlines import Deadline
from tandem.v1 import router_pb2, router_pb2_grpc


class RouterServicer(router_pb2_grpc.RouterServicer):
    def __init__(self, core: RouterCore) -> None:
        self.core = core

    def _deadline(self, context: grpc.aio.ServicerContext) -> Deadline:
        return Deadline.from_context(context, self.core.config.default_timeout_seconds)

    async def GenerateStream(self, request: router_pb2.GenerateRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[router_pb2.GenerateChunk]:
        async for chunk in self.core.stream(request, self._deadline(context)):
            yield chunk

    async def Generate(self, request: router_pb2.GenerateRequest,
                       context: grpc.aio.ServicerContext) -> router_pb2.GenerateResponse:
        chunks = [chunk async for chunk in self.core.stream(request, self._deadline(context))]
        return response_from_chunks(chunks, request.session_id)
