"""`tandem serve edge --backend torch` serves Info and Draft over real gRPC (tiny model)."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from tandem.v1 import common_pb2, edge_pb2, edge_pb2_grpc
from tests.conftest import start_services


def test_torch_backend_serves_drafts(tiny_model_dir: Path, tmp_path: Path) -> None:
    (service,) = start_services(tmp_path, [("edge", [
        "--model", str(tiny_model_dir), "--backend", "torch", "--threads", "1",
        "--context-window", "512", "--max-tokens-cap", "256", "--default-max-tokens", "64"])])
    try:
        with grpc.insecure_channel(service.address) as channel:
            stub = edge_pb2_grpc.EdgeStub(channel)
            tokens = [5, 17, 300, 42, 9, 1000]
            greedy = common_pb2.SamplingParams(temperature=0.0)
            first = stub.Draft(edge_pb2.DraftRequest(session_id="s", tokens=tokens, num_tokens=4,
                                                     sampling=greedy), timeout=60)
            assert len(first.tokens) == 4 and all(0 < p <= 1 for p in first.probs)
            second = stub.Draft(edge_pb2.DraftRequest(
                session_id="s", tokens=tokens + list(first.tokens[:2]), num_tokens=2,
                sampling=greedy), timeout=60)
            assert second.cached_tokens == len(tokens) + 1
            assert list(second.tokens) == list(first.tokens[2:4])
            sampled = stub.Draft(edge_pb2.DraftRequest(
                session_id="s", tokens=tokens, num_tokens=2, return_distributions=True,
                sampling=common_pb2.SamplingParams(temperature=0.7, top_k=10, seed=1)), timeout=60)
            assert len(sampled.distributions) == 2
            with pytest.raises(grpc.RpcError) as bad:
                stub.Draft(edge_pb2.DraftRequest(session_id="s", tokens=[10**6], num_tokens=2,
                                                 sampling=greedy), timeout=60)
            assert bad.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        service.stop()
