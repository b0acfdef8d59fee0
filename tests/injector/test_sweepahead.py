"""The branch sweep started before the agent plans: function starts from
the ELF files, code from the target's memory, found again by the analysis."""
import uuid

import pytest

from lanetrace.core.selection import Selection
from lanetrace.injector import hooksafety as hs
from lanetrace.injector.sweepahead import SweepAhead, elf_function_starts
from native.harness import Traced

pytestmark = pytest.mark.frida

PYTHON = "/usr/bin/python3.11"
SELECTION = {"include": ["libcrypto*!EVP_MD_CTX_new", "python3.11!PyList_New"]}


def test_sweep_ahead__python_with_libcrypto__then_elf_starts_equal_the_agents_and_the_analysis_needs_no_sweep(
        tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    monkeypatch.setattr(hs, "_BRANCH_CACHE", {})
    seen = {}

    def sweep_ahead_then_forbid_sweeping(t):
        ahead = SweepAhead(t.pid, Selection.from_agent(SELECTION))
        ahead.wait()
        seen["swept"] = sorted(ahead.swept)
        with hs.ProcessMemory(t.pid) as mem:
            for m in t.plan["modules"]:
                base = int(m["base"], 16)
                ranges = [r for r in mem.exec_ranges if base <= r[0] < base + m["size"]]
                in_code = lambda starts: {s for s in starts if any(lo <= s < hi for lo, hi in ranges)}
                seen[m["name"]] = (in_code(int(s, 16) for s in m["starts"]),
                                   in_code(elf_function_starts(m["path"], base)))

        def no_sweep(*args):
            raise AssertionError("the analysis swept a module the sweep ahead had swept")
        monkeypatch.setattr(hs.BranchScanner, "branches", no_sweep)

    t = Traced("t" + uuid.uuid4().hex[:12],
               [PYTHON, "-c", "import ssl, time\nprint('ready', flush=True)\ntime.sleep(600)"],
               attach=True, _wait_line="ready", selection=SELECTION,
               before_install=sweep_ahead_then_forbid_sweeping)
    try:
        assert seen["swept"] == sorted(m["path"] for m in t.plan["modules"])
        for name in ("python3.11", "libcrypto.so.3"):
            agent, from_file = seen[name]
            assert len(agent) > 1000 and agent == from_file, name
        assert {v.kind for v in t.verdicts.values()} == {"fast"}
        assert t.install["replaced"] == 2 and t.install["failed"] == []
    finally:
        t.drainers.finish()
        t.close()
