"""Compiler and linker flags for C code built against the installed ectls.

``python -m ectls config`` prints these, as python3-config does for
Python.  The package directory also contains ``ectls.pc``, which gives
the same flags to pkg-config::

    PKG_CONFIG_PATH="$(python -m ectls config --pkgconfigdir)" \\
        pkg-config --cflags --libs ectls

A plugin needs only the compiler flags: like a Momentum module, it is not
linked against libectls.  A C program that calls the list links with the
linker flags, which include an rpath so that it finds libectls.so at run
time without LD_LIBRARY_PATH.

NOTE: the flags are not quoted for a shell, so a package path that
contains whitespace breaks ``$(python -m ectls config ...)``.
"""

from __future__ import annotations

import os
from typing import Callable, Dict, List

from ectls import get_include
from ectls.plugin import get_library

__all__ = [
    "ITEMS",
    "cflags",
    "include_dir",
    "library_dir",
    "libs",
    "pkgconfig_dir",
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


ITEMS: Dict[str, Callable[[], List[str]]] = {
    "cflags": cflags,
    "libs": libs,
    "includedir": lambda: [include_dir()],
    "libdir": lambda: [library_dir()],
    "pkgconfigdir": lambda: [pkgconfig_dir()],
}
"""Functions that return the words ``python -m ectls config --NAME``
prints, by NAME."""
