"""StopSignal (lanetrace.core.stopsignal): SIGTERM makes its fd readable, so a
service waiting in poll()/select() sees the stop without waiting for its
timeout. Run in a child: the handlers are process-wide."""
import json
import subprocess
import sys

PROBE = """
import json, os, select, signal
from lanetrace.core.stopsignal import StopSignal

called = []
stop = StopSignal(on_stop=lambda: called.append(True))
idle = bool(select.select([stop.fd], [], [], 0)[0])
os.kill(os.getpid(), signal.SIGTERM)
woken = bool(select.select([stop.fd], [], [], 30)[0])  # 30 s: a hang guard
stop.drain()
drained = not select.select([stop.fd], [], [], 0)[0]
print(json.dumps({"idle": idle, "woken": woken, "requested": stop.requested,
                  "called": called, "drained": drained}))
"""


def test_stop_signal__sigterm__then_fd_readable_and_stop_requested():
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"idle": False, "woken": True, "requested": True,
                                       "called": [True], "drained": True}
