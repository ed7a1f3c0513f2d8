"""Exact-match response cache, scoped per tenant (the tenant is part of the state key).

Only deterministic requests are cached: temperature 0 or a fixed seed, and no session
(a session's history makes each turn unique anyway)."""

from __future__ import annotations

import hashlib

from tandem.router.policies.base import RoutedRequest
from tandem.v1 import router_pb2


def cache_key(request: RoutedRequest, policy: str, has_session: bool) -> str | None:
    sampling = request.sampling
    if has_session or not (sampling.greedy or sampling.seed is not None):
        return None
    digest = hashlib.sha256()
    digest.update(policy.encode())
    digest.update(sampling.to_pb().SerializeToString(deterministic=True))
    digest.update(",".join(map(str, request.prompt_ids)).encode())
    return digest.hexdigest()


def replay(cached: bytes) -> list[router_pb2.GenerateChunk]:
    """The chunks of a cached answer: its segments, then a final chunk (no model work)."""
    response = router_pb2.GenerateResponse.FromString(cached)
    chunks = [router_pb2.GenerateChunk(tier=s.tier, text=s.text, token_ids=s.token_ids)
              for s in response.segments]
    final = router_pb2.GenerateChunk(done=True, finish_reason=response.finish_reason,
                                     decision=response.decision)
    final.usage.prompt_tokens = response.usage.prompt_tokens
    final.decision.cached = True
    return chunks + [final]


def snapshot(chunks: list[router_pb2.GenerateChunk], final: router_pb2.GenerateChunk) -> bytes:
    response = router_pb2.GenerateResponse(finish_reason=final.finish_reason,
                                           usage=final.usage, decision=final.decision)
    for chunk in chunks:
        response.segments.add(tier=chunk.tier, text=chunk.text, token_ids=chunk.token_ids)
    return response.SerializeToString()
