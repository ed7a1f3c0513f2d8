"""The engine's Prometheus metrics, named after vLLM's (prefixed `tandem_cloud_`)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from tandem.shared.metrics import LATENCY_BUCKETS

PREFIX = "tandem_cloud_"


class EngineMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        r = registry if registry is not None else CollectorRegistry()

        def histogram(name: str, doc: str) -> Histogram:
            return Histogram(PREFIX + name, doc, buckets=LATENCY_BUCKETS, registry=r)

        def counter(name: str, doc: str) -> Counter:
            return Counter(PREFIX + name, doc, registry=r)

        self.ttft = histogram("time_to_first_token_seconds", "Arrival to first token.")
        self.tpot = histogram("time_per_output_token_seconds",
                              "Mean time per output token after the first, per request.")
        self.itl = histogram("inter_token_latency_seconds", "Time between streamed tokens.")
        self.e2e = histogram("e2e_request_latency_seconds", "Arrival to the request's end.")
        self.queue_time = histogram("request_queue_time_seconds",
                                    "Arrival to first scheduling.")
        self.running = Gauge(PREFIX + "num_requests_running", "Sequences in the batch.",
                             registry=r)
        self.waiting = Gauge(PREFIX + "num_requests_waiting", "Sequences queued.", registry=r)
        self.kv_usage = Gauge(PREFIX + "kv_cache_usage_perc",
                              "Fraction of KV blocks referenced (0-1).", registry=r)
        self.kv_waste = Gauge(PREFIX + "kv_cache_waste_perc",
                              "Fraction of running sequences' KV slots holding no token.",
                              registry=r)
        self.preemptions = counter("num_preemptions", "Sequences preempted (recomputed).")
        self.prefix_queries = counter("prefix_cache_queries",
                                      "Prompt tokens looked up in the prefix cache.")
        self.prefix_hits = counter("prefix_cache_hits", "Prompt tokens found cached.")
        self.spec_drafts = counter("spec_decode_num_drafts", "Verify rounds.")
        self.spec_draft_tokens = counter("spec_decode_num_draft_tokens",
                                         "Draft tokens verified.")
        self.spec_accepted = counter("spec_decode_num_accepted_tokens",
                                     "Draft tokens accepted.")
        self.steps = counter("engine_steps", "Batched forward steps run.")
        self.rejected = counter("requests_rejected", "Requests refused by queue limits.")
