"""Configuration of the router service (`tandem serve router`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tandem.router.replicas import Targets
from tandem.shared.config import option
from tandem.shared.limits import RequestLimits
from tandem.shared.models import DEFAULT_MODEL
from tandem.shared.service_config import ServiceConfig


@dataclass
class RouterConfig(ServiceConfig, RequestLimits):
    cloud_address: str = option(
        "127.0.0.1:50052", "The Cloud service's replicas: host:port, a comma-separated list "
                           "of them, or dns:///name:port (every address the name resolves "
                           "to, re-resolved; a Kubernetes headless Service).")
    edge_address: str = option("127.0.0.1:50053", "The Edge service's replicas (the same forms "
                                                  "as cloud_address).")
    balance_epsilon: float = option(
        0.25, "Replica balancing: a replica holding more than (1 + this) x its fair share of "
              "the router's in-flight calls is passed over by prefix-aware placement.")
    replica_resolve_seconds: float = option(
        5.0, "How often a dns:/// replica address is resolved again.")
    session_affinity_seconds: float = option(
        600.0, "How long the state store keeps which replica holds a speculative session's "
               "KV (the router drops it when the session ends).")
    model: str = option(DEFAULT_MODEL, "Model whose tokenizer and chat template the tiers share.")
    state: str = option("memory", "State store: 'memory' or a redis:// URL.")
    session_ttl_seconds: float = option(3600.0, "A session expires after this long unused.")
    default_policy: str = option("auto", "Policy for requests that name none.")
    default_timeout_seconds: float = option(
        300.0, "Deadline for requests whose caller set none (bounds every outbound call).")
    cascade_threshold: float = option(
        0.5, "Cascade: escalate when the edge answer's score (geometric-mean token "
             "probability) is below this.")
    draft_tokens: int = option(6, "Speculative: tokens the edge drafts per round (k); the "
                                  "starting point when adaptive_draft is on.")
    scorer: str = option("mean_prob", "Cascade scorer: mean_prob, min_prob, entropy, learned, or "
                                      "the cloud-judged cloud_mean_prob, cloud_min_prob, "
                                      "cloud_top1_share, cloud_combined (one cloud pass "
                                      "per answer).")
    route_threshold: float = option(
        0.5, "route: the prompt router's P(edge suffices) needed to send a prompt to the edge.")
    auto_skip_edge_below: float = option(
        0.1, "auto: prompts the prompt router scores below this (clearly hard) skip the edge "
             "and are decoded speculatively at once.")
    deferral_leniency: float = option(
        1.0, "speculative-cascade: keep an edge draft token when the cloud gives it at least "
             "this share of its own top token's probability (1: lossless, the cloud's output; "
             "on the held-out prompts 0.9 saved 1.7 points more cloud passes for 8.5 points "
             "of quality, so lossless is the default).")
    adaptive_draft: bool = option(
        True, "Speculative: choose the draft length from measured acceptance and round-trip "
              "time, and fall back to cloud-only decoding when speculation would be slower.")
    pipelined_draft: bool = option(
        True, "Speculative, greedy: the edge drafts on while a draft is verified, when the "
              "measured round trip is worth two or more draft tokens (adaptive_draft only).")
    max_first_draft: int = option(
        32, "auto: how many tokens of an escalated edge answer the cloud verifies as a draft.")
    edge_wait_budget_ms: float = option(
        1000.0, "Load-aware routing: auto, cascade and route send a request to the cloud, and "
                "speculative decodes on the cloud alone, when the edge's estimated queue wait "
                "is longer than this (or its queue is full).")
    inject_cloud_rtt_ms: float = option(
        0.0, "Benchmarking only: delay every call to the cloud by this much (simulated RTT).")
    state_timeout_seconds: float = option(0.25, "Timeout of each state-store (Redis) call.")
    rate_limit_rps: float = option(0.0, "Per-tenant request rate limit (token bucket); 0 = off.")
    rate_limit_burst: int = option(20, "Per-tenant burst allowed by the rate limit.")
    token_budget: int = option(0, "Per-tenant output tokens per window (max_tokens is reserved "
                                  "at admission, the unused part refunded); 0 = off.")
    token_budget_window_seconds: float = option(60.0, "Window of the token budget.")
    tenant_max_concurrency: int = option(
        0, "Requests one tenant may have in flight on this router; beyond it RESOURCE_EXHAUSTED "
           "at once (a flooding tenant cannot take the tiers' batch from the others); 0 = off.")
    response_cache_seconds: float = option(
        0.0, "Exact-match response cache TTL for deterministic requests (temperature 0 or a "
             "seed, no session), scoped per tenant; 0 = off.")
    target_escalation_rate: float = option(
        0.0, "Budget controller: steer the fleet's cascade escalation rate to this fraction by "
             "moving the shared threshold online; 0 = off (threshold fixed).")
    target_cloud_pass_share: float = option(
        0.0, "Budget controller for speculative-cascade: steer the fleet's cloud forward "
             "passes per output token to this share by moving the shared leniency online "
             "(starting from deferral_leniency); 0 = off (leniency fixed).")
    controller_step: float = option(0.01, "Budget controller step per cascade decision "
                                          "(and per speculative-cascade request).")
    http_port: int = option(
        0, "Port of the OpenAI-compatible HTTP API (/v1/chat/completions, ...); 0 picks a "
           "free one (see --ready-file), -1 turns it off. `tandem up` uses 8000.")
    api_keys: str | None = option(
        None, "TOML or JSON file mapping the SHA-256 of each API key to its tenant, allowed "
              "policies and own rate limit (router/auth.py); unset, the router runs open.")

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_request_limits()
        if not 0.0 <= self.cascade_threshold <= 1.0:
            raise ValueError("cascade_threshold must be in [0, 1]")
        if not (0.0 <= self.route_threshold <= 1.0 and 0.0 <= self.auto_skip_edge_below <= 1.0):
            raise ValueError("route_threshold and auto_skip_edge_below must be in [0, 1]")
        if not 0 <= self.max_first_draft <= 64:
            raise ValueError("max_first_draft must be in [0, 64]")
        if not 0.0 < self.deferral_leniency <= 1.0:
            raise ValueError("deferral_leniency must be in (0, 1]")
        if not 1 <= self.draft_tokens <= 32:
            raise ValueError("draft_tokens must be in [1, 32]")
        if not (0.0 <= self.target_escalation_rate < 1.0
                and 0.0 <= self.target_cloud_pass_share < 1.0):
            raise ValueError("target_escalation_rate and target_cloud_pass_share must be in [0, 1)")
        if self.rate_limit_rps < 0 or self.token_budget < 0 or self.response_cache_seconds < 0:
            raise ValueError("rate_limit_rps, token_budget and response_cache_seconds must be >= 0")
        if self.tenant_max_concurrency < 0:
            raise ValueError("tenant_max_concurrency must be >= 0")
        if self.edge_wait_budget_ms < 0:
            raise ValueError("edge_wait_budget_ms must be >= 0")
        if self.default_timeout_seconds <= 0:
            raise ValueError("default_timeout_seconds must be > 0")
        if not -1 <= self.http_port <= 65535:
            raise ValueError(f"http_port must be in [-1, 65535], got {self.http_port}")
        for name in ("cloud_address", "edge_address"):
            try:
                Targets.parse(getattr(self, name))
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        if self.balance_epsilon <= 0 or self.replica_resolve_seconds <= 0 \
                or self.session_affinity_seconds <= 0:
            raise ValueError("balance_epsilon, replica_resolve_seconds and "
                             "session_affinity_seconds must be > 0")
        if self.api_keys is not None and not Path(self.api_keys).is_file():
            raise ValueError(f"api_keys: no such file {self.api_keys!r}")
