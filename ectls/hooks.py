"""The provider list from Python: register, call, explain.

The list itself lives in libectls, shared with C plugins and C code in
the same process.  A Python provider enters it as the C function
``ectls_bridge_provider`` (cdef/bridge.c) with a cffi handle to its
Registration as the closure.  A call then goes:

1. ``call()`` calls ``call_core_use_outbound_tls_hook`` in C (cffi
   releases the GIL for the call).
2. C walks the list; on reaching a Python provider it calls the bridge,
   which checks that the interpreter can run, and calls
   ``_run_provider`` below (cffi takes the GIL).
3. ``_run_provider`` finds the Registration and the caller's Message
   from their handles (``_run_provider_on_c_message`` wraps a message
   that C made), runs the function and checks its result.  It returns
   the decision plus one, so that the 0 cffi returns when Python cannot
   run is told apart from EC_USE_TLS_NO.
4. Any fault (an exception, a result that is not a decision) is logged
   to the "ectls" logger and becomes REQUIRED: the fail-closed rule.
   No Python exception reaches C.
"""

from __future__ import annotations

import contextlib
import enum
import os
import sys
import threading
import weakref
from dataclasses import dataclass
from typing import (
    Any,
    Callable,
    Dict,
    Iterator,
    List,
    Optional,
    Tuple,
    TypeVar,
    Union,
    overload,
)

from ectls._binding import def_extern, ffi, lib, logger
from ectls.message import Message

__all__ = [
    "Explanation",
    "Provider",
    "ProviderFunc",
    "Registration",
    "Step",
    "UseTLS",
    "call",
    "clear",
    "explain",
    "has_hook",
    "hook",
    "register_first",
    "register_last",
]


class UseTLS(enum.IntEnum):
    """What a provider decides, and what a call yields."""

    NO = lib.EC_USE_TLS_NO
    """TLS must not be used; from a provider also "no opinion"."""
    IFAVAILABLE = lib.EC_USE_TLS_IFAVAILABLE
    """Upgrade with STARTTLS when the server offers it."""
    REQUIRED = lib.EC_USE_TLS_REQUIRED
    """TLS, or the message is not sent."""


ProviderFunc = Callable[[Optional[Message]], Union[UseTLS, int]]
_F = TypeVar("_F", bound=ProviderFunc)

# Indexed by the C result, which is always 0, 1 or 2.
_DECISIONS: Tuple[UseTLS, ...] = (UseTLS.NO, UseTLS.IFAVAILABLE, UseTLS.REQUIRED)
_NO = UseTLS.NO
_IFAVAILABLE = UseTLS.IFAVAILABLE
_REQUIRED = UseTLS.REQUIRED
# Return value of the trampolines: the decision plus one (see the module
# docstring).
_FAIL_CLOSED = int(UseTLS.REQUIRED) + 1

_BRIDGE = ffi.addressof(lib, "ectls_bridge_provider")
_DESTROY = ffi.addressof(lib, "ectls_bridge_destroy")
_NULL = ffi.NULL
_call: Callable[[Any], int] = lib.call_core_use_outbound_tls_hook

# Registrations that C may still call.  A registration leaves this set
# only when libectls runs its destroy callback, that is once no call can
# reach it any more; so a lambda registered and then forgotten by the
# caller keeps working.
_live: set[Registration] = set()
_live_lock = threading.Lock()


# Makes isolated() blocks in different threads take turns.
_isolated_lock = threading.RLock()


def _reset_live_lock() -> None:
    # A child forked while another thread held the lock would wait for
    # it forever; the child has only the forking thread.
    global _live_lock, _isolated_lock
    _live_lock = threading.Lock()
    _isolated_lock = threading.RLock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_live_lock)

# Registrations by handle address, for explain(): a trace may name a
# registration that another thread removed and released meanwhile, and a
# weak lookup cannot touch a freed handle the way ffi.from_handle would.
_by_address: weakref.WeakValueDictionary[int, Registration] = (
    weakref.WeakValueDictionary()
)


def _address(pointer: Any) -> int:
    return int(ffi.cast("uintptr_t", pointer))


def _name_of(func: Callable[..., Any]) -> str:
    module = getattr(func, "__module__", None)
    qualname = getattr(func, "__qualname__", None)
    if module and qualname:
        return f"{module}.{qualname}"
    return repr(func)


class Registration:
    """A Python provider's place in the list.

    It stays registered until ``unregister()``, even when the caller keeps
    no reference to it.  As a context manager it unregisters on exit.
    """

    __slots__ = ("__weakref__", "_handle", "_registered", "first", "func", "name")

    def __init__(self, func: ProviderFunc, first: bool) -> None:
        if not callable(func):
            raise TypeError(f"a provider must be callable, not {func!r}")
        self.func = func
        self.name = _name_of(func)
        self.first = first
        # The handle leads to the function itself, which saves the
        # provider call an attribute lookup; _by_address leads back here.
        self._handle: Any = ffi.new_handle(func)
        self._registered = False
        _by_address[_address(self._handle)] = self

    def _register(self) -> None:
        with _live_lock:
            _live.add(self)
        error = lib.ectls_register_core_use_outbound_tls_hook(
            _BRIDGE, self._handle, int(self.first), _DESTROY
        )
        if error:
            with _live_lock:
                _live.discard(self)
            raise MemoryError(f"cannot register {self.name}: out of memory")
        self._registered = True

    def unregister(self) -> None:
        """Remove this provider from the list; later calls skip it.

        Calls already running on other threads may still run it once.
        Unregistering twice does nothing.
        """
        if not self._registered:
            return
        self._registered = False
        if lib.ectls_unregister_core_use_outbound_tls_hook(_BRIDGE, self._handle) < 0:
            self._registered = True
            raise MemoryError(f"cannot unregister {self.name}: out of memory")

    def __enter__(self) -> Registration:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.unregister()

    def __repr__(self) -> str:
        where = "first" if self.first else "last"
        state = "registered" if self._registered else "unregistered"
        return f"<Registration {self.name} ({where}, {state})>"


def _registration_at(closure: Any) -> Optional[Registration]:
    return _by_address.get(_address(closure))


def _name_at(closure: Any) -> str:
    registration = _registration_at(closure)
    return registration.name if registration is not None else "(unregistered)"


@def_extern(name="ectls_py_destroy")
def _destroy(closure: Any) -> None:
    # _live keeps the registration alive until here, so the weak lookup finds it.
    registration = _registration_at(closure)
    _fault_counts.pop(_address(closure), None)
    with _live_lock:
        _live.discard(registration)


# Faults seen by the trampolines on this thread while explain() runs.
_explaining = threading.local()


def _record_fault(closure: Any, description: str) -> None:
    faults = getattr(_explaining, "faults", None)
    if faults is not None:
        faults.append((_address(closure), description))


def _provider_fault(exc_type: type, exc_value: BaseException, traceback: Any) -> None:
    """Log what escaped a trampoline (a BaseException that is not an
    Exception, such as KeyboardInterrupt); cffi then returns
    _FAIL_CLOSED."""
    # The first frame is the trampoline's, whose closure names the provider.
    closure = traceback.tb_frame.f_locals.get("closure") if traceback else None
    name = _name_at(closure) if closure is not None else "(unknown)"
    if closure is None or _fault_due(closure):
        logger.error(
            "Python provider %s was interrupted by %s; the call yields REQUIRED",
            name,
            exc_type.__name__,
            exc_info=(exc_type, exc_value, traceback),
        )
    if closure is not None:
        _record_fault(closure, f"interrupted by {exc_type.__name__}")
    if issubclass(exc_type, KeyboardInterrupt) and _inside_python_call():
        # cffi cannot pass the interrupt through C, so the call() or
        # explain() below on this stack raises it again once C returns,
        # and Ctrl-C still stops the program.  A call from C code has no
        # such place, so there the interrupt ends with the log record.
        global _interrupted
        _interrupted = True


# Set when Ctrl-C interrupted a provider under call() or explain().
_interrupted = False


def _inside_python_call() -> bool:
    """Return True when call() or explain() is on this thread's stack."""
    frame: Any = sys._getframe(1)
    while frame is not None:
        if frame.f_code in _ENTRY_CODES:
            return True
        frame = frame.f_back
    return False


def _raise_interrupt() -> None:
    global _interrupted
    _interrupted = False
    raise KeyboardInterrupt


def _describe_value(value: object) -> str:
    """Return repr(value), or a stand-in when repr() itself fails."""
    try:
        return repr(value)
    except Exception:
        return f"<{type(value).__name__} object whose repr() failed>"


# Faults per provider (by handle address), for _fault_due().
_fault_counts: Dict[int, int] = {}


def _fault_due(closure: Any) -> int:
    """Count a fault of this provider; return the count when it is due for
    a log record (the first 10, then the 100th, 1000th and so on), else 0,
    so a provider failing on every call cannot flood the log."""
    address = _address(closure)
    count = _fault_counts.get(address, 0) + 1
    _fault_counts[address] = count
    if count <= 10 or (count >= 100 and str(count).rstrip("0") == "1"):
        return count
    return 0


def _result_code(closure: Any, result: object) -> int:
    """Map a provider's result to decision plus one, failing closed.

    Members are compared by identity and plain ints by value: IntEnum's
    hash and True == 1 or 1.0 == 1 would make a dict lookup slower and
    too lenient.
    """
    if result is _NO:
        return 1
    if result is _IFAVAILABLE:
        return 2
    if result is _REQUIRED:
        return 3
    # type() rather than __class__, which an object can make raise.  Only
    # int itself counts: bool and other int subclasses (another IntEnum,
    # say) are no decision, even when their value is 0, 1 or 2.
    if type(result) is int and 0 <= result <= 2:
        return result + 1
    description = f"{_describe_value(result)} ({type(result).__name__})"
    count = _fault_due(closure)
    if count:
        logger.error(
            "Python provider %s returned %s, which is not a decision "
            "(UseTLS or 0, 1, 2); the call yields REQUIRED "
            "(fault %d of this provider)",
            _name_at(closure),
            description,
            count,
        )
    _record_fault(closure, f"returned {description}, which is not a decision")
    return _FAIL_CLOSED


def _log_raised(closure: Any) -> int:
    count = _fault_due(closure)
    if count:
        logger.exception(
            "Python provider %s raised; the call yields REQUIRED "
            "(fault %d of this provider)",
            _name_at(closure),
            count,
        )
    error = sys.exc_info()[1]
    _record_fault(closure, f"raised {type(error).__name__}: {error}")
    return _FAIL_CLOSED


_from_handle = ffi.from_handle


@def_extern(name="ectls_py_provider", error=_FAIL_CLOSED, onerror=_provider_fault)
def _run_provider(closure: Any, owner: Any) -> int:
    """Run a provider on the caller's own Message (the hot path)."""
    try:
        result = _from_handle(closure)(_from_handle(owner))
    except Exception:
        return _log_raised(closure)
    # The members' checks of _result_code, inlined for speed.
    if result is _NO:
        return 1
    if result is _IFAVAILABLE:
        return 2
    if result is _REQUIRED:
        return 3
    return _result_code(closure, result)


@def_extern(
    name="ectls_py_provider_c_message", error=_FAIL_CLOSED, onerror=_provider_fault
)
def _run_provider_on_c_message(closure: Any, c_message: Any) -> int:
    """Run a provider on a message that C made, or on NULL (None)."""
    borrowed = Message._borrow(c_message) if c_message else None
    try:
        result = _from_handle(closure)(borrowed)
    except Exception:
        return _log_raised(closure)
    finally:
        # C frees the message after the call, so the wrapper must not
        # outlive it.
        if borrowed is not None:
            borrowed._release()
    return _result_code(closure, result)


def register_first(func: ProviderFunc) -> Registration:
    """Add func at the head of the list; it runs before every provider
    registered so far."""
    registration = Registration(func, first=True)
    registration._register()
    return registration


def register_last(func: ProviderFunc) -> Registration:
    """Add func at the tail of the list; it runs after every provider
    registered so far."""
    registration = Registration(func, first=False)
    registration._register()
    return registration


@overload
def hook(func: _F) -> _F: ...
@overload
def hook(*, first: bool = False) -> Callable[[_F], _F]: ...
def hook(func: Optional[_F] = None, *, first: bool = False) -> Any:
    """Register the decorated function, last unless ``first=True``.

    The function is returned unchanged; its Registration is stored on it
    as ``ectls_registration``.
    """

    def decorate(target: _F) -> _F:
        # Check that the Registration can be stored before registering, so
        # a failure leaves nothing registered that cannot be unregistered.
        try:
            target.ectls_registration = None  # type: ignore[attr-defined]
        except AttributeError:
            raise TypeError(
                f"hook() stores the Registration on the function, which "
                f"{target!r} does not allow; use register_last() or "
                "register_first() instead"
            ) from None
        registration = register_first(target) if first else register_last(target)
        target.ectls_registration = registration  # type: ignore[attr-defined]
        return target

    if func is None:
        return decorate
    return decorate(func)


def has_hook() -> bool:
    """Return True when at least one provider (C or Python) is registered."""
    return bool(lib.has_core_use_outbound_tls_hook())


def call(message: Optional[Message]) -> UseTLS:
    """Run the providers by the call rule and return the decision.

    ``message`` may be None, which providers see as a NULL message.
    """
    try:
        pointer = message._c_message  # type: ignore[union-attr]
    except AttributeError:
        # None lands here too, off the path of calls with a Message.
        if message is not None:
            raise _not_a_message(message) from None
        pointer = _NULL
    if pointer is None:
        message._pointer()  # type: ignore[union-attr]  # raises MessageError
    # Outside the except clause, so a provider's logged traceback is not
    # chained to the AttributeError above.
    decision = _DECISIONS[_call(pointer)]
    if _interrupted:
        _raise_interrupt()
    return decision


def clear() -> int:
    """Remove every provider, C and Python; returns how many there were."""
    removed = lib.ectls_clear_core_use_outbound_tls_hook()
    if removed < 0:
        raise MemoryError("cannot clear the provider list: out of memory")
    return int(removed)


@contextlib.contextmanager
def isolated() -> Iterator[None]:
    """Run the block with an empty provider list, then put back the list
    as it was, C providers included.

    Providers registered inside the block are removed on exit, also those
    that other threads registered meanwhile; providers removed inside it
    come back in their old places.  Blocks in different threads run one
    at a time, so the list is meant for one test at a time.
    """
    # Blocks in different threads take turns: interleaved, one block's
    # restore would put back another block's list.
    with _isolated_lock:
        saved = lib.ectls_save_core_use_outbound_tls_hook()
        if saved == _NULL:
            raise MemoryError("cannot save the provider list: out of memory")
        try:
            clear()
            yield
        finally:
            error = lib.ectls_restore_core_use_outbound_tls_hook(saved)
            lib.ectls_free_saved_core_use_outbound_tls_hook(saved)
            if error:
                raise MemoryError("cannot restore the provider list: out of memory")


def _not_a_message(value: object) -> Exception:
    if isinstance(value, Message):
        value._pointer()  # raises MessageError for a released wrapper
    return TypeError(f"expected a Message or None, not {type(value).__name__}")


# ---- Explaining a decision ---------------------------------------------


@dataclass(frozen=True)
class Provider:
    """A provider as explain() names it."""

    name: str
    """Python: ``module.qualname``; C: the symbol, or the address."""
    language: str
    """"python" or "c"."""
    plugin: Optional[str] = None
    """Path of the plugin or shared object that contains a C provider."""

    def __str__(self) -> str:
        if self.plugin:
            return f"{self.name} ({self.plugin})"
        return self.name


@dataclass(frozen=True)
class Step:
    """One provider's part in an explained call."""

    provider: Provider
    returned: int
    """The value the provider returned to C (for a Python provider, the
    decision after the fail-closed rule)."""
    decision: UseTLS
    """The decision the call rule made of the returned value."""
    fault: Optional[str] = None
    """Reason a Python provider failed closed (it raised, or returned no
    decision), else None."""


@dataclass(frozen=True)
class Explanation:
    """The result of explain(): the decision and how it came about."""

    decision: UseTLS
    steps: Tuple[Step, ...]
    """The providers that ran, in call order."""

    @property
    def decided_by(self) -> Optional[Provider]:
        """The provider whose return value ended the call; None when every
        provider returned NO or none is registered."""
        if self.steps and self.steps[-1].decision is not UseTLS.NO:
            return self.steps[-1].provider
        return None

    def __str__(self) -> str:
        lines = [f"decision: {self.decision.name}"]
        for number, step in enumerate(self.steps, 1):
            mark = "  <- decided" if step is self.steps[-1] and self.decided_by else ""
            fault = f" [fault: {step.fault}]" if step.fault else ""
            lines.append(
                f"  {number}. {step.provider} returned {step.returned} "
                f"({step.decision.name}){fault}{mark}"
            )
        if not self.steps:
            lines.append("  (no provider registered)")
        elif self.decided_by is None:
            lines.append("  every provider returned NO")
        return "\n".join(lines)


def _describe_c_provider(step: Any) -> Provider:
    name = ffi.string(step.symbol).decode() if step.symbol != _NULL else None
    plugin = ffi.string(step.plugin).decode() if step.plugin != _NULL else None
    if name is None or plugin is None:
        symbol = ffi.new("char **")
        obj = ffi.new("char **")
        if lib.ectls_describe_hook(step.hook, symbol, obj):
            if name is None and symbol[0] != _NULL:
                name = ffi.string(symbol[0]).decode()
            if plugin is None and obj[0] != _NULL:
                plugin = ffi.string(obj[0]).decode()
    if name is None:
        name = hex(int(ffi.cast("uintptr_t", step.hook)))
    return Provider(name=name, language="c", plugin=plugin)


def explain(message: Optional[Message]) -> Explanation:
    """Perform one call, as call() does, and report how it decided.

    Each provider runs once.  The report lists the providers that ran in
    call order, what each returned and which one decided.
    """
    if message is not None and not isinstance(message, Message):
        raise _not_a_message(message)
    pointer = _NULL if message is None else message._pointer()
    outer_faults = getattr(_explaining, "faults", None)
    faults: List[Tuple[int, str]] = []
    _explaining.faults = faults
    try:
        trace = lib.ectls_explain_core_use_outbound_tls_hook(pointer)
    finally:
        _explaining.faults = outer_faults
    if _interrupted:
        lib.ectls_trace_free(trace)
        _raise_interrupt()
    if trace == _NULL:
        raise MemoryError("cannot explain the call: out of memory")
    trace = ffi.gc(trace, lib.ectls_trace_free)

    steps = []
    for index in range(trace.count):
        step = trace.steps[index]
        fault = None
        if step.hook == _BRIDGE:
            address = _address(step.closure)
            registration = _by_address.get(address)
            name = registration.name if registration else "(unregistered)"
            provider = Provider(name=name, language="python")
            # A provider may run more than once in a nested call; the
            # fault that counts is its first at this level.
            for fault_address, description in faults:
                if fault_address == address:
                    fault = description
                    faults.remove((fault_address, description))
                    break
        else:
            provider = _describe_c_provider(step)
        steps.append(
            Step(provider, int(step.returned), _DECISIONS[step.decision], fault)
        )
    return Explanation(_DECISIONS[trace.decision], tuple(steps))


# The frames _inside_python_call() looks for.
_ENTRY_CODES = frozenset({call.__code__, explain.__code__})
