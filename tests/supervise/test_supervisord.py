"""supervisord woken by signals (lanetrace.supervise.supervisord): a signal
makes the loop's poll set readable, so an exited child is reaped in the same
pass instead of at the next 1 s poll timeout."""
import json
import subprocess
import sys

PROBE = """
import json, os, select, signal
from supervisor.options import ServerOptions
from lanetrace.supervise import supervisord

options = ServerOptions()
supervisord.setsignals(options)
def wakeups():
    return [(fd, d) for fd, d in options.get_socket_map().items()
            if isinstance(d, supervisord.SignalWakeup)]
[(fd, wakeup)] = wakeups()
idle = bool(select.select([fd], [], [], 0)[0])
os.kill(os.getpid(), signal.SIGCHLD)
woken = bool(select.select([fd], [], [], 30)[0])  # 30 s: a hang guard
wakeup.handle_read_event()
drained = not select.select([fd], [], [], 0)[0]
supervisord.setsignals(options)  # a reload (SIGHUP) comes here again
after_reload = len(wakeups())
print(json.dumps({"idle": idle, "woken": woken, "drained": drained,
                  "readable": wakeup.readable(), "afterReload": after_reload,
                  "stale": any(d is wakeup for d in options.get_socket_map().values())}))
"""


def test_supervisord__sigchld__then_poll_set_readable_and_drained():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"idle": False, "woken": True, "drained": True, "readable": True,
                      "afterReload": 1, "stale": False}
