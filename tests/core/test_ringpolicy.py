"""The ring budget and drop policy of a session spec, as the injector turns
them into a segment's pool size and drop policy."""
import os

from lanetrace.core import ringpolicy


def test_pool_rings__budget_given__then_whole_rings_of_it():
    assert ringpolicy.pool_rings({"ringBudgetBytes": 10 << 20}, 4 << 20) == 2
    assert ringpolicy.pool_rings({"ringBudgetBytes": 0}, 4096) == 0
    assert ringpolicy.pool_rings({}, 256 << 10) == \
        min(4096, ringpolicy.pool_rings({"ringBudgetBytes": 1 << 30}, 256 << 10))


def test_pool_rings__budget_beyond_free_shared_memory__then_half_the_free_space(tmp_path):
    def half_in_rings():
        st = os.statvfs(tmp_path)
        return min(st.f_bavail * st.f_frsize // 2 // (1 << 20), ringpolicy.MAX_POOL_RINGS)

    before = half_in_rings()
    got = ringpolicy.pool_rings({"ringBudgetBytes": 1 << 50}, 1 << 20, shm_dir=str(tmp_path))
    after = half_in_rings()  # other processes may write meanwhile
    assert min(before, after) <= got <= max(before, after)


def test_drop_policy__spec_without_it__then_drop_and_count_with_default_timeout():
    assert ringpolicy.drop_policy({}) == {"no_drop": False,
                                          "block_timeout_ms": ringpolicy.DEFAULT_BLOCK_TIMEOUT_MS}
    assert ringpolicy.drop_policy({"noDrop": True, "blockTimeoutMs": 5}) == \
        {"no_drop": True, "block_timeout_ms": 5.0}
