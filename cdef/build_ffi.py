"""Build the cffi extension ectls._ectls_cffi (out-of-line API mode).

The cdef is not written by hand: it is the output of the C preprocessor
run over include/ectls.h, which pulls in the Momentum headers.  cffi reads
plain declarations, and the preprocessor removes what it cannot parse
(include guards, extern "C" blocks, comments), so the binding always
matches include/.  System headers are shadowed by empty files during
that run, because cffi defines their types already and cannot parse their
compiler extensions.  Enum values come through as written in include/,
and cffi checks them against the compiler when it builds the module.
The bridge's own declarations follow from bridge.cdef.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import tempfile
from pathlib import Path

from cffi import FFI

ROOT = Path(__file__).resolve().parent.parent
INCLUDE = ROOT / "include"
CDEF = ROOT / "cdef"
# setup.py compiles libectls.so here before it builds this extension.
LIBRARY_DIR = ROOT / "build" / "libectls"


# System headers that include/ uses; see the module docstring.
SHADOWED_SYSTEM_HEADERS = ["stddef.h"]


def preprocessed_headers() -> str:
    """Return include/ectls.h and what it includes, run through cpp."""
    compiler = shlex.split(os.environ.get("CC", "cc"))
    with tempfile.TemporaryDirectory() as shadow:
        for name in SHADOWED_SYSTEM_HEADERS:
            (Path(shadow) / name).write_text("")
        result = subprocess.run(
            [
                *compiler,
                "-E",
                "-P",
                "-std=c99",
                f"-I{shadow}",
                f"-I{INCLUDE}",
                str(INCLUDE / "ectls.h"),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
    return result.stdout


def make_ffi() -> FFI:
    """Return the FFI builder for ectls._ectls_cffi."""
    ffi = FFI()
    ffi.cdef(preprocessed_headers())
    ffi.cdef((CDEF / "bridge.cdef").read_text())
    ffi.set_source(
        "ectls._ectls_cffi",
        '#include "bridge.c"',
        include_dirs=[str(INCLUDE), str(CDEF)],
        library_dirs=[str(LIBRARY_DIR)],
        libraries=["ectls"],
        # The module finds libectls.so beside itself in the package.
        extra_link_args=["-Wl,-rpath,$ORIGIN"],
        depends=[str(path) for path in (*INCLUDE.rglob("*.h"), CDEF / "bridge.c")],
    )
    return ffi


ffibuilder = make_ffi()

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
