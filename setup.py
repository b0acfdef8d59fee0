"""Build glue: the cffi extension (``lanetrace._native``) and the native agent
library (``lanetrace/liblanetrace_agent.so``) come from the same ``native/``
sources, so ``pip install`` is the only build step a user ever runs."""
import glob
import os
import subprocess
import sysconfig

from setuptools import setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))


def agent_sources():
    src = os.path.join(HERE, "native", "src")
    files = sorted(glob.glob(os.path.join(src, "agent*.c")))
    files += sorted(glob.glob(os.path.join(src, "*_x86_64.S")))
    shm = os.path.join(src, "shm.c")
    if os.path.exists(shm):
        files.append(shm)
    return files


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
        sources = agent_sources()
        if not any(s.endswith(".c") and "agent" in os.path.basename(s) for s in sources):
            return  # agent sources not written yet
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


setup(
    cffi_modules=["native/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildExtWithAgent},
)
