"""Fail-closed decisions, bad messages, interpreter exit and fork.

- A provider fault (a Python provider that raises or returns something
  that is not a decision, a C provider's out-of-range value) yields
  REQUIRED, ends the call, and leaves one ERROR record on the "ectls"
  logger that names the provider, whichever thread called.
- Messages: NULL from C reaches Python as None; envelope and context
  values that C cannot store are rejected, and bytes that are not UTF-8
  survive the trip between C and Python.
- Exit and fork run in subprocesses: a C thread and a C atexit handler
  call the list while Python exits, and children forked while other
  threads change the list can use it at once.
"""

from __future__ import annotations

import ctypes
import decimal
import enum
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import List

import pytest

import ectls
from ectls import Message, MessageError, UseTLS

SUBPROCESS_TIMEOUT = 60

FAILCLOSED_PLUGIN = r"""
#define _GNU_SOURCE /* pthread_tryjoin_np */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <ectls.h>

/* Exported so the loader makes libectls global for this plugin. */
int ectls_plugin_init(void) { return 0; }

#define FIXED(name, value)                                  \
  int name(void *closure, email_message *message) {         \
    (void)closure;                                          \
    (void)message;                                          \
    return value;                                           \
  }

FIXED(c_returns_3, 3)
FIXED(c_returns_7, 7)
FIXED(c_returns_minus_1, -1)
FIXED(c_returns_int_min, INT_MIN)
FIXED(c_returns_int_max, INT_MAX)
FIXED(c_returns_ifavailable, EC_USE_TLS_IFAVAILABLE)

static void sleep_us(long microseconds) {
  struct timespec delay = {microseconds / 1000000,
                           (microseconds % 1000000) * 1000};
  while (nanosleep(&delay, &delay) != 0 && errno == EINTR)
    continue;
}

int call_null(void) { return call_core_use_outbound_tls_hook(NULL); }

/* ---- One call on a new C thread ------------------------------------- */

static int thread_result;

static void *call_once(void *arg) {
  (void)arg;
  thread_result = call_core_use_outbound_tls_hook(NULL);
  return NULL;
}

/* Call the list with a NULL message on a new thread; returns the result,
 * or -1 when the thread cannot start. */
int call_on_thread(void) {
  pthread_t thread;
  if (pthread_create(&thread, NULL, call_once, NULL) != 0)
    return -1;
  pthread_join(thread, NULL);
  return thread_result;
}

/* ---- A message made in C --------------------------------------------- */

/*
 * Build a message whose context holds the bytes ff fe under "raw", call
 * the list with it, and copy the context value "py" (set by a provider)
 * into out.  Returns the decision, or -1.
 */
int call_with_c_message(char *out, int out_length) {
  ec_message *message = ectls_message_new();
  int decision;

  if (message == NULL)
    return -1;
  ectls_message_set_mailfrom(message, "sender@example.com");
  ectls_message_set_rcptto(message, "user@Example.ORG");
  ec_message_context_set(message, ECMESS_CTX_MESS, "raw", "\xff\xfe");
  decision = call_core_use_outbound_tls_hook(message);
  snprintf(out, (size_t)out_length, "%s",
           ec_message_context_get(message, ECMESS_CTX_MESS, "py"));
  ectls_message_free(message);
  return decision;
}

/* A provider that records the length and head of context value "big". */
static size_t seen_length;
static char seen_head[8];

int c_reads_context(void *closure, email_message *message) {
  const char *value = ec_message_context_get(message, ECMESS_CTX_MESS, "big");
  (void)closure;
  seen_length = strlen(value);
  snprintf(seen_head, sizeof seen_head, "%s", value);
  return EC_USE_TLS_NO;
}

long context_length_seen(void) { return (long)seen_length; }
const char *context_head_seen(void) { return seen_head; }

/* ---- A C thread that calls while Python exits ------------------------- */

static pthread_t forever_thread;
static int forever_stop, forever_finished;
static long forever_counts[4]; /* NO, IFAVAILABLE, REQUIRED, other */
static long forever_calls;
/* The thread stops after this many REQUIRED results in a row. */
#define REQUIRED_STREAK_LIMIT 200

static void write_line(const char *text) {
  ssize_t written = write(STDOUT_FILENO, text, strlen(text));
  (void)written;
}

static void *forever_main(void *arg) {
  int previous = -1, streak = 0;
  char line[80];

  (void)arg;
  while (!__atomic_load_n(&forever_stop, __ATOMIC_ACQUIRE) &&
         streak < REQUIRED_STREAK_LIMIT) {
    int result = call_core_use_outbound_tls_hook(NULL);
    __atomic_add_fetch(&forever_counts[result >= 0 && result <= 2 ? result : 3],
                       1, __ATOMIC_SEQ_CST);
    __atomic_add_fetch(&forever_calls, 1, __ATOMIC_SEQ_CST);
    streak = result == EC_USE_TLS_REQUIRED ? streak + 1 : 0;
    if (result != previous) {
      snprintf(line, sizeof line, "thread result %d\n", result);
      write_line(line);
      previous = result;
    }
    sleep_us(50);
  }
  __atomic_store_n(&forever_finished, 1, __ATOMIC_RELEASE);
  return NULL;
}

int start_forever_caller(void) {
  return pthread_create(&forever_thread, NULL, forever_main, NULL);
}

long forever_calls_made(void) {
  return __atomic_load_n(&forever_calls, __ATOMIC_SEQ_CST);
}

/* Runs after the interpreter has finalized: stop the thread, call once. */
static void report_at_exit(void) {
  char line[160];
  int decision, waited;

  __atomic_store_n(&forever_stop, 1, __ATOMIC_RELEASE);
  for (waited = 0; waited < 2000; waited++) {
    if (__atomic_load_n(&forever_finished, __ATOMIC_ACQUIRE))
      break;
    sleep_us(1000);
  }
  if (__atomic_load_n(&forever_finished, __ATOMIC_ACQUIRE))
    pthread_join(forever_thread, NULL);
  else if (pthread_tryjoin_np(forever_thread, NULL) == 0)
    write_line("thread did not finish: it exited inside a call\n");
  else
    write_line("thread did not finish: it is blocked inside a call\n");
  decision = call_core_use_outbound_tls_hook(NULL);
  snprintf(line, sizeof line,
           "atexit decision %d; thread counts %ld %ld %ld %ld\n", decision,
           forever_counts[0], forever_counts[1], forever_counts[2],
           forever_counts[3]);
  write_line(line);
}

void install_exit_reporter(void) { atexit(report_at_exit); }

/* ---- A C thread that changes the list, for the fork test -------------- */

static pthread_t churn_thread;
static int churn_stop;

static int c_churn_no(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_NO;
}

static void *churn_main(void *arg) {
  static int closures[2];
  int i = 0;
  (void)arg;
  while (!__atomic_load_n(&churn_stop, __ATOMIC_ACQUIRE)) {
    void *closure = &closures[i % 2];
    ectls_register_core_use_outbound_tls_hook(c_churn_no, closure, i % 2, NULL);
    call_core_use_outbound_tls_hook(NULL);
    ectls_unregister_core_use_outbound_tls_hook(c_churn_no, closure);
    ectls_reclaim_core_use_outbound_tls_hook();
    i++;
  }
  return NULL;
}

int start_churn(void) {
  return pthread_create(&churn_thread, NULL, churn_main, NULL);
}

void stop_churn(void) {
  __atomic_store_n(&churn_stop, 1, __ATOMIC_RELEASE);
  pthread_join(churn_thread, NULL);
}
"""


@pytest.fixture
def plugin(compile_plugin) -> tuple[Path, ctypes.CDLL]:
    """FAILCLOSED_PLUGIN, freshly compiled and loaded, with its path."""
    path = compile_plugin(FAILCLOSED_PLUGIN, "failclosed", flags=("-pthread",))
    ectls.load_plugin(path)
    library = ctypes.CDLL(str(path))
    library.call_with_c_message.argtypes = [ctypes.c_char_p, ctypes.c_int]
    library.context_length_seen.restype = ctypes.c_long
    library.context_head_seen.restype = ctypes.c_char_p
    library.forever_calls_made.restype = ctypes.c_long
    return path, library


def ectls_errors(caplog) -> List[logging.LogRecord]:
    return [
        record
        for record in caplog.records
        if record.name == "ectls" and record.levelno >= logging.ERROR
    ]


# ---- Python providers that fail ---------------------------------------------


class MyInt(int):
    pass


class OtherDecision(enum.IntEnum):
    IFAVAILABLE = 1


INVALID_RESULTS = [
    pytest.param(None, id="none"),
    pytest.param("REQUIRED", id="str"),
    pytest.param(b"\x01", id="bytes"),
    pytest.param(1.0, id="float"),
    pytest.param(decimal.Decimal(1), id="decimal"),
    pytest.param(3, id="three"),
    pytest.param(-1, id="minus-one"),
    pytest.param(2**64 + 1, id="huge-int"),
    pytest.param(True, id="bool"),
    pytest.param(MyInt(1), id="int-subclass"),
    pytest.param(OtherDecision.IFAVAILABLE, id="other-intenum"),
    pytest.param((1,), id="tuple"),
]

# Each caller runs the list once with a NULL message.
CALLERS = ["python", "c", "c-thread"]


def call_via(caller: str, library: ctypes.CDLL) -> int:
    if caller == "python":
        return int(ectls.call(None))
    if caller == "c":
        return int(library.call_null())
    return int(library.call_on_thread())


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("result", INVALID_RESULTS)
def test_python_invalid_result_fails_closed(plugin, caplog, result, caller):
    later_runs: List[int] = []

    def invalid_provider(message):
        return result

    registration = ectls.register_last(invalid_provider)
    ectls.register_last(lambda m: later_runs.append(1) or UseTLS.NO)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        decision = call_via(caller, plugin[1])

    assert decision == UseTLS.REQUIRED
    assert later_runs == []
    records = ectls_errors(caplog)
    assert len(records) == 1
    assert registration.name in records[0].getMessage()
    assert "not a decision" in records[0].getMessage()


RAISED = [
    pytest.param(RuntimeError("database down"), id="runtime-error"),
    pytest.param(LookupError("no such domain"), id="lookup-error"),
    pytest.param(RecursionError("deep"), id="recursion-error"),
    pytest.param(SystemExit(3), id="system-exit"),
]


@pytest.mark.parametrize("caller", CALLERS)
@pytest.mark.parametrize("exception", RAISED)
def test_python_raising_provider_fails_closed(plugin, caplog, exception, caller):
    later_runs: List[int] = []

    def raising_provider(message):
        raise exception

    registration = ectls.register_last(raising_provider)
    ectls.register_last(lambda m: later_runs.append(1) or UseTLS.NO)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        decision = call_via(caller, plugin[1])

    assert decision == UseTLS.REQUIRED
    assert later_runs == []
    records = ectls_errors(caplog)
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert records[0].exc_info[0] is type(exception)
    assert registration.name in records[0].getMessage()


@pytest.mark.parametrize("caller", CALLERS)
def test_python_interrupted_provider_fails_closed(plugin, caplog, caller):
    """A KeyboardInterrupt in a provider fails closed; where the call came
    from ectls.call() on the main thread, call() raises it again so Ctrl-C
    still stops the program."""
    later_runs: List[int] = []
    decisions: List[int] = []

    def interrupted_provider(message):
        raise KeyboardInterrupt

    registration = ectls.register_last(interrupted_provider)
    ectls.register_last(lambda m: later_runs.append(1) or UseTLS.NO)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        if caller == "python":
            with pytest.raises(KeyboardInterrupt):
                ectls.call(None)
        else:
            decisions.append(call_via(caller, plugin[1]))

    if caller != "python":
        assert decisions == [int(UseTLS.REQUIRED)]
    assert later_runs == []
    records = ectls_errors(caplog)
    assert len(records) == 1
    assert registration.name in records[0].getMessage()
    assert "interrupted by KeyboardInterrupt" in records[0].getMessage()


def test_raising_provider_traceback_has_no_unrelated_context(caplog):
    """The logged exception is the provider's own, not chained to an
    exception that ectls handled before it ran the provider."""

    def raising_provider(message):
        raise RuntimeError("policy database unreachable")

    ectls.register_last(raising_provider)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        assert ectls.call(None) is UseTLS.REQUIRED

    records = ectls_errors(caplog)
    assert len(records) == 1
    assert records[0].exc_info is not None
    assert records[0].exc_info[1].__context__ is None


def test_python_result_with_broken_repr_fails_closed(caplog):
    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("repr failed")

    def unprintable_provider(message):
        return Unprintable()

    registration = ectls.register_last(unprintable_provider)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        decision = ectls.call(None)

    assert decision is UseTLS.REQUIRED
    records = ectls_errors(caplog)
    assert len(records) == 1
    assert registration.name in records[0].getMessage()


def test_explain_shows_python_fault_as_required(caplog):
    def returns_none(message):
        return None

    ectls.register_last(returns_none)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        explanation = ectls.explain(Message())

    assert explanation.decision is UseTLS.REQUIRED
    assert len(explanation.steps) == 1
    assert explanation.steps[0].decision is UseTLS.REQUIRED
    assert explanation.decided_by is not None
    assert explanation.decided_by.name.endswith("returns_none")


# ---- C providers out of range -------------------------------------------------


@pytest.mark.parametrize(
    ("symbol", "value"),
    [
        ("c_returns_3", 3),
        ("c_returns_7", 7),
        ("c_returns_minus_1", -1),
        ("c_returns_int_min", -(2**31)),
        ("c_returns_int_max", 2**31 - 1),
    ],
)
@pytest.mark.parametrize("caller", CALLERS)
def test_c_out_of_range_fails_closed(compile_plugin, caplog, symbol, value, caller):
    path = compile_plugin(FAILCLOSED_PLUGIN, "failclosed", flags=("-pthread",))
    ectls.load_plugin(path)
    ectls.load_plugin(path, symbol=symbol)
    library = ctypes.CDLL(str(path))
    later_runs: List[int] = []
    ectls.register_last(lambda m: later_runs.append(1) or UseTLS.NO)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        decision = call_via(caller, library)

    assert decision == UseTLS.REQUIRED
    assert later_runs == []
    records = ectls_errors(caplog)
    assert len(records) == 1
    text = records[0].getMessage()
    assert symbol in text
    assert str(path) in text
    assert f"returned {value}" in text


def test_c_out_of_range_explained(compile_plugin):
    path = compile_plugin(FAILCLOSED_PLUGIN, "failclosed", flags=("-pthread",))
    ectls.load_plugin(path, symbol="c_returns_7")

    explanation = ectls.explain(None)

    assert explanation.decision is UseTLS.REQUIRED
    assert [(s.provider.name, s.returned, s.decision) for s in explanation.steps] == [
        ("c_returns_7", 7, UseTLS.REQUIRED)
    ]


# ---- Messages ---------------------------------------------------------------


@pytest.mark.parametrize("caller", ["c", "c-thread"])
def test_null_message_from_c_is_none(plugin, caller):
    seen: List[object] = []
    ectls.register_last(lambda message: seen.append(message) or UseTLS.IFAVAILABLE)

    assert call_via(caller, plugin[1]) == UseTLS.IFAVAILABLE
    assert seen == [None]


def test_c_message_bytes_cross_to_python_and_back(plugin):
    seen: List[object] = []

    def reads_and_writes(message):
        seen.append((message.mailfrom, message.rcptto, message.routing_domain))
        seen.append(message.context["raw"])
        message.context["py"] = "\u00e9\udcff"
        return UseTLS.REQUIRED

    ectls.register_last(reads_and_writes)
    out = ctypes.create_string_buffer(64)

    assert plugin[1].call_with_c_message(out, len(out)) == UseTLS.REQUIRED
    assert seen == [
        ("sender@example.com", "user@Example.ORG", "example.org"),
        "\udcff\udcfe",
    ]
    assert out.value == b"\xc3\xa9\xff"


def test_large_context_value_reaches_c(plugin):
    path = plugin[0]
    ectls.load_plugin(path, symbol="c_reads_context")
    big = "x" * (1 << 20)
    message = Message(context={"big": big})

    assert ectls.call(message) is UseTLS.NO
    assert plugin[1].context_length_seen() == len(big)
    assert plugin[1].context_head_seen() == b"xxxxxxx"
    assert message.context["big"] == big


def test_non_utf8_context_round_trip(plugin):
    ectls.load_plugin(plugin[0], symbol="c_reads_context")
    message = Message()
    message.context["big"] = "\udcff\udcfe-raw"

    ectls.call(message)

    assert plugin[1].context_length_seen() == 6
    assert plugin[1].context_head_seen() == b"\xff\xfe-raw"
    assert message.context["big"] == "\udcff\udcfe-raw"


ADDRESS_MAX_BYTES = 254


@pytest.mark.parametrize("field", ["mailfrom", "rcptto"])
@pytest.mark.parametrize(
    "address",
    [
        pytest.param("a" * (ADDRESS_MAX_BYTES - 12) + "@example.org", id="ascii"),
        pytest.param("\u00e9" * (ADDRESS_MAX_BYTES // 2), id="two-byte-utf8"),
    ],
)
def test_address_at_byte_limit_stored(field, address):
    message = Message()
    setattr(message, field, address)
    assert getattr(message, field) == address


@pytest.mark.parametrize("field", ["mailfrom", "rcptto"])
@pytest.mark.parametrize(
    "address",
    [
        pytest.param("a" * (ADDRESS_MAX_BYTES - 11) + "@example.org", id="ascii"),
        # 128 characters, but 256 bytes in UTF-8
        pytest.param("\u00e9" * (ADDRESS_MAX_BYTES // 2 + 1), id="two-byte-utf8"),
        pytest.param("user@example.org\r\nRCPT TO:<x@y>", id="crlf"),
        pytest.param("<user@example.org>", id="angle-brackets"),
        pytest.param("user\0@example.org", id="nul"),
    ],
)
def test_invalid_address_rejected(field, address):
    message = Message()
    message.mailfrom = "kept@example.com"
    message.rcptto = "kept@example.org"
    before = getattr(message, field)

    with pytest.raises(MessageError, match=field):
        setattr(message, field, address)

    assert getattr(message, field) == before


@pytest.mark.parametrize(
    "domain",
    [
        pytest.param("d" * 254, id="too-long"),
        pytest.param("", id="empty"),
        pytest.param("a b.example", id="space"),
        pytest.param("a@b.example", id="at-sign"),
        pytest.param("b.example\n", id="newline"),
    ],
)
def test_invalid_routing_domain_rejected(domain):
    message = Message(rcptto="user@example.org")
    with pytest.raises(MessageError, match="routing domain"):
        message.routing_domain = domain
    assert message.routing_domain == "example.org"


def test_routing_domain_at_limit_stored():
    message = Message()
    message.routing_domain = "D" * 253
    assert message.routing_domain == "d" * 253


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        pytest.param("k\0", "v", MessageError, id="nul-in-key"),
        pytest.param("k", "v\0", MessageError, id="nul-in-value"),
        pytest.param("k", b"v", TypeError, id="bytes-value"),
        pytest.param(b"k", "v", TypeError, id="bytes-key"),
        pytest.param("k", None, TypeError, id="none-value"),
    ],
)
def test_invalid_context_entry_rejected(key, value, error):
    message = Message()
    with pytest.raises(error, match="context"):
        message.context[key] = value
    assert len(message.context) == 0


@pytest.mark.parametrize("where", ["context-value", "context-key", "mailfrom"])
def test_lone_surrogate_rejected_as_message_error(where):
    """A lone surrogate has no bytes at all, so C cannot store it: that is
    a MessageError naming the field, like every other value C cannot
    store."""
    message = Message()
    with pytest.raises(MessageError, match=r"context|mailfrom"):
        if where == "context-value":
            message.context["k"] = "\ud800"
        elif where == "context-key":
            message.context["\ud800"] = "v"
        else:
            message.mailfrom = "\ud800@example.org"


# ---- Interpreter exit (subprocesses) ---------------------------------------


def run_script(script: str, *arguments: str) -> subprocess.CompletedProcess:
    """Run a Python script in a fresh interpreter, outside the repository
    (so that the installed ectls is imported)."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *arguments],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=SUBPROCESS_TIMEOUT,
    )


EXIT_SCRIPT = """
import atexit, ctypes, sys, time

def late_python_call():
    # Registered before ectls is imported, so it runs after ectls' own
    # atexit handler.
    print("late python decision", int(ectls.call(None)), flush=True)

atexit.register(late_python_call)

import ectls

path, how, provider = sys.argv[1], sys.argv[2], sys.argv[3]
ectls.load_plugin(path)
library = ctypes.CDLL(path)
library.forever_calls_made.restype = ctypes.c_long


def policy(message):
    if provider == "in-flight":
        # Sleeping releases the GIL, so the C thread is most likely
        # inside this provider when the interpreter exits.
        time.sleep(0.0005)
    return ectls.UseTLS.IFAVAILABLE


ectls.register_last(policy)
library.install_exit_reporter()
assert library.start_forever_caller() == 0
deadline = time.monotonic() + 10
while library.forever_calls_made() < 200 and time.monotonic() < deadline:
    time.sleep(0.005)
print("python exiting after", library.forever_calls_made(), "calls", flush=True)
if how == "sys-exit":
    sys.exit(0)
"""


@pytest.mark.parametrize(
    ("how", "provider"),
    [
        ("end-of-script", "quick"),
        ("sys-exit", "quick"),
        # A call that is inside a Python provider when the interpreter
        # exits must still return, like every call.
        ("end-of-script", "in-flight"),
    ],
)
def test_exit_with_c_thread_and_atexit_caller(compile_plugin, how, provider):
    path = compile_plugin(FAILCLOSED_PLUGIN, "failclosed", flags=("-pthread",))

    result = run_script(EXIT_SCRIPT, str(path), how, provider)

    context = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, context
    lines = result.stdout.splitlines()
    assert lines[0] == "thread result 1", context
    assert any(line.startswith("python exiting after") for line in lines), context
    # Python providers fail closed once ectls' atexit handler has run.
    assert "late python decision 2" in lines, context
    # The C thread saw IFAVAILABLE, then REQUIRED, and nothing else.
    transitions = [line for line in lines if line.startswith("thread result")]
    assert transitions in (["thread result 1"], ["thread result 1", "thread result 2"])
    assert not [line for line in lines if "did not finish" in line], context
    summary = [line for line in lines if line.startswith("atexit decision")]
    assert len(summary) == 1, context
    decision, counts = summary[0].split("; thread counts ")
    assert decision == "atexit decision 2", context
    no, ifavailable, _required, other = (int(part) for part in counts.split())
    assert no == 0, context
    assert other == 0, context
    assert ifavailable >= 200, context
    assert "Python interpreter is not running, is exiting" in result.stderr


# ---- Fork ---------------------------------------------------------------------

FORK_SCRIPT = """
import ctypes, faulthandler, os, signal, sys, threading, time

import ectls
import ectls._binding

FORKS = 150
CHURN_THREADS = 3
CHILD_LIMIT_SECONDS = 1.0
# A child that has not exited by then is counted as hung and killed.
CHILD_WAIT_SECONDS = 3.0

path = sys.argv[1]
ectls.load_plugin(path)
library = ctypes.CDLL(path)
stop = threading.Event()
# Switch threads often, so that forks meet Python threads at many points.
sys.setswitchinterval(1e-5)


def python_churn():
    while not stop.is_set():
        registration = ectls.register_first(lambda m: ectls.UseTLS.NO)
        ectls.call(None)
        registration.unregister()


def child_main():
    # A child that blocks prints every thread's stack to stderr and exits
    # with status 1 before the parent would count it as hung.
    faulthandler.dump_traceback_later(CHILD_WAIT_SECONDS - 1, exit=True)
    started = time.monotonic()
    ectls.clear()
    ectls.register_last(lambda m: ectls.UseTLS.REQUIRED)
    ok = (
        ectls.call(None) is ectls.UseTLS.REQUIRED
        and library.call_null() == 2
        and len(ectls.explain(None).steps) == 1
    )
    ectls.clear()
    ok = ok and ectls._binding.lib.ectls_reclaim_core_use_outbound_tls_hook() == 0
    elapsed = time.monotonic() - started
    if not ok:
        return 1
    return 0 if elapsed < CHILD_LIMIT_SECONDS else 2


def wait_for_child(pid):
    deadline = time.monotonic() + CHILD_WAIT_SECONDS
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return "hung"


churners = [threading.Thread(target=python_churn) for _ in range(CHURN_THREADS)]
for thread in churners:
    thread.start()
assert library.start_churn() == 0
results = {}
for number in range(FORKS):
    time.sleep(0.001)
    pid = os.fork()
    if pid == 0:
        os._exit(child_main())
    result = wait_for_child(pid)
    results[result] = results.get(result, 0) + 1
    if result != 0:
        break  # one failure is enough, and each hang costs seconds
stop.set()
for thread in churners:
    thread.join()
library.stop_churn()
print("child results", sorted(results.items(), key=str))
"""


def test_fork_during_churn_child_can_use_list(compile_plugin):
    path = compile_plugin(FAILCLOSED_PLUGIN, "failclosed", flags=("-pthread",))

    result = run_script(FORK_SCRIPT, str(path))

    context = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr[-3000:]}"
    assert result.returncode == 0, context
    # Every child must exit with status 0.  Status 1 is a wrong decision or
    # a child that blocked (its stack is on stderr), 2 a child slower than
    # a second, and "hung" one that did not even exit through faulthandler.
    assert "child results [(0, 150)]" in result.stdout, context


FORK_FROM_C = r"""
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>
#include <hooks/core/use_outbound_tls.h>

int ectls_plugin_init(void) { return 0; }

/* fork() from C and call the list in the child; returns the child's
 * decision, or -1 when it did not exit within 5 s. */
int fork_and_call(void)
{
    int status;
    pid_t child = fork();

    if (child == 0) {
        alarm(5);
        _exit(call_core_use_outbound_tls_hook(NULL));
    }
    if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status))
        return -1;
    return WEXITSTATUS(status);
}
"""


def test_python_provider_in_c_forked_child_fails_closed(compile_plugin):
    """A child that C code forked cannot enter Python (another thread may
    have held the GIL), so its Python providers fail closed at once."""
    path = compile_plugin(FORK_FROM_C, "fork_from_c")
    ectls.load_plugin(path)
    library = ctypes.CDLL(str(path))
    ectls.register_last(lambda m: UseTLS.IFAVAILABLE)

    assert library.fork_and_call() == int(UseTLS.REQUIRED)
    assert ectls.call(None) is UseTLS.IFAVAILABLE
