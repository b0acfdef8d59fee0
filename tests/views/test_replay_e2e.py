"""``lanetrace replay`` and ``graph`` on real traces of the example programs:
the tree has the programs' known call structure (examples/src/workers.c,
add.c), with arguments and return values from the flight recorder."""
import os

import orjson
import pytest

from conftest import example, run_lanetrace
from e2e.tracecheck import load_expectation, single_trace_dir

pytestmark = pytest.mark.frida

ITERS = 20


def _fib_calls(n):
    return 1 if n < 2 else 1 + _fib_calls(n - 1) + _fib_calls(n - 2)


def _tree(lines):
    """Nested {name, args, ret, children} from calltree lines of one thread."""
    root = {"children": []}
    stack = [root]
    for ln in lines:
        if ln["type"] == "signal":
            continue
        node = {"name": ln["functionName"], "args": ln.get("args"),
                "ret": ln.get("returnValue"), "depth": ln["depth"], "children": []}
        if ln["type"] == "exit":
            done = stack.pop()
            assert done["name"] == ln["functionName"] and done["depth"] == ln["depth"]
            assert ln["end"] == "returned"
            done["ret"] = ln.get("returnValue")
            continue
        assert ln["depth"] == len(stack) - 1
        stack[-1]["children"].append(node)
        if ln["type"] == "entry":
            stack.append(node)
    assert stack == [root]
    return root["children"]


def _depth(node):
    return 1 + max((_depth(c) for c in node["children"] if c["name"] == "fib"), default=0)


def _count(node, name):
    return (node["name"] == name) + sum(_count(c, name) for c in node["children"])


@pytest.fixture(scope="module")
def workers_trace(tmp_path_factory):
    out = tmp_path_factory.mktemp("wk") / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "--full", "-I", "workers",
                          "-i", "libworkutil.so!lib_*", "-i", "libplugin.so!plugin_*", "--",
                          example("workers"), "1", str(ITERS)])
    assert proc.returncode == 0, proc.stderr
    return single_trace_dir(str(out))


def _replay_json(trace_dir, *extra):
    proc = run_lanetrace(["replay", trace_dir, "--json", *extra])
    assert proc.returncode == 0, proc.stderr
    return [orjson.loads(x) for x in proc.stdout.splitlines()]


def test_replay__workers__then_pipeline_recursion_and_library_nesting_as_in_the_source(workers_trace):
    everything = _replay_json(workers_trace)
    worker = next(ln["threadId"] for ln in everything if ln.get("functionName") == "worker_main")
    (wm,) = _tree(_replay_json(workers_trace, "--thread", str(worker)))
    assert wm["name"] == "worker_main"
    records = wm["children"]
    assert [r["name"] for r in records] == ["process_record"] * ITERS
    for i, rec in enumerate(records):
        assert rec["args"] == {"arg0": 0, "arg1": i}  # process_record(worker, i): 2 params
        names = [c["name"] for c in rec["children"]]
        check = "reject_record" if i % 7 == 3 else "checksum"
        assert names[:5] == ["parse_record", "validate", check, "lib_scale", "plugin_transform"]
        scale = rec["children"][3]
        assert scale["args"]["arg1"] == 1 and len(scale["args"]) == 2  # lib_scale(v, worker + 1)
        plugin = rec["children"][4]
        # the dlopen'ed plugin calls lib_scale(value, 3) again for odd inputs
        if scale["ret"] % 2:
            assert [(c["name"], c["args"]["arg1"]) for c in plugin["children"]] == [("lib_scale", 3)]
        else:
            assert plugin["children"] == []
        assert rec["children"][0]["ret"] is None  # parse_record is void
        if i % 16 == 0:
            (fib,) = rec["children"][5:]
            n = 6 + i % 7
            assert fib["args"] == {"arg0": n}
            assert _depth(fib) == n  # fib(n) > fib(n-1) > ... > fib(1)
            assert _count(fib, "fib") == _fib_calls(n)
        else:
            assert len(rec["children"]) == 5


def test_replay__workers_text__then_braces_balance_and_close_at_their_indent(workers_trace):
    proc = run_lanetrace(["replay", workers_trace, "--interleave"])
    assert proc.returncode == 0, proc.stderr
    open_at = []
    lines = proc.stdout.splitlines()[1:]
    for ln in lines:
        call = ln.split("| ", 1)[1]
        indent = len(call) - len(call.lstrip(" "))
        if call.endswith("{"):
            open_at.append(indent)
        elif call.lstrip().startswith("}"):
            assert open_at.pop() == indent, ln
    assert open_at == [] and len(lines) > 10 * ITERS


def test_graph__workers__then_fib_folded_and_totals_equal_functions_list(workers_trace):
    proc = run_lanetrace(["graph", workers_trace, "--json"])
    assert proc.returncode == 0, proc.stderr
    graph = orjson.loads(proc.stdout)

    def walk(nodes, path=()):
        for n in nodes:
            yield path, n
            yield from walk(n["children"], path + (n["functionName"],))

    fib_paths = [p for p, n in walk(graph["roots"]) if n["functionName"] == "fib"]
    assert fib_paths == [("worker_main", "process_record")]  # recursion folded into one node
    sums = {}
    for _, n in walk(graph["roots"]):
        s = sums.setdefault(n["functionName"], [0, 0])
        s[0] += n["calls"]
        s[1] += n["totalTimeNs"]
    proc = run_lanetrace(["query", "functions", os.path.basename(workers_trace), "--json",
                          "--top", "100", "--trace-root", os.path.dirname(workers_trace)])
    assert proc.returncode == 0, proc.stderr
    functions = orjson.loads(proc.stdout)["functions"]
    assert {f["functionName"]: [f["calls"], f["totalTimeNs"]] for f in functions} == sums


def test_replay__add_flight_recorder__then_arguments_and_results_as_the_program_saw_them(tmp_path):
    expect_path = tmp_path / "expect.json"
    out = tmp_path / "traces"
    proc = run_lanetrace(["run", "-o", str(out), "--full", "--", example("add")],
                         env={"LANETRACE_EXPECT": str(expect_path)})
    assert proc.returncode == 0, proc.stderr
    want = load_expectation(str(expect_path))["add_calls"]
    proc = run_lanetrace(["replay", single_trace_dir(str(out)), "--function", "add"])
    assert proc.returncode == 0, proc.stderr
    calls = [ln.split("| ", 1)[1] for ln in proc.stdout.splitlines()[1:]]
    assert calls == [f"add(arg0={c['a']}, arg1={c['b']}) = {c['ret']};" for c in want]
