"""Fixtures for the native layer: compile small C programs into tmp dirs,
create segments with unique names and always unlink them."""
import os
import subprocess
import uuid

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
INCLUDE = os.path.join(REPO, "native", "include")
# the segment mapping and the producer side, as the agent library links them
SHM_SOURCES = [os.path.join(REPO, "native", "src", "shm.c"),
               os.path.join(REPO, "native", "agent", "lanes.c")]


def compile_c(out_dir, name, sources, flags=(), libs=("-pthread", "-lrt")):
    out = os.path.join(str(out_dir), name)
    cmd = ["gcc", "-std=gnu11", "-O2", "-g", "-Wall", "-I", INCLUDE, *flags, "-o", out,
           *sources, *libs]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.fail(f"compiling {name} failed:\n{' '.join(cmd)}\n{proc.stderr}")
    return out


@pytest.fixture(scope="session")
def producer_bin(tmp_path_factory):
    d = tmp_path_factory.mktemp("producer")
    return compile_c(d, "producer", [os.path.join(HERE, "producer.c"), *SHM_SOURCES])


@pytest.fixture
def session_id():
    return "t" + uuid.uuid4().hex[:12]


@pytest.fixture
def segments():
    """Factory creating segments that are closed and unlinked after the test."""
    from lanetrace.core.shm import TargetSegment
    made = []

    def make(session, pid=None, **kw):
        seg = TargetSegment.create(session, pid or os.getpid(), **kw)
        made.append(seg)
        return seg

    yield make
    for seg in made:
        try:
            seg.unlink()
        finally:
            seg.close()


@pytest.fixture(scope="session")
def target_bin(tmp_path_factory):
    """The traced test program. -fno-optimize-sibling-calls keeps call counts
    independent of the compiler; tail_caller forces one sibling call."""
    d = tmp_path_factory.mktemp("target")
    return compile_c(d, "target", [os.path.join(HERE, "target.c")],
                     flags=("-fno-optimize-sibling-calls",), libs=("-pthread", "-ldl"))


@pytest.fixture(scope="session")
def plugin_lib(tmp_path_factory):
    d = tmp_path_factory.mktemp("plugin")
    return compile_c(d, "libltplugin.so", [os.path.join(HERE, "plugin.c")],
                     flags=("-shared", "-fPIC"), libs=())
