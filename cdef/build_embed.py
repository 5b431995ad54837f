"""Build libectls_python.so, the C API of include/ectls_python.h.

It is a cffi embedding library: cffi compiles the C half (cdef/embed.c)
and the extern "Python" entry points that ectls/_embedding.py implements
into one shared object, which C programs link against.  The library is
linked against libectls.so and finds it beside itself through an rpath
of $ORIGIN, so it joins the same provider list as the ectls package.
It is not linked against libpython: a C program links libpython itself
(``python -m ectls config --embed-libs``), and in a Python process the
interpreter's symbols are already loaded, so no second libpython can
enter the process.

setup.py builds it into the package beside libectls.so; build.sh, or
``python cdef/build_embed.py OUTPUT_DIR``, into a directory of its own.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path
from typing import Optional

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "include"
CDEF = ROOT / "cdef"
# setup.py and build.sh compile libectls.so here first.
LIBRARY_DIR = ROOT / "build" / "libectls"

EMBEDDING_LIBRARY = "libectls_python.so"
# The name the library's cffi module has in sys.modules.
MODULE_NAME = "ectls._ectls_python_cffi"

# Implemented in Python by ectls/_embedding.py.  Each returns its status
# plus one (see cdef/embed.c).
ENTRY_POINTS = """
int ectls_python_impl_register(const char *spec, int first, long long *id);
int ectls_python_impl_unregister(long long id);
"""

# Functions of cdef/embed.c that the Python half calls.
HELPERS = """
void ectls_python_set_error(const char *message);
void ectls_python_set_exiting(void);
"""

# Runs once, when cffi_start_python() is first called in cdef/embed.c;
# by then embed.c has imported the ectls package.
INIT_CODE = """
from ectls._ectls_python_cffi import ffi, lib
from ectls import _embedding
_embedding.attach(ffi, lib)
"""

# Only the functions of ectls_python.h, the entry points and the module's
# init function leave the library.  The library finds libectls.so beside
# itself; nodelete keeps it mapped, as the interpreter points into it.
CFLAGS = ["-std=gnu11", "-O2", "-g", "-fPIC", "-fvisibility=hidden", "-Wall"]
LDFLAGS = [
    "-shared",
    "-Wl,-z,nodelete",
    f"-Wl,-soname,{EMBEDDING_LIBRARY}",
    "-Wl,-rpath,$ORIGIN",
]
LIBS = ["-ldl", "-lpthread"]

# The entry points, as embed.c calls them before cffi defines them.
PROTOTYPES = """
int ectls_python_impl_register(const char *spec, int first, long long *id);
int ectls_python_impl_unregister(long long id);
"""


def make_ffi() -> FFI:
    """Return the FFI builder of libectls_python.so."""
    ffi = FFI()
    ffi.embedding_api(ENTRY_POINTS)
    ffi.cdef(HELPERS)
    ffi.embedding_init_code(INIT_CODE)
    ffi.set_source(MODULE_NAME, PROTOTYPES + '#include "embed.c"\n')
    return ffi


def build_embedding_library(
    output_dir: Path,
    library_dir: Path = LIBRARY_DIR,
    temp_dir: Optional[Path] = None,
) -> Path:
    """Compile libectls_python.so into output_dir, linked against the
    libectls.so in library_dir, and return its path.

    cffi writes the C source to temp_dir, or to a temporary directory that
    is removed afterwards.  The compiler is called here and not through
    ffi.compile(), because that would link libpython (see the module
    docstring).
    """
    compiler = shlex.split(os.environ.get("CC", "cc"))
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / EMBEDDING_LIBRARY
    python_includes = dict.fromkeys(
        sysconfig.get_paths()[name] for name in ("include", "platinclude")
    )
    with tempfile.TemporaryDirectory() as scratch:
        work_dir = temp_dir if temp_dir is not None else Path(scratch)
        work_dir.mkdir(parents=True, exist_ok=True)
        source = work_dir / "_ectls_python_cffi.c"
        # cffi prints "generating FILE" to stdout; keep stdout for the result.
        with contextlib.redirect_stdout(sys.stderr):
            make_ffi().emit_c_code(str(source))
        command = [
            *compiler,
            *CFLAGS,
            *(f"-I{directory}" for directory in python_includes),
            f"-I{INCLUDE}",
            f"-I{CDEF}",
            str(source),
            *LDFLAGS,
            "-o",
            str(target),
            f"-L{library_dir}",
            "-lectls",
            *LIBS,
        ]
        subprocess.run(command, check=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTPUT_DIR (libectls.so must be there)")
    output = Path(sys.argv[1]).resolve()
    print(build_embedding_library(output, library_dir=output))
