"""What speculative decoding can gain with this edge/cloud pair, whatever the router does.

The cloud's greedy answers (transformers, fp32: what the cloud engine outputs) are
replayed against the edge: from every position of every answer the configured edge
backend drafts up to 16 tokens through its real drafting path, and the run of tokens that
match the cloud's is recorded. With those runs, the edge's measured time per drafted token
and the cloud's step time, each fixed draft length k is costed round by round (the draft,
the round trip, a verify pass over k + 1 tokens). The best fixed k, chosen in hindsight,
is what a controller should approach (adapting k per round, and drafting during round trips,
can do a little better). Costs that are not measured here are flags.

    python scripts/speculative_ceiling.py --rtt-ms 0,20 [--prompts FILE] [--json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

MAX_DRAFT = 16


def cloud_answers(prompts: list[list[int]], max_tokens: int) -> list[list[int]]:
    import torch

    from tandem.shared.model_loader import load_causal_lm
    from tandem.shared.models import DEFAULT_MODEL, resolve_model

    model = load_causal_lm(resolve_model(DEFAULT_MODEL), "float32")
    answers = []
    with torch.inference_mode():
        for ids in prompts:
            out = model.generate(torch.tensor([ids]), max_new_tokens=max_tokens, do_sample=False)
            answers.append(out[0, len(ids):].tolist())
    return answers


def accepted_runs(prompts: list[list[int]], answers: list[list[int]]
                  ) -> tuple[list[list[int]], float, float]:
    """Per answer and position, how many of the edge's drafts match the cloud; the edge's
    seconds per evaluated token, and its mean prompt-processing seconds."""
    from tandem.edge.config import EdgeConfig
    from tandem.edge.llama_cpp_backend import LlamaCppBackend
    from tandem.shared.models import resolve_model
    from tandem.shared.sampling import SamplingParams, TokenSampler

    config = EdgeConfig()
    edge = LlamaCppBackend.from_config(config, resolve_model(config.model))
    greedy = TokenSampler(SamplingParams(max_tokens=MAX_DRAFT))
    runs, steady_s, steady_tokens, prompt_s = [], 0.0, 0, 0.0
    for ids, answer in zip(prompts, answers):
        matched = []
        for p in range(len(answer)):
            started = time.perf_counter()
            draft = edge.draft_sync(ids + answer[:p], MAX_DRAFT, greedy, frozenset())
            seconds = time.perf_counter() - started
            if p == 0:  # prompt processing, then drafting at the steady rate
                prompt_s += seconds
            else:
                steady_s, steady_tokens = steady_s + seconds, steady_tokens + draft.computed_tokens
            run = 0
            while run < len(draft.tokens) and p + run < len(answer) \
                    and draft.tokens[run] == answer[p + run]:
                run += 1
            matched.append(run)
        runs.append(matched)
    edge.close()
    per_token = steady_s / max(steady_tokens, 1)
    # the first call also evaluated MAX_DRAFT - 1 drafts after the prompt
    return runs, per_token, prompt_s / len(prompts) - (MAX_DRAFT - 1) * per_token


def speedup(runs: list[list[int]], k: int, rtt: float, draft: float, costs: argparse.Namespace,
            edge_prompt: float) -> float:
    """Cloud-only time over speculative time (seconds), drafting k tokens a round."""
    spec = cloud = 0.0
    for matched in runs:
        n, p = len(matched), 0
        spec += edge_prompt + costs.cloud_prefill_ms / 1e3
        cloud += rtt + costs.cloud_prefill_ms / 1e3 + n * costs.step_ms / 1e3
        while p < n:
            room = min(k, n - p)
            spec += room * draft + rtt + costs.step_ms / 1e3 * (1 + costs.verify_slope * room)
            p += min(matched[p], room) + 1
    return cloud / spec


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", help="JSONL with a `prompt` field (default: the bench's).")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--rtt-ms", default="0,20")
    parser.add_argument("--step-ms", type=float, default=21.0,
                        help="Cloud step as the router sees it (cloud-only ~47 tok/s here).")
    parser.add_argument("--verify-slope", type=float, default=0.03,
                        help="Each verified token's cost as a share of a step (CPU engine).")
    parser.add_argument("--cloud-prefill-ms", type=float, default=60.0)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    from tandem.router.bench import DEFAULT_PROMPTS
    from tandem.router.eval.collect import read_jsonl
    from tandem.shared.models import DEFAULT_MODEL, load_tokenizer, resolve_model
    from tandem.shared.prompting import chat_token_ids

    texts = ([r["prompt"] for r in read_jsonl(Path(args.prompts))] if args.prompts
             else DEFAULT_PROMPTS)
    tokenizer = load_tokenizer(resolve_model(DEFAULT_MODEL))
    prompts = [chat_token_ids(tokenizer, [{"role": "user", "content": t}]) for t in texts]
    answers = cloud_answers(prompts, args.max_tokens)
    runs, draft_s, edge_prompt_s = accepted_runs(prompts, answers)
    report = {"prompts": len(prompts), "positions": sum(map(len, runs)),
              "first_token_accepted": round(sum(r[0] > 0 for r in runs if r) / len(runs), 3),
              "draft_ms_per_token": round(draft_s * 1e3, 2), "step_ms": args.step_ms,
              "results": []}
    for rtt in (float(x) / 1e3 for x in args.rtt_ms.split(",")):
        def best(draft: float) -> tuple[int, float]:
            return max(((k, speedup(runs, k, rtt, draft, args, edge_prompt_s))
                        for k in range(1, MAX_DRAFT + 1)), key=lambda kv: kv[1])
        k, value = best(draft_s)
        report["results"].append({
            "rtt_ms": rtt * 1e3, "best_k": k, "speedup": round(value, 3),
            "speedup_draft_2x_faster": round(best(draft_s / 2)[1], 3),
            "speedup_draft_free": round(best(0.0)[1], 3)})
    lines = [f"{report['prompts']} prompts, {report['positions']} positions; drafts "
             f"{report['draft_ms_per_token']} ms/token; cloud step {args.step_ms} ms",
             f"{'rtt_ms':>6} {'best k':>6} {'ceiling':>7} {'2x draft':>8} {'free draft':>10}"]
    for r in report["results"]:
        lines.append(f"{r['rtt_ms']:>6g} {r['best_k']:>6} {r['speedup']:>7.3f} "
                     f"{r['speedup_draft_2x_faster']:>8.3f} {r['speedup_draft_free']:>10.3f}")
    print("\n".join(lines), file=sys.stderr)
    print(json.dumps(report, indent=None if args.json else 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
