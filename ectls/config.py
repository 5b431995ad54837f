"""Compiler and linker flags for C code built against the installed ectls.

``python -m ectls config`` prints these, as python3-config does for
Python.  The package directory also contains ``ectls.pc``, which gives
the same flags to pkg-config::

    PKG_CONFIG_PATH="$(python -m ectls config --pkgconfigdir)" \\
        pkg-config --cflags --libs ectls

A plugin needs only the compiler flags: like a Momentum module, it is not
linked against libectls.  A C program that calls the list links with the
linker flags, which include an rpath so that it finds libectls.so at run
time without LD_LIBRARY_PATH.  A C program that registers Python
providers through ectls_python.h links with ``--embed-libs`` in place of
``--libs``: libectls_python.so, libectls.so and the libpython of the
interpreter that runs this command.

NOTE: the flags are not quoted for a shell, so a package path that
contains whitespace breaks ``$(python -m ectls config ...)``.
"""

from __future__ import annotations

import os
import sysconfig
from typing import Callable, Dict, List

from ectls import get_include
from ectls.plugin import get_library

__all__ = [
    "ITEMS",
    "cflags",
    "embed_libs",
    "include_dir",
    "library_dir",
    "libs",
    "pkgconfig_dir",
    "python_libs",
]


def include_dir() -> str:
    """Return the directory of ectls.h, ec_message.h and hooks/."""
    return get_include()


def library_dir() -> str:
    """Return the directory of libectls.so."""
    return os.path.dirname(get_library())


def pkgconfig_dir() -> str:
    """Return the directory of ectls.pc, for PKG_CONFIG_PATH: the package
    directory."""
    return os.path.dirname(os.path.abspath(__file__))


def cflags() -> List[str]:
    """Return the compiler flags that find the ectls headers."""
    return [f"-I{include_dir()}"]


def libs() -> List[str]:
    """Return the linker flags for libectls.so, with an rpath to it."""
    directory = library_dir()
    return [f"-L{directory}", "-lectls", f"-Wl,-rpath,{directory}"]


def python_libs() -> List[str]:
    """Return the linker flags that embed this interpreter's libpython, as
    ``python3-config --embed --ldflags`` prints them, with an rpath to a
    shared libpython."""
    words: List[str] = []
    if sysconfig.get_config_var("Py_ENABLE_SHARED"):
        directory = sysconfig.get_config_var("LIBDIR")
        words += [f"-L{directory}", f"-Wl,-rpath,{directory}"]
    else:
        # NOTE: linking a static libpython is untested; extension modules
        # then need its symbols exported from the program (LINKFORSHARED).
        words.append(f"-L{sysconfig.get_config_var('LIBPL')}")
        words += (sysconfig.get_config_var("LINKFORSHARED") or "").split()
    words.append(f"-lpython{sysconfig.get_config_var('LDVERSION')}")
    for name in ("LIBS", "SYSLIBS"):
        words += (sysconfig.get_config_var(name) or "").split()
    return words


def embed_libs() -> List[str]:
    """Return the linker flags for a program that uses ectls_python.h:
    libectls_python.so and libectls.so with an rpath to them, then
    libpython."""
    directory = library_dir()
    return [
        f"-L{directory}",
        "-lectls_python",
        "-lectls",
        f"-Wl,-rpath,{directory}",
        *python_libs(),
    ]


ITEMS: Dict[str, Callable[[], List[str]]] = {
    "cflags": cflags,
    "libs": libs,
    "embed-libs": embed_libs,
    "includedir": lambda: [include_dir()],
    "libdir": lambda: [library_dir()],
    "pkgconfigdir": lambda: [pkgconfig_dir()],
}
"""Functions that return the words ``python -m ectls config --NAME``
prints, by NAME."""
