"""cffi builder for ``lanetrace._native``: the Python services' view of the
shared memory (injector, drainers) and the writer's native encoder.

Each C module brings its declarations in ``native/ffi/<module>.cdef``; every
``native/src/*.c`` that is not part of the in-target agent is compiled in."""
import glob
import os

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
INCLUDE = os.path.join(HERE, "include")

ffibuilder = FFI()
cdefs = sorted(glob.glob(os.path.join(HERE, "ffi", "*.cdef")))
ffibuilder.cdef("\n".join(open(p).read() for p in cdefs) or "int lt_native_placeholder(void);")

headers = sorted(glob.glob(os.path.join(INCLUDE, "lanetrace", "*.h")))
sources = [p for p in sorted(glob.glob(os.path.join(HERE, "src", "*.c")))
           if not os.path.basename(p).startswith("agent")]
prelude = "\n".join(f'#include "lanetrace/{os.path.basename(h)}"' for h in headers)
if not cdefs:
    prelude += "\nint lt_native_placeholder(void) { return 0; }\n"
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
