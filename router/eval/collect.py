"""`tandem eval collect`: answer every prompt with the edge and the cloud and label each
edge answer by its agreement with the cloud's (the quality reference)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from tqdm import tqdm

from tandem.router.eval.agreement import rouge_l, token_f1
from tandem.v1 import cloud_pb2_grpc, common_pb2, edge_pb2_grpc


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _request(prompt: str, max_tokens: int, logprobs: bool) -> common_pb2.TierGenerateRequest:
    return common_pb2.TierGenerateRequest(
        prompt=prompt, logprobs=logprobs,
        sampling=common_pb2.SamplingParams(max_tokens=max_tokens, temperature=0.0))


def label(row: dict[str, Any], edge: common_pb2.TierGenerateResponse,
          cloud: common_pb2.TierGenerateResponse) -> dict[str, Any]:
    return {**row, "edge_text": edge.text, "edge_tokens": len(edge.token_ids),
            "edge_logprobs": [round(x, 5) for x in edge.logprobs],
            "edge_entropies": [round(x, 5) for x in edge.entropies],
            "cloud_text": cloud.text, "cloud_tokens": len(cloud.token_ids),
            "f1": round(token_f1(edge.text, cloud.text), 4),
            "rouge_l": round(rouge_l(edge.text, cloud.text), 4)}


def collect(prompts: list[dict[str, Any]], edge_address: str, cloud_address: str,
            out: Path, max_tokens: int, workers: int = 4) -> list[dict[str, Any]]:
    """Label every prompt (resuming: prompts already in ``out`` are kept, not re-run)."""
    done = {r["prompt"]: r for r in read_jsonl(out)} if out.exists() else {}
    todo = [r for r in prompts if r["prompt"] not in done]
    with grpc.insecure_channel(edge_address) as ec, grpc.insecure_channel(cloud_address) as cc:
        edge, cloud = edge_pb2_grpc.EdgeStub(ec), cloud_pb2_grpc.CloudStub(cc)

        def one(row: dict[str, Any]) -> dict[str, Any]:
            e = edge.Generate(_request(row["prompt"], max_tokens, True), timeout=600)
            c = cloud.Generate(_request(row["prompt"], max_tokens, False), timeout=600)
            return label(row, e, c)

        with ThreadPoolExecutor(workers) as pool, open(out, "a") as fh:
            for labelled in tqdm(pool.map(one, todo), total=len(todo), desc="collect"):
                fh.write(json.dumps(labelled) + "\n")
                fh.flush()
                done[labelled["prompt"]] = labelled
    return [done[r["prompt"]] for r in prompts]


@contextmanager
def edge_and_cloud(edge_model: str, workdir: Path) -> Iterator[tuple[str, str]]:
    """Start an edge (serving ``edge_model``) and a default cloud on free ports."""
    from tandem.shared.process import ServiceProcess

    services = []
    try:
        for name, args in (("cloud", []), ("edge", ["--model", edge_model])):
            service = ServiceProcess(name, ["--port", "0", "--metrics-port", "-1", *args], workdir)
            services.append(service)
            service.wait_ready(600)
        yield services[1].address, services[0].address
    finally:
        for service in services:
            service.stop()
