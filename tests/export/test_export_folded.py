import random
import re
from collections import Counter

import pytest

from .atf_builder import TraceBuilder, nested_trace

from lanetrace.export import ExportOptions, export_trace

# The line patterns of flamegraph.pl and speedscope's folded importer.
FLAMEGRAPH_LINE = re.compile(r"^(.*)\s+?(\d+(?:\.\d*)?)$")
SPEEDSCOPE_LINE = re.compile(r"^(.*) (\d+)$")


def export(trace_dir, tmp_path, **options):
    out = tmp_path / "run.folded"
    export_trace(trace_dir, "folded", str(out), ExportOptions(**options))
    return out.read_text().splitlines()


def parse(lines):
    weights = {}
    for line in lines:
        m = SPEEDSCOPE_LINE.match(line)
        if m is None:
            continue
        assert m.group(1) not in weights, "each stack appears once"
        weights[m.group(1)] = int(m.group(2))
    return weights


def per_leaf(weights):
    totals = Counter()
    for stack, w in weights.items():
        totals[stack.split(";")[-1]] += w
    return totals


def random_trace(path, seed, flavour="ours"):
    """Random nested calls on three threads; returns the expected stacks with
    their self times and call counts, computed independently of the exporter."""
    rng = random.Random(seed)
    b = TraceBuilder(path, flavour)
    b.start(0)
    self_time, calls = Counter(), Counter()
    names = ["alpha", "beta", "gamma", "delta", "eps"]

    def call(tid, t, stack, depth):
        name = rng.choice(names)
        path_ = stack + [name]
        b.call(tid, t, name)
        start = t
        t += rng.randint(1, 50)
        child_total = 0
        if depth < 5:
            for _ in range(rng.randint(0, 3)):
                child_start = t
                t = call(tid, t, path_, depth + 1)
                child_total += t - child_start
                t += rng.randint(0, 20)
        t += rng.randint(1, 30)
        b.ret(tid, t, name)
        key = ";".join(path_)
        self_time[key] += (t - start) - child_total
        calls[key] += 1
        return t

    for tid in (11, 22, 33):
        t = tid * 7
        for _ in range(20):
            t = call(tid, t, [], 0) + rng.randint(1, 9)
    b.end(10 ** 6)
    b.close()
    return self_time, calls


@pytest.mark.parametrize("flavour", ["ours", "compact", "foreign"])
def test_folded_export__random_nesting__then_self_time_per_stack_exact(tmp_path, flavour):
    self_time, _ = random_trace(tmp_path / "t", seed=7, flavour=flavour)
    weights = parse(export(str(tmp_path / "t"), tmp_path))
    assert weights == {k: v for k, v in self_time.items() if v}


def test_folded_export__weight_calls__then_counts_sum_to_per_function_calls(tmp_path):
    _, calls = random_trace(tmp_path / "t", seed=11)
    weights = parse(export(str(tmp_path / "t"), tmp_path, weight="calls"))
    assert weights == dict(calls)
    expected_per_function = Counter()
    for stack, n in calls.items():
        expected_per_function[stack.split(";")[-1]] += n
    assert per_leaf(weights) == expected_per_function


def test_folded_export__nested_trace__then_leaf_totals_are_function_self_times(tmp_path):
    lines = export(nested_trace(tmp_path / "t"), tmp_path)
    assert per_leaf(parse(lines)) == {"main": 8000 - 2000 - 3000, "parse": 2000 - 500 + 600,
                                      "lex": 500, "eval": 3000, "worker": 4500 - 600}


def test_folded_export__per_thread__then_stacks_rooted_at_their_thread(tmp_path):
    weights = parse(export(nested_trace(tmp_path / "t"), tmp_path, per_thread=True))
    roots = {stack.split(";")[0] for stack in weights}
    assert roots == {"tid 101", "tid 202"}
    assert weights["tid 202;worker;parse"] == 600


def test_folded_export__open_frames_at_end__then_counted_until_trace_end(tmp_path):
    weights = parse(export(nested_trace(tmp_path / "t", open_at_end=True), tmp_path))
    assert weights["worker"] == (10000 - 1500) - 600
    assert weights["main;hang"] == 500


def test_folded_export__windows__then_comment_lines_that_readers_skip(tmp_path):
    windows = [{"startNs": 100, "endNs": 250, "trigger": "crash 42"}]
    lines = export(nested_trace(tmp_path / "t", windows=windows), tmp_path)
    comments = [l for l in lines if l.startswith("#")]
    assert comments == ['# lanetrace persistence window [startNs=100 endNs=250 trigger="crash 42"]']
    for line in comments:
        assert not FLAMEGRAPH_LINE.match(line) and not SPEEDSCOPE_LINE.match(line)
    for line in lines:
        if not line.startswith("#"):
            assert FLAMEGRAPH_LINE.match(line) and SPEEDSCOPE_LINE.match(line)


def test_folded_export__semicolon_in_name__then_frame_kept_whole(tmp_path):
    b = TraceBuilder(tmp_path / "t")
    b.start(0).call(1, 10, "operator;weird").call(1, 12, "leaf").ret(1, 15, "leaf")
    b.ret(1, 20, "operator;weird")
    weights = parse(export(b.close(), tmp_path))
    assert weights == {"operator:weird": 7, "operator:weird;leaf": 3}
