"""The cascade's cost/quality evaluation, in RouteLLM's terms.

Quality of an answer = its agreement with the cloud-only answer (the cloud's own answer
scores 1). Cost = share of the cloud tokens that cloud-only serving would spend. Sorting
prompts by scorer score and escalating the lowest first traces the cost/quality curve;
APGR is the mean, over cost in [0, 1], of the performance gap recovered
(q − q_edge) / (q_cloud − q_edge) by the best point at or under that cost.
"""

from __future__ import annotations

from typing import Any

import numpy as np

COST_GRID = np.linspace(0.0, 1.0, 101)


def curve(scores: np.ndarray, edge_quality: np.ndarray, cloud_tokens: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray]:
    """(cost, quality) after escalating the 0, 1, ..., N lowest-scored prompts."""
    order = np.argsort(scores, kind="stable")
    tokens = cloud_tokens[order].astype(float)
    cost = np.concatenate([[0.0], np.cumsum(tokens) / tokens.sum()])
    gain = 1.0 - edge_quality[order]  # quality gained by escalating that prompt
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


def summarise(scores: np.ndarray, edge_quality: np.ndarray, cloud_tokens: np.ndarray
              ) -> dict[str, Any]:
    cost, quality = curve(scores, edge_quality, cloud_tokens)
    q_edge = float(edge_quality.mean())
    return {"apgr": round(apgr(cost, quality, q_edge), 4),
            "cost_reduction_at_95": round(cost_reduction_at(cost, quality, 0.95), 4),
            "curve": [[round(float(c), 4), round(float(q), 4)] for c, q in zip(cost, quality)]}


def random_baseline(edge_quality: np.ndarray, cloud_tokens: np.ndarray, trials: int = 200,
                    seed: int = 0) -> dict[str, Any]:
    """A router that escalates in random order: mean APGR and cost reduction."""
    rng = np.random.default_rng(seed)
    q_edge = float(edge_quality.mean())
    apgrs, reductions = [], []
    for _ in range(trials):
        cost, quality = curve(rng.random(len(edge_quality)), edge_quality, cloud_tokens)
        apgrs.append(apgr(cost, quality, q_edge))
        reductions.append(cost_reduction_at(cost, quality, 0.95))
    return {"apgr": round(float(np.mean(apgrs)), 4),
            "cost_reduction_at_95": round(float(np.mean(reductions)), 4)}


def plot(report: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, result in report["scorers"].items():
        points = np.asarray(result["curve"])
        ax.plot(points[:, 0], points[:, 1], label=f"{name} (APGR {result['apgr']:.2f})")
    if "oracle" in report:
        points = np.asarray(report["oracle"]["curve"])
        ax.plot(points[:, 0], points[:, 1], color="grey", lw=1,
                label=f"oracle (APGR {report['oracle']['apgr']:.2f})")
    q_edge = report["edge_only_quality"]
    ax.plot([0, 1], [q_edge, 1.0], "k--", label=f"random (APGR {report['random']['apgr']:.2f})")
    ax.axhline(0.95, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("cost (share of cloud-only tokens)")
    judged = (f"share with {report['quality']} >= {report['bar']}" if report.get("bar")
              else f"{report['quality']}")
    ax.set_ylabel(f"quality ({judged} vs cloud answer)")
    ax.set_title(f"Cascade on {report['prompts']} prompts (edge {report['edge']})")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
