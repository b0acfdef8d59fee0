"""Measure the per-call cost of the replaceFast hook path (not a test).

    .venv/bin/python tests/native/bench_hookcost.py [CALLS]

Compiles bench_callee.c, runs it, attaches the agent (drainers running in
this process), and prints the loop's ns/call without and with the hook, for
the detail lane off (the default: the index lane only) and on (registers
only, and registers + a 128-byte stack copy). Each hooked call writes two
index records (ENTRY + RETURN) and, with the detail lane on, two detail
records; a drainer that cannot keep up with the detail lane makes the
producer overwrite its oldest detail data (counted, never blocking), which
is part of what the producer pays."""
import os
import subprocess
import sys
import tempfile
import uuid

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from native.harness import Traced  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def run(exe, calls, detail):
    r, w = os.pipe()
    t = Traced("bench" + uuid.uuid4().hex[:6], [exe, str(r), calls], attach=True, pass_fds=(r,),
               selection={"include": ["callee"]}, _wait_line="base", slots=4,
               ring_bytes=1 << 20, rings_per_lane=16, detail=detail,
               detail_ring_bytes=1 << 20, detail_rings_per_lane=8)
    try:
        os.close(r)
        os.write(w, b"x")
        rc, out = t.wait_exit()
        data = t.finish()
        lines = dict(line.split(" ", 1) for line in out.strip().splitlines() if " " in line)
        drops = {k: v for k, v in t.seg.drops().items() if v}
        return lines.get("base", "?"), lines.get("hooked", "?"), len(data) // 32, \
            len(t.drainers.detail_bytes()), drops
    finally:
        os.close(w)
        t.close()


def main():
    calls = sys.argv[1] if len(sys.argv) > 1 else "5000000"
    with tempfile.TemporaryDirectory() as d:
        exe = os.path.join(d, "bench_callee")
        subprocess.check_call(["gcc", "-O2", "-o", exe, os.path.join(HERE, "bench_callee.c")])
        for label, detail in (("detail off", None), ("detail on, stack 0", 0), ("detail on, stack 128", 128)):
            base, hooked, n, dbytes, drops = run(exe, calls, detail)
            print(f"{label:22s} base {base:>16s}  hooked {hooked:>16s}  index records {n}  "
                  f"detail bytes {dbytes}  drops {drops}")


if __name__ == "__main__":
    main()
