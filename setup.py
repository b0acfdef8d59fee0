"""Build glue: the cffi extension (``lanetrace._native``) and the native agent
library (``lanetrace/liblanetrace_agent.so``) come from the same ``native/``
sources, so ``pip install`` is the only build step a user ever runs."""
import os
import shutil
import subprocess
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


# Everything that runs inside the target (native/agent/README.md), listed by
# name: a file outside this list never ends up in a traced process.
AGENT_SOURCES = [
    "native/agent/agent.c",
    "native/agent/install.c",
    "native/agent/tramp_x86_64.S",
    "native/agent/lanes.c",
    "native/src/shm.c",  # maps the segment once, at load; not on the record path
]
# The Frida scripts the injector loads, installed next to the library.
AGENT_SCRIPTS = ["native/agent/agent.js", "native/agent/lifecycle.js", "native/agent/glue.c"]


# The agent runs inside foreign processes on their hooked functions' stacks:
# -mgeneral-regs-only keeps our code off the SSE/AVX registers, so the
# trampolines need not save the FPU state that Frida's generic thunk pays
# 86 ns for; no loop may be turned into a libc memcpy call for the same reason.
AGENT_CFLAGS = [
    "-std=gnu11", "-O2", "-g", "-fPIC", "-shared", "-pthread",
    "-mgeneral-regs-only", "-fno-tree-loop-distribute-patterns",
    "-fvisibility=hidden", "-fno-strict-aliasing", "-Wall", "-Wextra",
    "-Wno-unused-parameter",
]


class BuildExtWithAgent(build_ext):
    def run(self):
        super().run()
        self.build_agent()

    def build_agent(self):
        sources = [os.path.join(HERE, p) for p in AGENT_SOURCES]
        if self.inplace:
            out_dir = os.path.join(HERE, "services", "lanetrace")
        else:
            out_dir = os.path.join(self.build_lib, "lanetrace")
        os.makedirs(out_dir, exist_ok=True)
        out = os.path.join(out_dir, "liblanetrace_agent.so")
        cc = os.environ.get("CC") or sysconfig.get_config_var("CC").split()[0] or "gcc"
        cmd = [cc, *AGENT_CFLAGS, "-I", os.path.join(HERE, "native", "include"),
               "-o", out, *sources, "-lrt"]
        print(" ".join(cmd))
        subprocess.check_call(cmd)
        scripts_dir = os.path.join(out_dir, "agent")
        os.makedirs(scripts_dir, exist_ok=True)
        for path in AGENT_SCRIPTS:
            shutil.copyfile(os.path.join(HERE, path),
                            os.path.join(scripts_dir, os.path.basename(path)))


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithAgent},
)
