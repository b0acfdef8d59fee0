"""Running a program once untraced and once under ``lanetrace run`` and
reading what changed: output, exit status, balance of calls and returns, the
hook report of ``trace.json``."""
from __future__ import annotations

import fcntl
import json
import os
import subprocess
from collections import Counter

from conftest import run_lanetrace
from e2e.tracecheck import Trace, single_trace_dir

# Big rings: the corpus checks exact counts, so a drop on a busy machine
# would be a false failure (drops are still asserted to be zero).
CAPTURE_OPTIONS = ["--ring-kb", "1024", "--rings-per-lane", "16"]

SKIP_REASONS = {"too-short", "branch-into-patch", "unrelocatable", "shared-code", "cold-part",
                "unknown-size", "excluded", "builtin-exclude", "no-memory-near"}


def shared_dir(tmp_path_factory, key: str) -> str:
    """A directory every xdist worker of this session sees under one name, so
    an expensive run is made once and read by all the tests that need it."""
    root = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        root = root.parent
    path = os.path.join(str(root), "fidelity", key)
    os.makedirs(path, exist_ok=True)
    return path


def once(directory: str, produce) -> dict:
    """produce(directory) -> JSON-able dict, run at most once per session
    across workers; later callers read what the first one stored."""
    result_path = os.path.join(directory, "result.json")
    with open(os.path.join(directory, ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not os.path.exists(result_path):
            result = produce(directory)
            with open(result_path + ".tmp", "w") as f:
                json.dump(result, f)
            os.rename(result_path + ".tmp", result_path)
    with open(result_path) as f:
        return json.load(f)


def run_pair(directory: str, argv: list[str], selection: list[str], *, cwd: str,
             env: dict | None = None) -> dict:
    """The program untraced, then traced as a user runs it."""
    untraced = subprocess.run(argv, capture_output=True, cwd=cwd, timeout=120,
                              stdin=subprocess.DEVNULL, env=dict(os.environ, **(env or {})))
    out = os.path.join(directory, "traces")
    traced = run_lanetrace(["run", "-o", out, *CAPTURE_OPTIONS, *selection, "--", *argv],
                           timeout=240, cwd=cwd, env=env, text=False)
    return {"argv": argv,
            "untraced": {"returncode": untraced.returncode,
                         "stdout": untraced.stdout.decode("latin-1")},
            "traced": {"returncode": traced.returncode,
                       "stdout": traced.stdout.decode("latin-1"),
                       "stderr": traced.stderr.decode(errors="replace")},
            "traceRoot": out}


def describe_difference(pair: dict) -> list[str]:
    """What tracing changed in the program's behaviour, empty if nothing."""
    problems = []
    u, t = pair["untraced"], pair["traced"]
    if t["returncode"] != u["returncode"]:
        problems.append(f"exit status {t['returncode']} traced, {u['returncode']} untraced")
    if t["stdout"] != u["stdout"]:
        problems.append(f"stdout differs: traced {t['stdout'][:300]!r}, "
                        f"untraced {u['stdout'][:300]!r}")
    if problems:
        problems.append("lanetrace stderr tail: " + t["stderr"][-1500:])
    return problems


def load_trace(pair: dict) -> Trace:
    return Trace(single_trace_dir(pair["traceRoot"]))


def unbalanced(trace: Trace) -> list[str]:
    """Every (thread, function): ENTRY == RETURN (returns of frames left by
    longjmp or an exception are RETURN events flagged unwound, so included)."""
    problems = []
    for key in sorted(set(trace.entries) | set(trace.returns)):
        if trace.entries[key] != trace.returns[key]:
            problems.append(f"tid {key[0]} {key[1]}: {trace.entries[key]} entries, "
                            f"{trace.returns[key]} returns")
    return problems


def lost_records(trace: Trace) -> list[str]:
    m = trace.manifest
    problems = [f"drops {k}={v}" for k, v in m.get("drops", {}).items() if v]
    if m.get("seqGaps"):
        problems.append(f"seqGaps={m['seqGaps']}")
    if not m.get("complete"):
        problems.append("trace not complete")
    return problems


def calls_by_function(trace: Trace) -> Counter:
    """Function name -> entries over all threads."""
    total: Counter = Counter()
    for (_tid, name), n in trace.entries.items():
        total[name] += n
    return total


def hook_report_problems(manifest: dict) -> list[str]:
    """The trace.json "hooks" object is complete and adds up:
    {"fast": int, "fallback": int, "skipped": int,
     "skippedByReason": {reason: count}, "fallbackByReason": {reason: count},
     "skippedFunctions": [{"name": "module!function", "reason": reason}]}
    with skip reasons among SKIP_REASONS."""
    hooks = manifest.get("hooks")
    if not isinstance(hooks, dict):
        return [f"trace.json has no \"hooks\" object (keys: {sorted(manifest)})"]
    problems = []
    for key in ("fast", "fallback", "skipped"):
        if not isinstance(hooks.get(key), int):
            problems.append(f"hooks.{key} missing or not an int: {hooks.get(key)!r}")
    for key in ("skippedByReason", "fallbackByReason"):
        if not isinstance(hooks.get(key), dict):
            problems.append(f"hooks.{key} missing or not an object")
    if not isinstance(hooks.get("skippedFunctions"), list):
        problems.append("hooks.skippedFunctions missing or not a list")
    if problems:
        return problems
    unknown = set(hooks["skippedByReason"]) - SKIP_REASONS
    if unknown:
        problems.append(f"unknown skip reasons {sorted(unknown)}")
    if sum(hooks["skippedByReason"].values()) != hooks["skipped"]:
        problems.append(f"skippedByReason sums to {sum(hooks['skippedByReason'].values())}, "
                        f"skipped is {hooks['skipped']}")
    if sum(hooks["fallbackByReason"].values()) != hooks["fallback"]:
        problems.append(f"fallbackByReason sums to {sum(hooks['fallbackByReason'].values())}, "
                        f"fallback is {hooks['fallback']}")
    if len(hooks["skippedFunctions"]) != hooks["skipped"]:
        problems.append(f"{len(hooks['skippedFunctions'])} skippedFunctions listed, "
                        f"skipped is {hooks['skipped']}")
    by_reason = Counter(s.get("reason") for s in hooks["skippedFunctions"])
    if by_reason != Counter({k: v for k, v in hooks["skippedByReason"].items() if v}):
        problems.append(f"skippedFunctions reasons {dict(by_reason)} != skippedByReason")
    for s in hooks["skippedFunctions"]:
        if "!" not in str(s.get("name", "")):
            problems.append(f"skipped function name not module!function: {s!r}")
    if hooks["fast"] + hooks["fallback"] <= 0:
        problems.append("no function hooked at all")
    return problems


def skipped_functions(manifest: dict) -> dict[str, str]:
    """function name (without module) -> reason."""
    hooks = manifest.get("hooks") or {}
    return {s["name"].split("!", 1)[1]: s["reason"] for s in hooks.get("skippedFunctions", [])}


def compare_with_callgrind(traced: Counter, offsets: dict[str, int], truth: dict[int, int],
                           skipped: dict[str, str], not_required=frozenset()) -> list[str]:
    """traced: name -> entries; offsets: name -> offset in the module file;
    truth: offset -> entries callgrind counted. Names are compared by address,
    so aliases of one function are one function. Every traced function must
    have callgrind's count, and every function callgrind saw entered must be
    traced or reported skipped (except names in not_required: code that may
    run before the hooks are in)."""
    names_at: dict[int, list[str]] = {}
    for name, offset in offsets.items():
        names_at.setdefault(offset, []).append(name)
    problems = []
    traced_at: Counter = Counter()
    for name, n in traced.items():
        if name not in offsets:
            problems.append(f"{name}: traced {n}, not a function of the module")
            continue
        traced_at[offsets[name]] += n
    for offset, n in sorted(traced_at.items()):
        if n != truth.get(offset, 0):
            problems.append(f"{'/'.join(sorted(names_at[offset]))}: traced {n}, "
                            f"callgrind {truth.get(offset, 0)}")
    for offset, n in sorted(truth.items()):
        names = names_at.get(offset, [])
        if (n and offset not in traced_at and not any(name in skipped for name in names)
                and not set(names) & not_required):
            problems.append(f"{'/'.join(sorted(names))}: callgrind {n}, "
                            "not traced and not reported skipped")
    return problems
