"""Measure the per-call cost of the replaceFast hook path (not a test).

    .venv/bin/python tests/native/bench_hookcost.py [CALLS]

Compiles bench_callee.c, runs it, attaches the agent (drainers running in
this process), and prints the loop's ns/call without and with the hook.
Each hooked call writes two records (ENTRY + RETURN)."""
import os
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from native.harness import Traced  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    calls = sys.argv[1] if len(sys.argv) > 1 else "5000000"
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "bench_callee")
        subprocess.check_call(["gcc", "-O2", "-o", exe, os.path.join(HERE, "bench_callee.c")])
        r, w = os.pipe()
        t = Traced("bench" + uuid.uuid4().hex[:6], [exe, str(r), calls], attach=True, pass_fds=(r,),
                   selection={"include": ["callee"]}, _wait_line="base",
                   ring_bytes=1 << 20, rings_per_lane=16)
        try:
            os.close(r)
            os.write(w, b"x")
            rc, out = t.wait_exit()
            data = t.finish()
            print(out.strip())
            print(f"records {len(data) // 32}, drops {sum(t.seg.drops().values())}, install {t.install}")
        finally:
            os.close(w)
            t.close()


if __name__ == "__main__":
    main()
