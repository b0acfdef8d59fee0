"""The hook path end to end through ``lanetrace run``: IFUNC symbols
resolve to what the loader picked, and every selected function is accounted
for in trace.json (hooked, or skipped with its reason)."""
import os
import subprocess

import pytest

from conftest import run_lanetrace
from e2e.tracecheck import Trace, single_trace_dir

pytestmark = pytest.mark.frida
HERE = os.path.dirname(os.path.abspath(__file__))


@pytest.fixture(scope="module")
def ifunc_bin(tmp_path_factory):
    exe = str(tmp_path_factory.mktemp("ifunc") / "ifunc")
    subprocess.run(["gcc", "-O1", "-fno-builtin", "-o", exe, os.path.join(HERE, "ifunc.c")], check=True)
    return exe


def test_run__ifunc_strlen_and_memcpy_selected__then_the_loaders_implementation_is_traced(tmp_path, ifunc_bin):
    n = 300
    untraced = subprocess.run([ifunc_bin, str(n)], capture_output=True, text=True, check=True)
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-i", "libc.so*!strlen", "-i", "libc.so*!memcpy",
                          "--", ifunc_bin, str(n)])
    assert proc.returncode == 0, proc.stderr
    assert untraced.stdout in proc.stdout
    trace = Trace(single_trace_dir(str(out)))
    calls = {name: c for (tid, name), c in trace.entries.items()}
    assert calls.get("strlen", 0) >= n and calls.get("memcpy", 0) >= n
    assert trace.entries == trace.returns
    hooks = trace.manifest["hooks"]
    assert hooks["fast"] >= 2 and hooks["skipped"] == 0  # memcpy has a compat version too


def test_run__whole_module_selected__then_every_function_hooked_or_skipped_with_a_reason(tmp_path, ifunc_bin):
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "-I", "ifunc", "--", ifunc_bin, "5"])
    assert proc.returncode == 0, proc.stderr
    trace = Trace(single_trace_dir(str(out)))
    hooks = trace.manifest["hooks"]
    assert hooks["fast"] >= 1
    assert hooks["skipped"] == len(hooks["skippedFunctions"]) == sum(hooks["skippedByReason"].values())
    assert all(s["reason"] for s in hooks["skippedFunctions"])
    assert {"name": "ifunc!_start", "reason": "builtin-exclude"} in hooks["skippedFunctions"]
