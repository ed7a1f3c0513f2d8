"""`tandem ask`: send one prompt to a router and print the answer."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import grpc
from google.protobuf.json_format import MessageToDict

from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

DEFAULT_ROUTER = "127.0.0.1:50051"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("ask", help="Ask the local stack's router one question.")
    p.add_argument("prompt", help="The user message.")
    p.add_argument("--router", default=DEFAULT_ROUTER, help="Router address (host:port).")
    p.add_argument("--policy", default="",
                   help="auto, edge, cloud, cascade, route or speculative.")
    p.add_argument("--max-tokens", type=bounded_int(1, 2**31 - 1), default=None)
    p.add_argument("--temperature", type=float, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--seed", type=bounded_int(0, 2**64 - 1), default=None)
    p.add_argument("--stop", action="append", default=[], help="Stop string (repeatable).")
    p.add_argument("--session", default="", help="Session id: continue a conversation.")
    p.add_argument("--tenant", default="")
    p.add_argument("--timeout", type=float, default=300.0, help="Deadline in seconds.")
    p.add_argument("--json", action="store_true", help="Print one JSON object.")
    p.add_argument("--api-key", default=os.environ.get("TANDEM_API_KEY", ""),
                   help="Sent as `authorization: Bearer KEY` (default: $TANDEM_API_KEY).")
    p.set_defaults(run=run)


def bounded_int(low: int, high: int) -> Callable[[str], int]:
    """An argparse type for an integer the request's protobuf field can hold: a value
    outside it is a usage error (exit 2), not a traceback."""
    def parse(text: str) -> int:
        value = int(text)
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in [{low}, {high}], got {value}")
        return value

    return parse


def build_request(prompt: str, policy: str = "", max_tokens: int | None = None,
                  temperature: float | None = None, top_p: float | None = None,
                  seed: int | None = None, stop: list[str] | None = None, session: str = "",
                  tenant: str = "") -> router_pb2.GenerateRequest:
    sampling = common_pb2.SamplingParams(stop=stop or [])
    for name, value in (("max_tokens", max_tokens), ("temperature", temperature),
                        ("top_p", top_p), ("seed", seed)):
        if value is not None:
            setattr(sampling, name, value)
    return router_pb2.GenerateRequest(prompt=prompt, policy=policy, sampling=sampling,
                                      session_id=session, tenant=tenant)


def response_to_json(response: router_pb2.GenerateResponse) -> dict[str, Any]:
    usage = MessageToDict(response.usage, preserving_proto_field_name=True,
                          always_print_fields_with_no_presence=True)
    return {
        "text": response.text,
        "policy": response.decision.policy,
        "segments": [{"tier": _tier(s.tier), "text": s.text, "tokens": len(s.token_ids)}
                     for s in response.segments],
        "usage": usage,
        "finish_reason": common_pb2.FinishReason.Name(response.finish_reason)
        .removeprefix("FINISH_REASON_").lower(),
        "decision": MessageToDict(response.decision, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True),
        "timings_ms": {k.removesuffix("_ns"): round(getattr(response.timings, k) / 1e6, 2)
                       for k in ("first_token_ns", "total_ns", "edge_ns", "cloud_ns",
                                 "overhead_ns", "state_ns", "decision_ns", "scoring_ns")},
        "session_id": response.session_id,
    }


def _tier(tier: int) -> str:
    return common_pb2.Tier.Name(tier).removeprefix("TIER_").lower()


def ask_and_print(router: str, prompt: str, as_json: bool = False, timeout: float = 300.0,
                  api_key: str = "", **params: Any) -> int:
    """Print the answer (plain: streamed text, then provenance on stderr); 1 on an error."""
    request = build_request(prompt, **params)
    metadata = (("authorization", f"Bearer {api_key}"),) if api_key else None
    try:
        with grpc.insecure_channel(router) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            if as_json:
                reply = stub.Generate(request, timeout=timeout, metadata=metadata)
                print(json.dumps(response_to_json(reply), indent=2))
                return 0
            final = None
            for chunk in stub.GenerateStream(request, timeout=timeout, metadata=metadata):
                if chunk.done:
                    final = chunk
                else:
                    print(chunk.text, end="", flush=True)
            print()
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    if final is not None:
        u, d = final.usage, final.decision
        escalated = " (escalated)" if d.escalated else ""
        escalated += f" (spilled: {d.spill_reason})" if d.spilled else ""
        print(f"[policy {d.policy}{escalated}: edge {u.edge_tokens} tokens, cloud "
              f"{u.cloud_tokens} tokens, {u.cloud_forward_passes} cloud passes, "
              f"{final.timings.total_ns / 1e6:.0f} ms]", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return ask_and_print(args.router, args.prompt, as_json=args.json, timeout=args.timeout,
                         policy=args.policy, max_tokens=args.max_tokens,
                         temperature=args.temperature, top_p=args.top_p, seed=args.seed,
                         stop=args.stop, session=args.session, tenant=args.tenant,
                         api_key=args.api_key)
