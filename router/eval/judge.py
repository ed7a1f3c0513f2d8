"""The cloud judging edge answers it did not write: one Verify pass per answer
(``score_draft``: the cloud's log-probability and rank of every answer token; no
generation), and the scorers built on that judgement.

The edge's own confidence barely sees where its answer parts from the cloud's (they part
at near-ties: APGR 0.54-0.58 against random 0.50); the cloud sees it directly, for the
price of one prefill pass over the answer."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tqdm import tqdm

from tandem.router.scorers import JUDGED_TOKENS, SCORERS, TOP_K, EdgeAnswer, judge_features
from tandem.shared.prompting import chat_token_ids
from tandem.v1 import cloud_pb2, cloud_pb2_grpc, common_pb2


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


def judge_scores(answers: Sequence[EdgeAnswer]) -> dict[str, np.ndarray]:
    """P(acceptable)-like scores from the cloud's judgement: every cloud-judged scorer of
    the registry (``cloud_combined`` with its shipped head, fitted on the training labels:
    it never saw these answers) and the share of answer tokens in the cloud's top k."""
    scores = {name: cls().score_many(answers) for name, cls in SCORERS.items()
              if getattr(cls, "needs_cloud", False)}
    scores[f"cloud_top{TOP_K}_share"] = judge_features(answers)[:, 3]
    return {name: np.nan_to_num(s, nan=0.0, neginf=0.0) for name, s in scores.items()}
