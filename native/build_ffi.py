"""cffi builder for ``lanetrace._native``: the Python services' view of the
shared memory (injector, drainers) and the writer's native encoder.

Each C module brings its declarations in ``native/ffi/<module>.cdef``. The
sources are listed by name."""
import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(HERE, "include")

ffibuilder = FFI()
cdefs = sorted(glob.glob(os.path.join(HERE, "ffi", "*.cdef")))
ffibuilder.cdef("\n".join(open(p).read() for p in cdefs))

headers = sorted(glob.glob(os.path.join(INCLUDE, "lanetrace", "*.h")))
# agent/lanes.c, the producer side, too: tests drive it, and the injector adds
# time marks with it
SOURCES = ["src/shm.c", "src/drain.c", "src/detail.c", "src/encode.c", "src/qindex.c",
           "src/hookscan.c", "src/tsc.c", "agent/lanes.c"]
sources = [os.path.join(HERE, p) for p in SOURCES]
prelude = "\n".join(f'#include "lanetrace/{os.path.basename(h)}"' for h in headers)
ffibuilder.set_source(
    "lanetrace._native",
    prelude,
    sources=[os.path.relpath(p, os.path.dirname(HERE)) for p in sources],
    include_dirs=[os.path.relpath(INCLUDE, os.path.dirname(HERE))],
    extra_compile_args=["-std=gnu11", "-O2", "-g", "-Wall", "-Wno-unused-function"],
    libraries=["rt", "dl"],
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
