"""The router's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from tandem.router.policies.base import Outcome
from tandem.shared.metrics import LATENCY_BUCKETS
from tandem.v1 import common_pb2


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("tandem_router_requests", "Requests by policy and status code.",
                                ["policy", "code"], registry=registry)
        self.latency = Histogram("tandem_router_request_seconds", "End-to-end request latency.",
                                 ["policy"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("tandem_router_time_to_first_token_seconds",
                              "Time to the first answer chunk.", ["policy"],
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("tandem_router_output_tokens", "Answer tokens by producing tier.",
                              ["policy", "tier"], registry=registry)
        self.escalations = Counter("tandem_router_escalations", "Requests escalated to the cloud.",
                                   ["policy"], registry=registry)
        self.cloud_passes = Counter("tandem_router_cloud_forward_passes",
                                    "Cloud forward passes spent on answers.", ["policy"],
                                    registry=registry)
        self.draft_tokens = Counter("tandem_router_spec_draft_tokens",
                                    "Speculative draft tokens proposed.", registry=registry)
        self.accepted_tokens = Counter("tandem_router_spec_accepted_tokens",
                                       "Speculative draft tokens accepted.", registry=registry)
        self.spec_rounds = Counter("tandem_router_spec_rounds",
                                   "Speculative verification rounds (drafts sent).",
                                   registry=registry)
        self.cache_hits = Counter("tandem_router_response_cache_hits",
                                  "Requests answered from the response cache.", registry=registry)
        self.state_fallbacks = Counter(
            "tandem_router_state_fallbacks", "State operations served locally because Redis "
            "was unavailable.", ["op"], registry=registry)

    def record(self, outcome: Outcome, seconds: float, first_token_s: float | None) -> None:
        policy = outcome.policy
        self.requests.labels(policy, "OK").inc()
        self.latency.labels(policy).observe(seconds)
        if first_token_s is not None:
            self.ttft.labels(policy).observe(first_token_s)
        usage = outcome.usage
        self.tokens.labels(policy, common_pb2.Tier.Name(common_pb2.TIER_EDGE)).inc(usage.edge_tokens)
        self.tokens.labels(policy, common_pb2.Tier.Name(common_pb2.TIER_CLOUD)).inc(usage.cloud_tokens)
        self.cloud_passes.labels(policy).inc(usage.cloud_forward_passes)
        if outcome.decision.escalated:
            self.escalations.labels(policy).inc()
        self.draft_tokens.inc(usage.draft_tokens)
        self.accepted_tokens.inc(usage.accepted_draft_tokens)
        if usage.draft_tokens:
            self.spec_rounds.inc(usage.cloud_forward_passes)
