"""agent.js install() with no fast hook among its verdicts (every function
on the fallback path, or the last busy round that only skips)."""
import pytest

from native.harness import Traced

pytestmark = pytest.mark.frida


def test_install__no_fast_verdict__then_fallback_hooks_installed_without_error(session_id, target_bin):
    t = Traced(session_id, [target_bin, "-1", "0", "0"], selection={"include": ["target!tiny"]})
    try:
        assert [fn["name"] for fn in t.functions.values()] == ["tiny"]
        assert t.install["attached"] == 1 and t.install["replaced"] == 0  # forced by the harness
        assert t.install["failed"] == []
    finally:
        t.device.kill(t.pid)
        t.close()
