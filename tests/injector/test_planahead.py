"""The plan the injector computes from the modules' ELF files (planahead.py)
is the agent's own plan: the same functions, names, addresses, sizes,
skipped functions with their reasons and C++ exception roles, and the
agent's plan() with it numbers the functions as without it. IFUNCs are
resolved by the agent's init(). What it cannot plan (a deleted file) is left
to the agent, with the reason."""
import contextlib
import os
import shutil
import subprocess
import time
import uuid

import frida
import pytest

from conftest import example
from lanetrace.core.selection import Selection
from lanetrace.core.shm import TargetSegment
from lanetrace.injector import planahead as pa
from lanetrace.injector.attachguard import ParkedMainThread
from lanetrace.injector.threadstop import thread_ids
from native.harness import AGENT_JS, AGENT_LIB

pytestmark = pytest.mark.frida

PYTHON = "/usr/bin/python3.11"
LOOP = "import ssl, sqlite3, time\nprint('ready', flush=True)\ntime.sleep(600)"
ROUNDS = "100000000"  # the distro examples run this long; they are killed before


@pytest.fixture(scope="module")
def rules():
    with open(AGENT_JS) as f:
        return pa.AgentRules.from_agent_source(f.read())


@contextlib.contextmanager
def running(argv, mapped):
    """A process that runs until the end of the block, once `mapped` (a
    file name) is in its memory map."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            with open(f"/proc/{proc.pid}/maps") as f:
                if mapped in f.read():
                    break
            assert time.monotonic() < deadline and proc.poll() is None, f"{argv[0]} never mapped {mapped}"
            time.sleep(0.02)
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


def agent_plan(pid, selection, ahead=None, use_ahead=False):
    """agent.js plan() in pid, with the injector's plan or without; its
    init() resolves the IFUNCs of `ahead` (a ProcessPlan), which it finishes."""
    seg = TargetSegment.create("t" + uuid.uuid4().hex[:12], pid, slots=8, shards=1,
                               ring_bytes=65536, rings_per_lane=2)
    session = None
    try:
        with ParkedMainThread(pid):  # as the injector does: the program may hold the loader's lock
            session = frida.attach(pid)
        with open(AGENT_JS) as f:
            script = session.create_script(f.read())
        script.load()
        api = script.exports_sync
        init = api.init({"shmName": seg.name, "agentLibPath": AGENT_LIB,
                         "programThreads": thread_ids(pid),
                         "resolve": ahead.resolve_requests() if ahead is not None else []})
        if ahead is not None:
            ahead.finish(init["resolved"])
        request = Selection.from_agent(selection).to_agent()
        if use_ahead:
            request["given"] = ahead.given()
        plan = api.plan(request)
        api.detach()
        return plan
    finally:
        if session is not None:
            session.detach()
        seg.unlink()
        seg.close()


def ahead_and_agent(pid, selection, rules):
    ahead = pa.plan_process(pid, Selection.from_agent(selection), rules, AGENT_LIB)
    return ahead, agent_plan(pid, selection, ahead)


def assert_same_as_agent(module: pa.ModulePlan, plan: dict):
    """One module planned ahead against the agent's plan of it."""
    mine = [f for f in plan["functions"] if f["module"] == module.name]
    assert [{k: f[k] for k in ("name", "address", "size", "ifunc") if k in f}
            for f in mine if not f.get("role")] == module.functions, module.name
    assert [{k: f[k] for k in ("name", "address", "size", "role")} for f in mine if f.get("role")] \
        == module.roles, module.name
    assert [s for s in plan["skipped"] if s["name"].startswith(module.name + "!")] \
        == module.skipped, module.name
    described = [m for m in plan["modules"] if m["name"] == module.name]
    if described:
        assert {int(s, 16) for s in described[0]["starts"]} == set(module.starts), module.name
        assert described[0]["size"] == module.size


def test_plan_ahead__python_default_selection__then_the_agents_plan_of_the_executable(rules):
    with running([PYTHON, "-c", LOOP], "libsqlite3") as pid:
        ahead, plan = ahead_and_agent(pid, {}, rules)
    exe = [m for m in ahead.modules.values() if m.name == "python3.11"]
    assert len(exe) == 1 and len(exe[0].functions) > 1000
    assert_same_as_agent(exe[0], plan)


SHARED_LIBS = {"includeModules": ["libcrypto*", "libsqlite3*"],
               "include": ["libc.so*!memcpy", "strlen"], "exclude": ["*EVP_MD*"]}


def test_plan_ahead__libcrypto_libsqlite3_and_libc_ifuncs__then_the_agents_plan_with_the_loaders_ifuncs(rules):
    with running([PYTHON, "-c", LOOP], "libsqlite3") as pid:
        ahead, plan = ahead_and_agent(pid, SHARED_LIBS, rules)
    names = {m.name: m for m in ahead.modules.values()}
    assert len(names["libcrypto.so.3"].functions) > 4000
    assert len(names["libsqlite3.so.0.8.6"].functions) > 1000
    assert any(s["reason"] == "excluded by -x *EVP_MD*" for s in names["libcrypto.so.3"].skipped)
    for module in names.values():  # a bare -i strlen takes every module in: all planned, none selected
        assert_same_as_agent(module, plan)
    assert ahead.left_to_agent == {}
    ifuncs = {f["name"] for f in names["libc.so.6"].functions if f.get("ifunc")}
    assert {"memcpy", "strlen"} <= ifuncs


def test_plan_ahead__cold_clones__then_the_agents_plan(rules):
    with running([example("distro_clones"), ROUNDS], "libc.so") as pid:
        ahead, plan = ahead_and_agent(pid, {}, rules)
    (exe,) = [m for m in ahead.modules.values() if m.name == "distro_clones"]
    assert any(f["name"].endswith(".cold") for f in exe.functions)
    assert_same_as_agent(exe, plan)


def test_plan_ahead__cxx_program_with_libstdcxx__then_the_agents_plan_and_exception_roles(rules):
    selection = {"includeModules": ["distro_throw", "libstdc++*"]}
    with running([example("distro_throw"), ROUNDS], "libstdc++") as pid:
        ahead, plan = ahead_and_agent(pid, selection, rules)
    names = {m.name: m for m in ahead.modules.values()}
    assert len(names) == 2 and "distro_throw" in names
    libstdcxx = next(m for n, m in names.items() if n.startswith("libstdc++"))
    assert {r["name"]: r["role"] for r in libstdcxx.roles} == {
        "__cxa_throw": 1, "__cxa_rethrow": 1, "__cxa_begin_catch": 2}
    for module in names.values():
        assert_same_as_agent(module, plan)


def _normalized(plan):
    """A plan with addresses as module offsets: two processes of one program compare equal."""
    bases = {m["name"]: int(m["base"], 16) for m in plan["modules"]}
    return ([(f["id"], f["module"], f["name"], int(f["address"], 16) - bases[f["module"]], f["size"],
              f.get("role"), f.get("ifunc")) for f in plan["functions"]],
            plan["skipped"], [(m["name"], m["size"], m["slotCount"]) for m in plan["modules"]])


def test_agent_plan__given_the_injectors_plan__then_the_same_plan_numbered_alike(rules):
    plans = []
    for use_ahead in (False, True):
        with running([PYTHON, "-c", LOOP], "libsqlite3") as pid:
            ahead = pa.plan_process(pid, Selection.from_agent(SHARED_LIBS), rules, AGENT_LIB)
            plans.append(agent_plan(pid, SHARED_LIBS, ahead, use_ahead))
    assert plans[0]["plannedAhead"] == []
    assert {"libcrypto.so.3", "libsqlite3.so.0.8.6", "libc.so.6"} <= set(plans[1]["plannedAhead"])
    assert _normalized(plans[0]) == _normalized(plans[1])
    given_modules = [m for m in plans[1]["modules"] if m["name"] in plans[1]["plannedAhead"]]
    assert given_modules and all(m["starts"] is None for m in given_modules)


def test_plan_ahead__deleted_executable__then_left_to_the_agent_which_plans_it(rules, tmp_path):
    copy = tmp_path / "distro_clones"
    shutil.copy(example("distro_clones"), copy)
    with running([str(copy), ROUNDS], "libc.so") as pid:
        copy.unlink()
        ahead = pa.plan_process(pid, Selection(), rules, AGENT_LIB)
        plan = agent_plan(pid, {}, ahead, use_ahead=True)
    assert ahead.modules == {} or all(m.name != "distro_clones" for m in ahead.modules.values())
    assert any("deleted" in why for p, why in ahead.left_to_agent.items() if "distro_clones" in p)
    # the agent planned it as it does without the injector (Frida reads the
    # symbols from the file too: a deleted executable has none to hook)
    assert plan["plannedAhead"] == []


def test_read_elf__file_without_build_id__then_not_plannable(tmp_path):
    stripped = tmp_path / "no_build_id"
    subprocess.run(["objcopy", "--remove-section", ".note.gnu.build-id", example("distro_clones"),
                    str(stripped)], check=True)
    with pytest.raises(pa.NotPlannable, match="no build-id"):
        pa.read_elf(str(stripped))


def test_read_elf__build_id__then_the_one_readelf_shows():
    out = subprocess.run(["readelf", "-n", PYTHON], capture_output=True, text=True, check=True).stdout
    shown = next(line.split()[-1] for line in out.splitlines() if "Build ID" in line)
    assert pa.read_elf(PYTHON).build_id.hex() == shown
