"""The RPCs both model tiers serve the same way (Generate, GenerateStream, Info): each
tier's servicer mixes this in before its generated base class; the work and the metrics
are the transport-free handler's."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc

from tandem.shared.deadlines import Deadline
from tandem.shared.tier_handler import TierGenerateHandler
from tandem.v1 import common_pb2


class TierServicer:
    def __init__(self, handler: TierGenerateHandler, info: common_pb2.ModelInfo) -> None:
        self.handler = handler
        self.metrics = handler.metrics
        self.info = info

    async def Generate(self, request: common_pb2.TierGenerateRequest,
                       context: grpc.aio.ServicerContext) -> common_pb2.TierGenerateResponse:
        return await self.handler.generate(request, Deadline(context.time_remaining()))

    async def GenerateStream(self, request: common_pb2.TierGenerateRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        async for chunk in self.handler.stream(request, Deadline(context.time_remaining())):
            yield chunk

    async def Info(self, request: common_pb2.InfoRequest,
                   context: grpc.aio.ServicerContext) -> common_pb2.ModelInfo:
        return self.info
