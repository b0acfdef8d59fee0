"""End to end: two real captures of examples/bin/branchy through `lanetrace
run`, then `lanetrace diff` and an export of the real trace."""
import json
import os
import subprocess
import sys

import pytest

from .perfetto_model import load

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BRANCHY = os.path.join(REPO, "examples", "bin", "branchy")


def capture(tmp_path, arg):
    root = tmp_path / f"traces-{arg}"
    subprocess.run([sys.executable, "-m", "lanetrace", "run", "-o", str(root), "--", BRANCHY, arg],
                   check=True, capture_output=True, timeout=300, cwd=tmp_path)
    (session,) = os.listdir(root)
    (pid_dir,) = [d for d in os.listdir(root / session) if d.startswith("pid_")]
    return str(root / session / pid_dir)


@pytest.mark.frida
@pytest.mark.slow
def test_e2e_diff__branchy_good_and_bad__then_divergence_at_the_branch(tmp_path):
    good = capture(tmp_path, "good")
    bad = capture(tmp_path, "bad")
    result = subprocess.run([sys.executable, "-m", "lanetrace", "diff", good, bad, "--json"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stderr
    diff = json.loads(result.stdout)
    main_thread = diff["threads"][0]
    d = main_thread["divergence"]
    assert d["before"] == ["step", "step", "step"]
    assert d["a"]["call"] == "handle_good" and d["a"]["after"] == ["commit", "step", "step"]
    assert d["b"]["call"] == "handle_bad" and d["b"]["after"] == ["rollback", "report_error", "step"]
    only_a = {r["functionName"] for r in diff["functions"]["onlyInA"]}
    only_b = {r["functionName"] for r in diff["functions"]["onlyInB"]}
    assert only_a == {"handle_good", "commit"}
    assert only_b == {"handle_bad", "rollback", "report_error"}

    out = tmp_path / "good.pftrace"
    subprocess.run([sys.executable, "-m", "lanetrace", "export", good, "-f", "perfetto",
                    "-o", str(out)], check=True, capture_output=True, timeout=120)
    model = load(out)
    names = [s.name for s in sorted(model.slices, key=lambda s: s.ts) if s.depth == 1]
    assert names == ["setup", "load_input", "classify", "step", "step", "step", "handle_good",
                     "step", "step", "step", "finish"]
    (main,) = [s for s in model.slices if s.name == "main"]
    assert main.source[0].endswith("examples/src/branchy.c")
