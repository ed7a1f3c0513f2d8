"""The cascade's cost/quality evaluation, in RouteLLM's terms.

Quality of an answer = its agreement with the cloud-only answer (the cloud's own answer
scores 1), or, on a checkable-answer set, whether it is right (the cloud's answer may be
wrong too). Cost = share of what cloud-only serving would spend: its generated tokens, or
its forward passes (report.py states that cost model). Sorting prompts by scorer score and
escalating the lowest first traces the cost/quality curve; a scorer the cloud judges adds
the judging to every point. APGR is the mean, over cost in [0, 1], of the performance gap
recovered (q − q_edge) / (q_cloud − q_edge) by the best point at or under that cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

COST_GRID = np.linspace(0.0, 1.0, 101)


def curve(scores: np.ndarray, edge_quality: np.ndarray, cloud_cost: np.ndarray,
          cloud_quality: np.ndarray | None = None, fixed_cost: float = 0.0
          ) -> tuple[np.ndarray, np.ndarray]:
    """(cost, quality) after escalating the 0, 1, ..., N lowest-scored prompts; cost is a
    share of ``cloud_cost``'s total (cloud-only serving), plus ``fixed_cost`` (a share
    spent whatever is escalated, e.g. the cloud judging every answer)."""
    if cloud_quality is None:
        cloud_quality = np.ones_like(edge_quality)
    order = np.argsort(scores, kind="stable")
    spent = cloud_cost[order].astype(float)
    cost = fixed_cost + np.concatenate([[0.0], np.cumsum(spent) / spent.sum()])
    gain = cloud_quality[order] - edge_quality[order]  # gained by escalating that prompt
    quality = edge_quality.mean() + np.concatenate([[0.0], np.cumsum(gain)]) / len(scores)
    return cost, quality


def apgr(cost: np.ndarray, quality: np.ndarray, q_edge: float, q_cloud: float = 1.0) -> float:
    """Area under PGR(cost); between two thresholds the curve is linear (mixing them at
    random achieves every point on that segment), as in RouteLLM."""
    if q_cloud - q_edge <= 1e-12:
        return 1.0
    envelope = np.maximum.accumulate(quality)  # cost is ascending along the curve
    gaps = (np.interp(COST_GRID, cost, envelope) - q_edge) / (q_cloud - q_edge)
    return float(np.trapezoid(gaps, COST_GRID))


def cost_reduction_at(cost: np.ndarray, quality: np.ndarray, fraction: float,
                      q_cloud: float = 1.0) -> float:
    """1 − the least cost at which quality reaches ``fraction`` of cloud-only quality."""
    reached = np.flatnonzero(quality >= fraction * q_cloud - 1e-12)
    return float(1.0 - cost[reached].min()) if len(reached) else 0.0


@dataclass(frozen=True)
class Costs:
    """What escalating each prompt costs the cloud, on both axes (report.py's cost model),
    and the quality its answer has."""

    tokens: np.ndarray  # cloud-only generated tokens
    passes: np.ndarray  # cloud-only forward passes, prefill weighted by its tokens
    judge_passes: np.ndarray  # the cloud judging the edge answer (judged scorers only)
    cloud_quality: np.ndarray


def _axis(scores: np.ndarray, edge_quality: np.ndarray, cloud_cost: np.ndarray,
          cloud_quality: np.ndarray, fixed_cost: float = 0.0) -> dict[str, float | None]:
    """APGR (None where the cloud is no better than the edge: there is no gap to recover)
    and the cost saved at 95 % of cloud-only quality."""
    cost, quality = curve(scores, edge_quality, cloud_cost, cloud_quality, fixed_cost)
    q_edge, q_cloud = float(edge_quality.mean()), float(cloud_quality.mean())
    gap = q_cloud - q_edge > 1e-12
    return {"apgr": round(apgr(cost, quality, q_edge, q_cloud), 4) if gap else None,
            "cost_reduction_at_95": round(cost_reduction_at(cost, quality, 0.95, q_cloud), 4)}


def summarise(scores: np.ndarray, edge_quality: np.ndarray, costs: Costs,
              judged: bool = False) -> dict[str, Any]:
    """APGR and cost saved at 95 % of cloud quality on the token axis (with the curve), and
    on the forward-pass axis (``passes``), where a ``judged`` scorer also pays the judging."""
    cost, quality = curve(scores, edge_quality, costs.tokens, costs.cloud_quality)
    judging = float(costs.judge_passes.sum() / costs.passes.sum()) if judged else 0.0
    return {**_axis(scores, edge_quality, costs.tokens, costs.cloud_quality),
            "passes": _axis(scores, edge_quality, costs.passes, costs.cloud_quality, judging)
            | {"judge_share": round(judging, 4)},
            "curve": [[round(float(c), 4), round(float(q), 4)] for c, q in zip(cost, quality)]}


def random_baseline(edge_quality: np.ndarray, costs: Costs, trials: int = 200,
                    seed: int = 0) -> dict[str, Any]:
    """A router that escalates in random order: mean APGR and cost reduction (both axes)."""
    rng = np.random.default_rng(seed)
    runs = [summarise(rng.random(len(edge_quality)), edge_quality, costs)
            for _ in range(trials)]

    def mean(values: list[float | None]) -> float | None:
        return None if None in values else round(float(np.mean(values)), 4)

    return {"apgr": mean([r["apgr"] for r in runs]),
            "cost_reduction_at_95": mean([r["cost_reduction_at_95"] for r in runs]),
            "passes": {key: mean([r["passes"][key] for r in runs])
                       for key in ("apgr", "cost_reduction_at_95")}}


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, result in report["scorers"].items():
        points = np.asarray(result["curve"])
        ax.plot(points[:, 0], points[:, 1], label=f"{name} (APGR {result['apgr']})")
    if "oracle" in report:
        points = np.asarray(report["oracle"]["curve"])
        ax.plot(points[:, 0], points[:, 1], color="grey", lw=1,
                label=f"oracle (APGR {report['oracle']['apgr']})")
    q_edge, q_cloud = report["edge_only_quality"], report.get("cloud_only_quality", 1.0)
    ax.plot([0, 1], [q_edge, q_cloud], "k--",
            label=f"random (APGR {report['random']['apgr']})")
    ax.axhline(0.95 * q_cloud, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("cost (share of cloud-only tokens)")
    if report["quality"] == "correct":
        ax.set_ylabel("quality (share of right answers)")
    else:
        judged = (f"share with {report['quality']} >= {report['bar']}" if report.get("bar")
                  else f"{report['quality']}")
        ax.set_ylabel(f"quality ({judged} vs cloud answer)")
    ax.set_title(f"Cascade on {report['prompts']} prompts (edge {report['edge']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
