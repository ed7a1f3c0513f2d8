"""The router's Prometheus metrics."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tandem.router.latency import DECISION, SCORING, STATE, added_ns
from tandem.router.policies.base import Outcome
from tandem.shared.metrics import LATENCY_BUCKETS
from tandem.v1 import common_pb2

# Router-added latency is sub-millisecond to milliseconds (an embedding model: tens of ms).
ROUTER_LATENCY_BUCKETS = (0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003,
                          0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
# part label -> Timings field; "added" = state + decision (the latency target's figure).
ROUTER_LATENCY_PARTS = {"state": STATE, "decision": DECISION, "scoring": SCORING}


class ReplicaMetrics:
    """Per-replica traffic, health and failover (router/replicas.py)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter("tandem_router_replica_requests",
                                "Calls sent to each tier replica, by tier, replica and method.",
                                ["tier", "replica", "method"], registry=registry)
        self.in_flight = Gauge("tandem_router_replica_in_flight",
                               "Calls this router has in flight on each replica.",
                               ["tier", "replica"], registry=registry)
        self.healthy = Gauge("tandem_router_replica_healthy",
                             "1 while the replica's grpc.health.v1 status is SERVING.",
                             ["tier", "replica"], registry=registry)
        self.failovers = Counter("tandem_router_failovers",
                                 "Calls retried on another replica after UNAVAILABLE before "
                                 "their first token.", ["tier", "method"], registry=registry)
        self.rebuilds = Counter("tandem_router_session_rebuilds",
                                "Speculative sessions moved to another replica because theirs "
                                "was gone (their KV recomputed there).", ["tier"],
                                registry=registry)
        self.kv_misses = Counter("tandem_router_session_kv_misses",
                                 "Verify rounds whose replica reused fewer tokens than the "
                                 "session's previous round sent (its KV was not there).",
                                 registry=registry)
        self.streams_lost = Counter("tandem_router_streams_lost",
                                    "Streams whose replica failed after their first token "
                                    "(ended UNAVAILABLE).", ["tier"], registry=registry)


class RouterMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.replicas = ReplicaMetrics(registry)
        self.requests = Counter("tandem_router_requests", "Requests by policy and status code.",
                                ["policy", "code"], registry=registry)
        self.latency = Histogram("tandem_router_request_seconds", "End-to-end request latency.",
                                 ["policy"], buckets=LATENCY_BUCKETS, registry=registry)
        self.refusals = Histogram("tandem_router_refusal_seconds",
                                  "Arrival to a RESOURCE_EXHAUSTED refusal (overload, limits).",
                                  ["policy"], buckets=LATENCY_BUCKETS, registry=registry)
        self.ttft = Histogram("tandem_router_time_to_first_token_seconds",
                              "Time to the first answer chunk.", ["policy"],
                              buckets=LATENCY_BUCKETS, registry=registry)
        self.tokens = Counter("tandem_router_output_tokens", "Answer tokens by producing tier.",
                              ["policy", "tier"], registry=registry)
        self.spills = Counter("tandem_router_spills",
                              "Requests load-aware routing moved off the tier their policy "
                              "would have used, by policy and reason.", ["policy", "reason"],
                              registry=registry)
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
        self.router_latency = Histogram(
            "tandem_router_added_latency_seconds",
            "Time the router spent itself per request, by part: state (state-store calls), "
            "decision (validation, prompt rendering, policy choices), scoring (embedding "
            "model runs), added (state + decision).", ["part"],
            buckets=ROUTER_LATENCY_BUCKETS, registry=registry)

    def record_router_latency(self, timings: common_pb2.Timings) -> None:
        for part, field in ROUTER_LATENCY_PARTS.items():
            self.router_latency.labels(part).observe(getattr(timings, field) / 1e9)
        self.router_latency.labels("added").observe(added_ns(timings) / 1e9)

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
        if outcome.decision.spilled:
            self.spills.labels(policy, outcome.decision.spill_reason).inc()
        self.draft_tokens.inc(usage.draft_tokens)
        self.accepted_tokens.inc(usage.accepted_draft_tokens)
        if usage.draft_tokens:
            self.spec_rounds.inc(usage.cloud_forward_passes)
