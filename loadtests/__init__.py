"""Load tests of the Router and Cloud gRPC services with locust (`tandem loadtest`).

- workload.py: prompt sets and tag mixes, chat sessions, policies per user class, the
  request budget, Poisson or constant-concurrency arrivals, seeds (no locust imports);
- records.py: one request as the client saw it (TTFT, inter-chunk gaps, E2EL, tokens
  per tier, decision and usage);
- users.py: streaming-aware locust users (RouterUser, RouterChatUser, CloudUser);
- locustfile.py: what `locust -f` loads (users, --tandem-* flags, the records file);
- report.py: the summary JSON (vLLM serving-benchmark metrics, goodput, tier share,
  escalation, speculative acceptance);
- run.py: one headless locust run plus the services' counter deltas and CPU;
- sweep.py: concurrency sweeps, their table and throughput-latency PNG.

Importing locust monkey-patches the process with gevent, so only users.py and
locustfile.py import it, and they run in locust's own child process.
"""
