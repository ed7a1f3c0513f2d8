"""The cloud judging edge answers it did not write: one Verify pass per answer
(``score_draft``: the cloud's log-probability and rank of every answer token; no
generation), and the scorers built on that judgement.

The edge's own confidence barely sees where its answer parts from the cloud's (they part
at near-ties: APGR 0.54-0.58 against random 0.50); the cloud sees it directly, for the
price of one prefill pass over the answer."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from tandem.router.head import cross_validated_l2, out_of_fold_predictions
from tandem.router.scorers import JUDGED_TOKENS, SCORERS, EdgeAnswer
from tandem.shared.prompting import chat_token_ids
from tandem.v1 import cloud_pb2, cloud_pb2_grpc, common_pb2

# A token "within the cloud's top k" for the top-k share.
TOP_K = 5


def judge_rows(rows: list[dict[str, Any]], cloud_address: str, tokenizer: Any,
               out: Path | None = None) -> list[dict[str, Any]]:
    """Add ``cloud_logprobs`` and ``cloud_ranks`` to every row that lacks them (the edge
    answer re-tokenized after the prompt's chat template), rewriting ``out`` when given."""
    todo = [r for r in rows if "cloud_logprobs" not in r]
    with grpc.insecure_channel(cloud_address) as channel:
        cloud = cloud_pb2_grpc.CloudStub(channel)
        for i, row in enumerate(tqdm(todo, desc="judge")):
            prompt = chat_token_ids(tokenizer, [{"role": "user", "content": row["prompt"]}])
            answer = tokenizer.encode(row["edge_text"], add_special_tokens=False)[:JUDGED_TOKENS]
            if not answer:
                row["cloud_logprobs"], row["cloud_ranks"] = [], []
                continue
            verdict = cloud.Verify(cloud_pb2.VerifyRequest(
                session_id=f"judge-{i}", tokens=prompt, draft_tokens=answer, score_draft=True,
                sampling=common_pb2.SamplingParams(max_tokens=1, temperature=0.0)), timeout=600)
            cloud.EndSession(cloud_pb2.EndSessionRequest(session_id=f"judge-{i}"), timeout=60)
            row["cloud_logprobs"] = [round(x, 5) for x in verdict.draft_logprobs]
            row["cloud_ranks"] = list(verdict.draft_ranks)
    if out is not None and todo:
        out.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return rows


def agreed_prefix(ranks: list[int]) -> int:
    """How many answer tokens come before the first one the cloud would not pick itself:
    so far the answer is the cloud's own greedy answer, word for word."""
    return next((i for i, rank in enumerate(ranks) if rank != 0), len(ranks))


def judge_features(row: dict[str, Any]) -> list[float]:
    """[mean and min cloud log-prob, top-1 and top-k share, edge mean and min log-prob,
    answer length / 32, the agreed prefix / 10 and as a share of the answer]."""
    cloud, ranks = row["cloud_logprobs"] or [0.0], row["cloud_ranks"] or [0]
    edge = row["edge_logprobs"] or [0.0]
    agreed = agreed_prefix(row["cloud_ranks"])
    return [float(np.mean(cloud)), float(np.min(cloud)),
            float(np.mean([r == 0 for r in ranks])), float(np.mean([r < TOP_K for r in ranks])),
            float(np.mean(edge)), float(np.min(edge)), len(row["cloud_ranks"]) / 32.0,
            agreed / 10.0, agreed / max(len(row["cloud_ranks"]), 1)]


def judge_scores(rows: list[dict[str, Any]], acceptable: np.ndarray) -> dict[str, np.ndarray]:
    """P(acceptable)-like scores from the cloud's judgement: its mean and minimum token
    probability, the share of answer tokens it would pick itself (top-1) or ranks in its
    top k, and a logistic combination with the edge's own confidence (each answer scored
    by a head fitted on the other folds: it never saw the answer it scores)."""
    x = np.asarray([judge_features(r) for r in rows])
    answers = [EdgeAnswer(r["prompt"], r["edge_text"], r["edge_logprobs"],
                          cloud_logprobs=r["cloud_logprobs"], cloud_ranks=r["cloud_ranks"])
               for r in rows]
    scores = {name: cls().score_many(answers) for name, cls in SCORERS.items()
              if getattr(cls, "needs_cloud", False)}
    scores[f"cloud_top{TOP_K}_share"] = x[:, 3]
    if len(np.unique(acceptable)) == 2 and len(rows) >= 10:
        standard = (x - x.mean(0)) / np.maximum(x.std(0), 1e-6)
        l2 = cross_validated_l2(standard, acceptable)
        scores["cloud_combined"] = out_of_fold_predictions(standard, acceptable, l2)
    return {name: np.nan_to_num(s, nan=0.0, neginf=0.0) for name, s in scores.items()}
