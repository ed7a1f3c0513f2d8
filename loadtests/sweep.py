"""A concurrency sweep: one load test per user count, the same workload and seed each
time, giving throughput-latency curves (table, JSON and PNG) that show where the stack
saturates: throughput stops growing while latency keeps climbing."""

from __future__ import annotations

import dataclasses
from typing import Any

from tandem.loadtests.run import LoadTest, run_load_test

# Columns of the sweep table: (header, path into a level's summary).
COLUMNS = (
    ("users", ("config", "users")), ("done", ("completed",)), ("fail", ("failed",)),
    ("rej", ("rejected",)), ("req/s", ("request_throughput",)),
    ("tok/s", ("output_throughput",)), ("ttft p50", ("ttft_ms", "p50")),
    ("ttft p99", ("ttft_ms", "p99")), ("tpot p50", ("tpot_ms", "p50")),
    ("e2el p50", ("e2el_ms", "p50")), ("e2el p99", ("e2el_ms", "p99")),
    ("edge ms", ("router_time_ms", "edge")), ("cloud ms", ("router_time_ms", "cloud")),
)


def run_sweep(base: LoadTest, levels: list[int], requests_per_user: int,
              metrics: dict[str, str] | None = None,
              pids: dict[str, int] | None = None) -> dict[str, Any]:
    """One run per level with `max(8, requests_per_user x users)` requests (or the base
    duration); each level's output goes to `<output_dir>/users-<n>` when one is set."""
    if not levels or any(n < 1 for n in levels):
        raise ValueError("sweep levels must be positive user counts")
    results = []
    for users in levels:
        test = dataclasses.replace(
            base, users=users,
            requests=None if base.duration_s else max(8, requests_per_user * users),
            chat_users=min(base.chat_users, users),
            output_dir=f"{base.output_dir}/users-{users}" if base.output_dir else None)
        results.append(run_load_test(test, metrics, pids))
    return {"levels": results, "saturation": saturation(results)}


def saturation(levels: list[dict[str, Any]], gain: float = 1.1) -> dict[str, Any]:
    """The first level whose output throughput grew less than `gain`x over the previous
    level's although users grew: beyond it, added users only queue."""
    for previous, current in zip(levels, levels[1:]):
        before, after = previous["output_throughput"] or 0.0, current["output_throughput"] or 0.0
        if after < gain * before:
            return {"users": previous["config"]["users"], "output_throughput": before,
                    "next_users": current["config"]["users"], "next_output_throughput": after}
    return {"users": None, "note": "throughput still grew at the last level"}


def _cell(summary: dict[str, Any], path: tuple[str, ...]) -> str:
    value: Any = summary
    for key in path:
        value = value.get(key) if isinstance(value, dict) else None
    if value is None:
        return "-"
    return f"{value:.0f}" if isinstance(value, float) and value >= 100 else f"{value:g}"


def format_sweep(report: dict[str, Any]) -> str:
    """The sweep as a Markdown table (milliseconds for latencies), plus CPU if measured."""
    headers = [h for h, _ in COLUMNS]
    cpu_names = sorted(report["levels"][0].get("server", {}).get("cpu_cores_busy", {}))
    headers += [f"cpu {n}" for n in cpu_names]
    rows = []
    for level in report["levels"]:
        cpu = level.get("server", {}).get("cpu_cores_busy", {})
        rows.append([_cell(level, path) for _, path in COLUMNS] +
                    [f"{cpu.get(n, 0):.2f}" for n in cpu_names])
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    sat = report["saturation"]
    if sat.get("users"):
        lines.append(f"saturates at {sat['users']} users: {sat['output_throughput']} tok/s, "
                     f"{sat['next_users']} users give {sat['next_output_throughput']} tok/s")
    return "\n".join(lines)


def plot_sweep(report: dict[str, Any], path: str) -> None:
    """Throughput-latency curves: output tok/s against users, and p50/p99 TTFT and E2EL
    against output tok/s (each point labelled with its user count)."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    levels = report["levels"]
    users = [lv["config"]["users"] for lv in levels]
    tput = [lv["output_throughput"] or 0.0 for lv in levels]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    left.plot(users, tput, marker="o")
    left.set(xlabel="concurrent users", ylabel="output tokens/s", title="Throughput")
    left.set_xscale("log", base=2)
    left.set_xticks(users, labels=[str(n) for n in users])
    for metric, style in (("ttft_ms", "--"), ("e2el_ms", "-")):
        for pct in ("p50", "p99"):
            values = [(lv[metric][pct] or 0.0) / 1000.0 for lv in levels]
            right.plot(tput, values, style, marker="o", label=f"{metric[:-3]} {pct}")
    for x, y, n in zip(tput, [(lv["e2el_ms"]["p99"] or 0.0) / 1000.0 for lv in levels], users):
        right.annotate(f"{n}u", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    right.set(xlabel="output tokens/s", ylabel="latency (s)", title="Latency vs throughput")
    right.set_yscale("log")
    right.legend(fontsize=8)
    policy = levels[0]["config"]["policy"]
    fig.suptitle(f"tandem loadtest sweep: target {levels[0]['config']['target']}, "
                 f"policy {policy}, max_tokens {levels[0]['config']['max_tokens']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
