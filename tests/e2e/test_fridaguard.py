import subprocess
import time

from lanetrace.injector.fridaguard import HangGuard


def test_hang_guard__block_outlives_timeout__then_processes_spawned_in_it_are_killed():
    with HangGuard(0.3) as guard:
        child = subprocess.Popen(["sleep", "60"])
        child.wait(30)  # returns only because the guard kills it
    assert guard.fired
    assert child.returncode == -9


def test_hang_guard__block_finishes_in_time__then_nothing_is_killed():
    child = subprocess.Popen(["sleep", "60"])
    try:
        with HangGuard(5, pid=child.pid) as guard:
            time.sleep(0.05)
        assert not guard.fired
        assert child.poll() is None
    finally:
        child.kill()
        child.wait()
