"""The compiled cffi module, and the log handler that feeds logging.

libectls reports the faults it detects in C (a provider's out-of-range
value, for one) through one log handler.  While this module is imported
that handler forwards each record to the "ectls" logger.  When the
interpreter exits (ectls' atexit handler, which runs after handlers
registered later), the handler goes back to libectls' default, stderr,
and Python providers fail closed, so C threads that call the list later
never wait for Python.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any, Callable, TypeVar

try:
    from ectls._ectls_cffi import ffi, lib
except ImportError as error:  # pragma: no cover - depends on the install
    raise ImportError(
        f"ectls was imported from {__file__.rsplit('/', 2)[0]}, which has no "
        "compiled module: install ectls (pip install .) and run Python "
        "outside the source tree, or build in place with pip install -e ."
    ) from error

__all__ = ["def_extern", "ffi", "lib", "logger"]

logger = logging.getLogger("ectls")

_F = TypeVar("_F", bound=Callable[..., Any])


def def_extern(name: str, **options: Any) -> Callable[[_F], _F]:
    """Attach Python code to an extern "Python" function; ffi.def_extern
    with the types kept for the type checker."""
    decorator: Callable[[_F], _F] = ffi.def_extern(name=name, **options)
    return decorator


@def_extern(name="ectls_py_log")
def _forward_log_record(level: int, message: object) -> None:
    logger.log(level, "%s", ffi.string(message).decode("utf-8", "replace"))


def _stop_entering_python() -> None:
    """From interpreter exit on, Python providers fail closed and C log
    records go to stderr, so late C callers never wait for Python."""
    lib.ectls_bridge_set_exiting()
    lib.ectls_set_log_handler(ffi.NULL, ffi.NULL)


lib.ectls_set_log_handler(ffi.addressof(lib, "ectls_bridge_log"), ffi.NULL)
atexit.register(_stop_entering_python)
# A child forked by C code cannot run Python providers (they fail
# closed); one forked by os.fork() can, once Python has reset itself.
lib.ectls_bridge_watch_fork()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=lib.ectls_bridge_python_forked)
