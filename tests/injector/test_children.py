"""``lanetrace run --follow-children``: the processes a target starts are traced
each on its own."""
import json

import pytest

from conftest import example, run_lanetrace
from e2e.tracecheck import Trace, count_mismatches, load_expectation


@pytest.mark.frida
def test_run_follow_children__shell_runs_two_programs__then_each_has_its_own_exact_trace(tmp_path):
    out = tmp_path / "traces"
    e1, e2 = tmp_path / "e1.json", tmp_path / "e2.json"
    script = (f"LANETRACE_EXPECT={e1} {example('workers')} 2 100; "
              f"LANETRACE_EXPECT={e2} {example('workers')} 1 50; exit 3")
    proc = run_lanetrace(["run", "-o", str(out), "--follow-children",
                          "-I", "workers", "-i", "libworkutil.so!lib_*", "-i", "libplugin.so!plugin_*",
                          "--", "/bin/sh", "-c", script])
    assert proc.returncode == 3, proc.stderr  # the root's exit status, as from a shell
    session_dir = next(out.iterdir())
    with open(session_dir / "session.json") as f:
        session = json.load(f)
    tree = {t["pid"]: t["parentPid"] for t in session["processTree"]}
    root = [p for p, parent in tree.items() if parent is None]
    assert len(root) == 1
    children = sorted(p for p, parent in tree.items() if parent == root[0])
    assert len(children) == 2
    for expect_path in (e1, e2):
        expect = load_expectation(str(expect_path))
        assert expect["pid"] in children
        trace = Trace(str(session_dir / f"pid_{expect['pid']}"))
        assert count_mismatches(trace, expect) == []
        assert trace.manifest["complete"] is True
