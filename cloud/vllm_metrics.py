"""vLLM's engine statistics re-exported under Tandem's metric names (cloud/metrics.py), so
that dashboards and alerts read the same series whichever engine serves.

vLLM hands every stat logger, after each engine step, the scheduler's state (running and
waiting requests, KV usage, prefix-cache lookups of that step) and the step's request
timings (first tokens, inter-token gaps, finished requests). Verify rounds are counted by
the engine itself (vllm_engine.py): to vLLM they are ordinary one-token requests.
"""

from __future__ import annotations

from typing import Any

from vllm.v1.metrics.loggers import StatLoggerBase

from tandem.cloud.metrics import EngineMetrics


class TandemStatLogger(StatLoggerBase):
    def __init__(self, metrics: EngineMetrics) -> None:
        self.metrics = metrics

    def record(self, scheduler_stats: Any, iteration_stats: Any, mm_cache_stats: Any = None,
               engine_idx: int = 0) -> None:
        m = self.metrics
        if scheduler_stats is not None:
            m.steps.inc()
            m.running.set(scheduler_stats.num_running_reqs)
            m.waiting.set(scheduler_stats.num_waiting_reqs)
            m.kv_usage.set(scheduler_stats.kv_cache_usage)
            m.prefix_queries.inc(scheduler_stats.prefix_cache_stats.queries)
            m.prefix_hits.inc(scheduler_stats.prefix_cache_stats.hits)
        if iteration_stats is None:
            return
        m.preemptions.inc(iteration_stats.num_preempted_reqs)
        for seconds in iteration_stats.time_to_first_tokens_iter:
            m.ttft.observe(seconds)
        for seconds in iteration_stats.inter_token_latencies_iter:
            m.itl.observe(seconds)
        for finished in iteration_stats.finished_requests:
            m.e2e.observe(finished.e2e_latency)
            m.queue_time.observe(finished.queued_time)
            if finished.num_generation_tokens > 1:
                m.tpot.observe(finished.mean_time_per_output_token)

    def log_engine_initialized(self) -> None:
        pass


def stat_logger_factory(metrics: EngineMetrics) -> Any:
    """vLLM's per-engine logger factory ((config, engine index) -> logger) for ``metrics``."""
    return lambda vllm_config, engine_index=0: TandemStatLogger(metrics)
