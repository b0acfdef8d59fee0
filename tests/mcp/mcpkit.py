"""Trace roots for the MCP tests: real captures of the example programs, and a
synthetic 1 M-event trace, each built once per test run and shared by the
xdist workers through a lock. (No conftest.py and no __init__.py here: this
directory's package name would be ``mcp``, the SDK's.)"""
import fcntl
import importlib.util
import os
import shutil

import orjson
from conftest import example, run_lanetrace


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BIG_EVENTS = 1_000_000
BIG_ID = "synthetic/pid_1"


def bench_query():
    """bench/query.py by path (its name would clash with tests/query)."""
    spec = importlib.util.spec_from_file_location(
        "lanetrace_bench_query", os.path.join(REPO, "bench", "query.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def capture(root, name, *args, triggers=(), expect=None):
    """``lanetrace run`` of an example program; its trace id under ``root``."""
    before = set(_trace_ids(root))
    env = {"LANETRACE_EXPECT": expect} if expect else None
    cmd = ["run", "-o", root, *[x for t in triggers for x in ("-t", t)], "--", example(name), *args]
    proc = run_lanetrace(cmd, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    new = sorted(set(_trace_ids(root)) - before)
    assert len(new) == 1, new
    return new[0]


def _trace_ids(root):
    if not os.path.isdir(root):
        return []
    return [f"{s}/{p}" for s in os.listdir(root) if os.path.isdir(os.path.join(root, s))
            for p in os.listdir(os.path.join(root, s)) if p.startswith("pid_")]


def shared(tmp_path_factory, name, build):
    """``build(dir)`` once for all workers of this test run; the directory."""
    base = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        base = base.parent  # common to the workers
    d = base / name
    d.mkdir(exist_ok=True)
    with open(d / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (d / "done").exists():
            shutil.rmtree(d / "traces", ignore_errors=True)
            build(str(d))
            (d / "done").touch()
    return str(d)


def build_examples(d):
    """tickboom with a flight-recorder window, branchy good and bad."""
    root = os.path.join(d, "traces")
    expect = os.path.join(d, "tickboom.json")
    ids = {"tickboom": capture(root, "tickboom", "1", "0.6", triggers=["symbol=boom"],
                               expect=expect),
           "good": capture(root, "branchy", "good"),
           "bad": capture(root, "branchy", "bad")}
    with open(os.path.join(d, "ids.json"), "wb") as f:
        f.write(orjson.dumps(ids))


def examples_root(tmp_path_factory):
    d = shared(tmp_path_factory, "mcp-examples", build_examples)
    with open(os.path.join(d, "ids.json"), "rb") as f:
        ids = orjson.loads(f.read())
    with open(os.path.join(d, "tickboom.json"), "rb") as f:
        ids["tickboom_expect"] = orjson.loads(f.read())
    return os.path.join(d, "traces"), ids


def big_root(tmp_path_factory):
    d = shared(tmp_path_factory, "mcp-big-1m",
               lambda d: bench_query().build_trace(os.path.join(d, "traces", BIG_ID), BIG_EVENTS))
    return os.path.join(d, "traces")
