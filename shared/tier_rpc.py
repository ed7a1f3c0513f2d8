"""The RPCs both model tiers serve the same way (Generate, GenerateStream, Info) and their
metrics; each tier's servicer mixes this in before its generated base class."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
from prometheus_client import CollectorRegistry, Counter

from tandem.shared.tier_handler import TierGenerateHandler
from tandem.v1 import common_pb2


class TierServicer:
    def __init__(self, tier: str, handler: TierGenerateHandler, info: common_pb2.ModelInfo,
                 registry: CollectorRegistry) -> None:
        self.handler = handler
        self.info = info
        self.requests = Counter(f"tandem_{tier}_requests", f"{tier} RPCs by method.", ["method"],
                                registry=registry)
        self.tokens = Counter(f"tandem_{tier}_generated_tokens",
                              f"Tokens the {tier} model produced, by method.", ["method"],
                              registry=registry)
        self.forward_passes = Counter(f"tandem_{tier}_forward_passes",
                                      f"Forward passes of the {tier} model, by method.",
                                      ["method"], registry=registry)

    async def Generate(self, request: common_pb2.TierGenerateRequest,
                       context: grpc.aio.ServicerContext) -> common_pb2.TierGenerateResponse:
        self.requests.labels("Generate").inc()
        response = await self.handler.generate(request)
        self.tokens.labels("Generate").inc(len(response.token_ids))
        self.forward_passes.labels("Generate").inc(response.forward_passes)
        return response

    async def GenerateStream(self, request: common_pb2.TierGenerateRequest,
                             context: grpc.aio.ServicerContext
                             ) -> AsyncIterator[common_pb2.TierGenerateChunk]:
        self.requests.labels("GenerateStream").inc()
        async for chunk in self.handler.stream(request):
            self.tokens.labels("GenerateStream").inc(len(chunk.token_ids))
            self.forward_passes.labels("GenerateStream").inc(chunk.forward_passes)
            yield chunk

    async def Info(self, request: common_pb2.InfoRequest,
                   context: grpc.aio.ServicerContext) -> common_pb2.ModelInfo:
        return self.info
