"""A locust user for the router's OpenAI-compatible HTTP API (``--target openai``): the
same prompts, policies and sampling as `RouterUser`, sent as streamed
/v1/chat/completions requests (SSE, ``stream_options.include_usage``) over one
keep-alive connection per user, and recorded in the same `RequestRecord` fields, so the
two fronts can be measured side by side on one workload.

Each SSE chunk carries its tier and token count in its `tandem` object, and the chunk
with the finish reason carries the router's decision, usage and timings."""

from __future__ import annotations

import http.client
import json
import time
from typing import Any

from tandem.loadtests.records import REJECTED_CODE, RequestRecord
from tandem.loadtests.users import TandemUser, sampling_for
from tandem.loadtests.workload import weighted_choice
from tandem.v1 import common_pb2

PATH = "/v1/chat/completions"
# A failed connection is recorded as the gRPC front records one, so reports compare.
CONNECTION_FAILED = "UNAVAILABLE"


def request_body(text: str, policy: str, sampling: common_pb2.SamplingParams) -> dict[str, Any]:
    body: dict[str, Any] = {"messages": [{"role": "user", "content": text}], "stream": True,
                            "stream_options": {"include_usage": True}}
    if policy:  # else the router's default policy
        body["model"] = f"tandem-{policy}"
    for field in ("max_tokens", "temperature", "seed"):
        if sampling.HasField(field):
            body[field] = getattr(sampling, field)
    return body


def _final(record: RequestRecord, summary: dict[str, Any]) -> None:
    """The router's account of the answer (the finish chunk's `tandem` object)."""
    decision, usage, timings = summary["decision"], summary["usage"], summary["timings_ms"]
    record.resolved_policy = decision["policy"]
    record.escalated, record.cached = decision["escalated"], decision["cached"]
    record.edge_s, record.cloud_s = timings["edge"] / 1e3, timings["cloud"] / 1e3
    record.overhead_s = timings["overhead"] / 1e3
    record.prompt_tokens = usage["prompt_tokens"]
    record.cloud_forward_passes = usage["cloud_forward_passes"]
    record.draft_tokens = usage["draft_tokens"]
    record.accepted_draft_tokens = usage["accepted_draft_tokens"]


def _error(record: RequestRecord, status: int, payload: bytes) -> None:
    record.code = REJECTED_CODE if status == 429 else f"HTTP_{status}"
    try:
        record.error = json.loads(payload)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        record.error = payload[:200].decode(errors="replace")


def read_events(response: http.client.HTTPResponse, record: RequestRecord,
                started: float) -> None:
    """Time each SSE chunk that carries text (from ``started``, when the request went
    out), and read the summary and errors."""
    last = None
    while line := response.readline():
        if not line.startswith(b"data: "):
            continue
        payload = line[6:].strip()
        if payload == b"[DONE]":
            break
        data = json.loads(payload)
        if "error" in data:
            _error(record, 200, payload)
            break
        label = data.get("tandem", {})
        if "tier" in label and label["tokens"]:
            now = time.perf_counter()
            if last is None:
                record.ttft_s = now - started
            else:
                record.itl_s.append(now - last)
            last = now
            record.tokens_by_tier[label["tier"]] = (record.tokens_by_tier.get(label["tier"], 0)
                                                    + label["tokens"])
        elif "decision" in label:
            _final(record, label)


class OpenAIUser(TandemUser):
    """Single-turn streamed chat completions to the router's HTTP API."""

    def on_start(self) -> None:
        host, _, port = self.host.removeprefix("http://").rpartition(":")
        self.connection = http.client.HTTPConnection(host, int(port),
                                                     timeout=self.workload.timeout_s)

    def on_stop(self) -> None:
        self.connection.close()

    def send(self) -> RequestRecord:
        prompt = self.workload.picker.pick(self.rng)  # type: ignore[union-attr]
        policy = weighted_choice(self.rng, self.workload.policies)
        body = request_body(prompt.text, policy,
                            sampling_for(self.workload, self.rng, prompt.max_tokens))
        record = RequestRecord("openai", type(self).__name__, policy, list(prompt.tags))
        record.start_unix = time.time()
        started = time.perf_counter()
        try:
            # Bytes: headers and body in one write (two meet Nagle and delayed ACKs: 40 ms).
            self.connection.request("POST", PATH, json.dumps(body).encode(),
                                    {"Content-Type": "application/json"})
            response = self.connection.getresponse()
            if response.status == 200:
                read_events(response, record, started)
            else:
                _error(record, response.status, response.read())
            response.read()  # the rest, so the connection can be reused
        except (OSError, http.client.HTTPException) as exc:
            record.code, record.error = CONNECTION_FAILED, str(exc)
            self.connection.close()  # reconnects on the next request
        record.e2el_s = time.perf_counter() - started
        return record
