"""`speculative-cascade` across its leniency on the evaluation prompts.

For each leniency a router with ``--deferral-leniency`` over one edge and one cloud
answers every prompt greedily (fixed draft length: speculation never backs off, so the
counts do not depend on the machine's load). Quality is the answer's agreement with the
cloud-only answer in the labels, at the report's bar, or on a checkable-answer set whether
the answer is right (``relative_quality`` then compares it with the cloud-only answers'
share of right ones). Cost is counted two ways against
cloud-only serving, which spends one forward pass per token it generates (the prefill
pass yields the first): the cloud forward passes the policy used, and the tokens the cloud
wrote (its corrections and bonus tokens; the edge wrote the rest)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from tandem.router.eval.agreement import rouge_l, token_f1
from tandem.router.eval.checkable import is_correct
from tandem.router.eval.collect import edge_and_cloud
from tandem.shared.process import ServiceProcess
from tandem.v1 import common_pb2, router_pb2, router_pb2_grpc

AGREEMENT = {"rouge_l": rouge_l, "f1": token_f1}


def deferral_curve(rows: list[dict[str, Any]], leniencies: list[float], edge_model: str,
                   max_tokens: int, quality: str, bar: float) -> list[dict[str, Any]]:
    with tempfile.TemporaryDirectory() as tmp, \
            edge_and_cloud(edge_model, Path(tmp)) as (edge, cloud):
        return [_point(rows, leniency, edge, cloud, Path(tmp), max_tokens, quality, bar)
                for leniency in leniencies]


def _point(rows: list[dict[str, Any]], leniency: float, edge: str, cloud: str, workdir: Path,
           max_tokens: int, quality: str, bar: float) -> dict[str, Any]:
    (workdir / str(leniency)).mkdir()
    router = ServiceProcess("router", [
        "--port", "0", "--metrics-port", "-1", "--cloud-address", cloud,
        "--edge-address", edge, "--deferral-leniency", str(leniency), "--no-adaptive-draft"],
        workdir / str(leniency))
    passes = cloud_tokens = cloud_only = 0
    scores = []
    try:
        router.wait_ready(600)
        with grpc.insecure_channel(router.address) as channel:
            stub = router_pb2_grpc.RouterStub(channel)
            for row in tqdm(rows, desc=f"speculative-cascade {leniency:g}"):
                reply = stub.Generate(router_pb2.GenerateRequest(
                    prompt=row["prompt"], policy="speculative-cascade",
                    sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0)),
                    timeout=600)
                passes += reply.usage.cloud_forward_passes
                cloud_tokens += reply.usage.cloud_tokens
                cloud_only += max(row["cloud_tokens"], 1)
                scores.append(answer_quality(reply.text, row, quality, bar))
    finally:
        router.stop()
    point = {"tau": leniency, "quality": round(sum(scores) / max(len(scores), 1), 4),
             "cloud_pass_reduction": round(1 - passes / max(cloud_only, 1), 4),
             "cloud_token_reduction": round(1 - cloud_tokens / max(cloud_only, 1), 4)}
    if quality == "correct":
        cloud = sum(answer_quality(row["cloud_text"], row, quality, bar) for row in rows)
        point["relative_quality"] = round(sum(scores) / max(cloud, 1e-9), 4)
    return point


def answer_quality(text: str, row: dict[str, Any], quality: str, bar: float) -> float:
    if quality == "correct":
        return float(is_correct(text, row["prompt"], row["answers"]))
    agreement = AGREEMENT[quality](text, row["cloud_text"])
    return float(agreement >= bar) if bar > 0 else agreement
