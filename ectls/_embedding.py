"""The Python half of libectls_python.so (include/ectls_python.h).

A C program names a provider as ``"module:function"``.  This module
imports it and registers it with ``ectls.register_first`` or
``register_last``, so it joins the one list of libectls like any Python
provider, with the same Message wrapping and fail-closed rule.  The C
half (cdef/embed.c) starts Python, imports this module, calls
``check_same_list`` and then runs the library's init code, which calls
``attach``.  Registrations are kept by id until C unregisters them.

Failures go back to C as a status and a message, never as an exception:
the entry points return the status plus one, and report the message
through ``lib.ectls_python_set_error``.
"""

from __future__ import annotations

import atexit
import importlib
import itertools
import os
import sys
import threading
from typing import Any, Callable, Dict, TypeVar

import ectls
from ectls._binding import ffi as _ectls_ffi
from ectls._binding import lib as _ectls_lib
from ectls._binding import logger

__all__ = ["StatusError", "attach", "check_same_list", "resolve_provider"]

# The values of enum ectls_python_status in include/ectls_python.h.
OK = 0
ERR_ARGUMENT = 1
ERR_START = 2
ERR_IMPORT = 3
ERR_ATTRIBUTE = 4
ERR_NOT_CALLABLE = 5
ERR_NOT_FOUND = 6
ERR_NOMEM = 7
ERR_PYTHON = 8

_F = TypeVar("_F", bound=Callable[..., Any])

_registrations: Dict[int, ectls.Registration] = {}
_registrations_lock = threading.Lock()
_ids = itertools.count(1)


class StatusError(Exception):
    """A failure to report to C: the status of include/ectls_python.h and
    a message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def check_same_list(hook_address: int, closure_address: int) -> None:
    """Remove the provider (hook, closure) that libectls_python.so has just
    registered in the list of the libectls it is linked against.

    Raises RuntimeError when the ectls package's list has no such
    provider: the package then uses another copy of libectls, and Python
    providers registered through it would join another list than the one
    the C program calls.
    """
    removed = _ectls_lib.ectls_unregister_core_use_outbound_tls_hook(
        _ectls_ffi.cast("ec_hook_core_use_outbound_tls_func_t *", hook_address),
        _ectls_ffi.cast("void *", closure_address),
    )
    if removed < 0:
        raise MemoryError("cannot check the provider list: out of memory")
    if removed == 0:
        raise RuntimeError(
            f"the ectls package imported from {ectls.__file__} uses another "
            "copy of libectls.so than libectls_python.so does, so its Python "
            "providers would join another provider list; use the "
            "libectls_python.so in "
            f"{os.path.dirname(ectls.get_library())}"
        )


def _check_dotted_name(spec: str, name: str, part_name: str) -> None:
    if not name or not all(part.isidentifier() for part in name.split(".")):
        raise StatusError(
            ERR_ARGUMENT,
            f"invalid Python provider {spec!r}: {part_name} {name!r} is not a "
            "dotted Python name; expected MODULE:FUNCTION, e.g. "
            "tls_policy:decide",
        )


def resolve_provider(spec: str) -> Callable[..., Any]:
    """Import the module of ``module:function`` and return the callable.

    The module is found on sys.path.  Raises StatusError with the
    status for C and a message naming the spec.
    """
    module_name, colon, attribute = spec.partition(":")
    if not colon:
        raise StatusError(
            ERR_ARGUMENT,
            f"invalid Python provider {spec!r}: expected MODULE:FUNCTION, "
            "e.g. tls_policy:decide",
        )
    _check_dotted_name(spec, module_name, "module")
    _check_dotted_name(spec, attribute, "function")

    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as error:
        if error.name is not None and (
            module_name == error.name or module_name.startswith(error.name + ".")
        ):
            raise StatusError(
                ERR_IMPORT,
                f"Python provider {spec!r}: module {error.name!r} not found "
                f"on sys.path {sys.path}; add its directory to PYTHONPATH",
            ) from error
        raise StatusError(
            ERR_IMPORT,
            f"Python provider {spec!r}: importing module {module_name!r} "
            f"failed: {type(error).__name__}: {error}",
        ) from error
    except Exception as error:
        raise StatusError(
            ERR_IMPORT,
            f"Python provider {spec!r}: importing module {module_name!r} "
            f"failed: {type(error).__name__}: {error}",
        ) from error

    target: Any = module
    path = module_name
    for part in attribute.split("."):
        try:
            target = getattr(target, part)
        except AttributeError as error:
            raise StatusError(
                ERR_ATTRIBUTE,
                f"Python provider {spec!r}: {path!r} has no attribute {part!r}",
            ) from error
        path = f"{path}.{part}"
    if not callable(target):
        raise StatusError(
            ERR_NOT_CALLABLE,
            f"Python provider {spec!r}: {path!r} is not callable (it is of "
            f"type {type(target).__name__})",
        )
    return target  # type: ignore[no-any-return]


def _register(spec: str, first: bool) -> int:
    """Resolve and register spec; return its id."""
    registration = (ectls.register_first if first else ectls.register_last)(
        resolve_provider(spec)
    )
    with _registrations_lock:
        provider_id = next(_ids)
        _registrations[provider_id] = registration
    return provider_id


def _unregister(provider_id: int) -> None:
    with _registrations_lock:
        registration = _registrations.pop(provider_id, None)
    if registration is None:
        raise StatusError(
            ERR_NOT_FOUND,
            f"no Python provider is registered with id {provider_id}: it was "
            "not returned by ectls_python_register_provider or is already "
            "unregistered",
        )
    try:
        registration.unregister()
    except MemoryError:
        with _registrations_lock:
            _registrations[provider_id] = registration
        raise


def _entry_point(ffi: Any, lib: Any, name: str) -> Callable[[_F], _F]:
    """Return ffi.def_extern for an entry point, typed for the type checker.

    An exception that escapes the entry point (only BaseException
    subclasses that are not Exception can, such as SystemExit raised while
    importing a module) is reported as ERR_PYTHON with its text."""

    def report_escaped(
        exc_type: type, exc_value: BaseException, traceback: Any
    ) -> None:
        message = f"{name}: {exc_type.__name__}: {exc_value}"
        lib.ectls_python_set_error(message.encode("utf-8", "replace"))

    decorator: Callable[[_F], _F] = ffi.def_extern(
        name=name, error=ERR_PYTHON + 1, onerror=report_escaped
    )
    return decorator


def attach(ffi: Any, lib: Any) -> None:
    """Implement the entry points of the library's cffi module (ffi, lib)
    and stop entering Python once the interpreter exits."""

    def report(status: int, message: str) -> int:
        lib.ectls_python_set_error(message.encode("utf-8", "replace"))
        return status + 1

    def report_unexpected(function: str, error: Exception) -> int:
        logger.error("%s failed", function, exc_info=error)
        return report(ERR_PYTHON, f"{function}: {type(error).__name__}: {error}")

    @_entry_point(ffi, lib, "ectls_python_impl_register")
    def register_entry(spec_pointer: Any, first: int, id_pointer: Any) -> int:
        try:
            spec = ffi.string(spec_pointer).decode("utf-8")
        except UnicodeDecodeError as error:
            return report(
                ERR_ARGUMENT, f"invalid Python provider spec: not UTF-8: {error}"
            )
        try:
            id_pointer[0] = _register(spec, bool(first))
        except StatusError as error:
            return report(error.status, str(error))
        except MemoryError:
            return report(ERR_NOMEM, f"cannot register {spec!r}: out of memory")
        except Exception as error:
            return report_unexpected(f"registering Python provider {spec!r}", error)
        return OK + 1

    @_entry_point(ffi, lib, "ectls_python_impl_unregister")
    def unregister_entry(provider_id: int) -> int:
        try:
            _unregister(provider_id)
        except StatusError as error:
            return report(error.status, str(error))
        except MemoryError:
            return report(
                ERR_NOMEM, f"cannot unregister provider {provider_id}: out of memory"
            )
        except Exception as error:
            return report_unexpected(f"unregistering provider {provider_id}", error)
        return OK + 1

    atexit.register(lib.ectls_python_set_exiting)
