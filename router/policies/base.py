"""The policy interface, the request/outcome types policies share, and the registry.

A policy turns a validated request into a stream of answer chunks, each labelled with
the tier that produced it, and records usage and its decision in the Outcome. Policies
talk to the tiers only through a ``Tiers`` object, so they run inside the router service
and in-process in the edge SDK alike.
"""

from __future__ import annotations

import asyncio
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

from tandem.shared.deadlines import Deadline
from tandem.shared.sampling import SamplingParams
from tandem.shared.segments import Segment
from tandem.v1 import common_pb2, router_pb2

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from tandem.router.scorers import PromptRouter, Scorer
    from tandem.router.state import StateStore

    from tandem.router.config import RouterConfig
    from tandem.router.tiers import Tiers


@dataclass(frozen=True)
class RoutedRequest:
    """A request after validation and prompt rendering."""

    request_id: str
    prompt_ids: list[int]
    sampling: SamplingParams
    deadline: Deadline
    tenant: str = ""
    prompt_text: str = ""  # the latest user message (what scorers and routers read)

    def tier_request(self, logprobs: bool = False,
                     prompt_ids: list[int] | None = None,
                     max_tokens: int | None = None) -> common_pb2.TierGenerateRequest:
        sampling = self.sampling.to_pb()
        if max_tokens is not None:
            sampling.max_tokens = max_tokens
        return common_pb2.TierGenerateRequest(
            prompt_tokens=common_pb2.TokenIds(ids=prompt_ids or self.prompt_ids),
            sampling=sampling, logprobs=logprobs, tenant=self.tenant,
            session_id=self.request_id)


@dataclass
class Outcome:
    """What a policy reports besides the chunks (filled in while it runs)."""

    policy: str
    finish_reason: int = common_pb2.FINISH_REASON_UNSPECIFIED
    usage: common_pb2.Usage = field(default_factory=common_pb2.Usage)
    timings: common_pb2.Timings = field(default_factory=common_pb2.Timings)
    decision: router_pb2.RoutingDecision = field(default_factory=router_pb2.RoutingDecision)
    # State writes a policy started without waiting for them; the router awaits them with
    # its own completion write, before the final chunk (so none is lost once acknowledged).
    state_writes: list[asyncio.Future[Any]] = field(default_factory=list)
    # Cleanup calls (e.g. ending a speculative session on the tiers) that the router starts
    # once the reply is complete, so that they do not compete with its final state write.
    after_reply: list[Callable[[], Awaitable[Any]]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.decision.policy = self.policy

    def start_state_write(self, write: Awaitable[Any]) -> None:
        self.state_writes.append(asyncio.ensure_future(write))


@dataclass
class PolicyResources:
    """What policies may use besides the tiers (built once per router or SDK client)."""

    tokenizer: PreTrainedTokenizerBase
    state: StateStore
    scorer: Scorer
    prompt_router: PromptRouter | None = None


class Policy(ABC):
    """Decides which tiers answer a request."""

    name: ClassVar[str]

    @abstractmethod
    def run(self, request: RoutedRequest, tiers: Tiers, outcome: Outcome) -> AsyncIterator[Segment]:
        """Stream the answer; closing the iterator early must stop all tier work."""

    def bind(self, policies: dict[str, Policy]) -> None:
        """Called once with every configured policy (for policies that compose others)."""

    @classmethod
    def from_config(cls, config: RouterConfig, resources: PolicyResources) -> Policy:
        return cls()


POLICIES: dict[str, type[Policy]] = {}


def register_policy(cls: type[Policy]) -> type[Policy]:
    POLICIES[cls.name] = cls
    return cls


def create_policies(config: RouterConfig, resources: PolicyResources) -> dict[str, Policy]:
    """One instance of every registered policy, configured from ``config``."""
    from tandem.router.policies import (  # noqa: F401
        auto, cascade, route, single_tier, speculative, speculative_cascade)

    policies: dict[str, Policy] = {}
    for name, cls in POLICIES.items():
        if name == "route" and resources.prompt_router is None:
            continue  # needs the trained prompt router
        policies[name] = cls.from_config(config, resources)
    for policy in policies.values():
        policy.bind(policies)
    return policies


async def stream_from_tier(tiers: Tiers, tier: int, request: RoutedRequest,
                           outcome: Outcome) -> AsyncIterator[Segment]:
    """One tier's streamed answer to ``request``, accounted in ``outcome``."""
    stream = tiers.edge_stream if tier == common_pb2.TIER_EDGE else tiers.cloud_stream
    async for chunk in stream(request.tier_request(), request.deadline, outcome.timings):
        if tier == common_pb2.TIER_EDGE:
            outcome.usage.edge_tokens += len(chunk.token_ids)
            outcome.usage.edge_generated_tokens += len(chunk.token_ids)
        else:
            outcome.usage.cloud_tokens += len(chunk.token_ids)
        if chunk.finish_reason:
            outcome.finish_reason = chunk.finish_reason
            if tier == common_pb2.TIER_CLOUD:
                outcome.usage.cloud_forward_passes += chunk.forward_passes
        if chunk.text or chunk.token_ids:
            yield Segment(tier, chunk.text, tuple(chunk.token_ids))
