"""The Edge gRPC servicer: converts protobuf in and out and delegates to the
transport-free EdgeHandler (edge/handler.py)."""

from __future__ import annotations

import grpc

from tandem.edge.handler import EdgeHandler
from tandem.shared.deadlines import Deadline
from tandem.shared.tier_rpc import TierServicer
from tandem.v1 import common_pb2, edge_pb2, edge_pb2_grpc


class EdgeServicer(TierServicer, edge_pb2_grpc.EdgeServicer):
    def __init__(self, edge: EdgeHandler) -> None:
        self.edge = edge
        super().__init__(edge.generation, edge.info)

    async def Draft(self, request: edge_pb2.DraftRequest,
                    context: grpc.aio.ServicerContext) -> edge_pb2.DraftResponse:
        return await self.edge.draft(request, Deadline(context.time_remaining()))

    async def Load(self, request: common_pb2.LoadRequest,
                   context: grpc.aio.ServicerContext) -> common_pb2.TierLoad:
        return self.edge.backend.load()
