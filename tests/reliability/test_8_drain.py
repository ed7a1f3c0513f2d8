"""Scenario 8: SIGTERM drains each service without cutting a stream."""

import pytest

from tandem.loadtests.chaos import drain
from tests.reliability.conftest import run_scenario

pytestmark = [pytest.mark.reliability, pytest.mark.real_model]


def test_sigterm_drains_each_service_without_losing_a_stream(chaos_stack, plan):
    run_scenario(drain.run(chaos_stack, plan.drain))


def test_tandem_up_stops_the_router_first_then_the_tiers_then_redis(tmp_path):
    """Ctrl-C to `tandem up` with streams in flight: the router drains them, then the
    tiers stop, then Redis; every stream finishes."""
    import asyncio
    import json
    import signal
    import subprocess
    import sys
    import time

    import psutil

    from tandem.loadtests.chaos.calls import Router, request, stream
    from tandem.shared.process import free_port

    ports = [str(free_port()) for _ in range(4)]
    log = open(tmp_path / "up.log", "wb")
    up = subprocess.Popen(
        [sys.executable, "-m", "tandem.shared.cli.main", "up", "--router-port", ports[0],
         "--cloud-port", ports[1], "--edge-port", ports[2], "--redis-port", ports[3],
         "--http-port", "-1"], stdout=subprocess.PIPE, stderr=log, process_group=0)
    try:
        for line in up.stdout:  # type: ignore[union-attr]
            if line.startswith(b"tandem stack ready"):
                break
        names = {}
        for child in psutil.Process(up.pid).children():
            cmd = " ".join(child.cmdline())
            names[child] = ("redis" if "redis-server" in cmd else
                            next(n for n in ("router", "cloud", "edge") if f"serve {n}" in cmd))
        assert sorted(names.values()) == ["cloud", "edge", "redis", "router"]

        async def streams_then_interrupt():
            async with Router(f"127.0.0.1:{ports[0]}") as router:
                firsts = [asyncio.Event() for _ in range(3)]
                tasks = [asyncio.ensure_future(stream(
                    router.stub, request(f"Story {i} about a fox.", "cloud", 48), 120,
                    first_chunk=firsts[i])) for i in range(3)]
                await asyncio.gather(*(e.wait() for e in firsts))
                up.send_signal(signal.SIGINT)  # what Ctrl-C in its terminal sends
                interrupted = time.monotonic()
                exits = {}
                while len(exits) < len(names):
                    for child, name in names.items():
                        if name not in exits and not child.is_running():
                            exits[name] = time.monotonic() - interrupted
                        elif name not in exits and child.status() == psutil.STATUS_ZOMBIE:
                            exits[name] = time.monotonic() - interrupted
                    await asyncio.sleep(0.02)
                return await asyncio.gather(*tasks), exits

        results, exits = asyncio.run(streams_then_interrupt())
        assert up.wait(120) == 0
    finally:
        if up.poll() is None:
            up.kill()
        log.close()
    print(json.dumps({"scenario": "tandem_up_stop_order", "exited_s_after_ctrl_c":
                      {k: round(v, 2) for k, v in sorted(exits.items(), key=lambda kv: kv[1])},
                      "streams": [r.code for r in results]}))
    assert all(r.ok and r.final is not None for r in results)
    assert exits["router"] < min(exits["cloud"], exits["edge"])
    assert max(exits["cloud"], exits["edge"]) < exits["redis"]
