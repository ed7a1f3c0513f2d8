"""`tandem up` restarts a crashed service with backoff instead of stopping the stack."""

import subprocess
import time

from tandem.shared.stack import RESTART_BACKOFF_S, Supervisor


class SleepingChild:
    """Stands for a service process: a real child that can die and be restarted."""

    name = "sleeper"

    def __init__(self) -> None:
        self.starts = 0
        self.restart()

    def restart(self) -> None:
        self.starts += 1
        self.proc = subprocess.Popen(["sleep", "60"])


def test_a_dead_child_is_restarted_after_its_backoff_and_the_backoff_doubles():
    child = SleepingChild()
    supervisor = Supervisor([child])  # type: ignore[list-item]
    try:
        child.proc.kill()
        child.proc.wait()
        supervisor.check()  # noticed: a restart is scheduled, not done at once
        assert child.starts == 1
        time.sleep(RESTART_BACKOFF_S[0] + 0.1)
        supervisor.check()
        assert child.starts == 2 and child.proc.poll() is None
        child.proc.kill()
        child.proc.wait()
        supervisor.check()
        time.sleep(RESTART_BACKOFF_S[0] + 0.1)
        supervisor.check()
        assert child.starts == 2  # the second restart waits twice as long
        time.sleep(RESTART_BACKOFF_S[0])
        supervisor.check()
        assert child.starts == 3
    finally:
        child.proc.kill()
