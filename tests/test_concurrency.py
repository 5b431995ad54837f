"""Threads, callback lifetime and re-entrancy of the shared provider list.

C threads come from a test plugin (THREADS_PLUGIN) that starts pthreads
calling call_core_use_outbound_tls_hook; Python reaches its functions
through ctypes, which releases the GIL for the length of each C call.
Every wait is bounded, so a deadlock fails a test instead of hanging it.
"""

from __future__ import annotations

import ctypes
import gc
import threading
import time
import weakref
from pathlib import Path
from typing import Callable, List, Optional

import pytest

import ectls
from ectls import Message, UseTLS
from ectls._binding import lib

# Upper bound for any single wait on another thread, in seconds.
WAIT_SECONDS = 20.0
# How long the churn tests run, in seconds.  Each loop also has a count cap.
CHURN_SECONDS = 0.5
CHURN_MAX_ITERATIONS = 20_000

THREADS_PLUGIN = r"""
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <ectls.h>

#define MAX_CALLERS 8
#define CLOSURE_MAGIC 0x436c6f73u

/* Exported so the loader makes libectls global for this plugin. */
int ectls_plugin_init(void) { return 0; }

/* ---- Caller threads ------------------------------------------------ */

struct caller {
  pthread_t thread;
  int calls;
  char rcptto[64]; /* "" for a NULL message */
  int counts[4];   /* results NO, IFAVAILABLE, REQUIRED, anything else */
  int finished;
  int joined;
};

static struct caller callers[MAX_CALLERS];
static int caller_count;

static void *caller_main(void *arg) {
  struct caller *caller = arg;
  ec_message *message = NULL;

  if (caller->rcptto[0] != '\0') {
    message = ectls_message_new();
    ectls_message_set_rcptto(message, caller->rcptto);
  }
  for (int i = 0; i < caller->calls; i++) {
    int result = call_core_use_outbound_tls_hook(message);
    caller->counts[result >= 0 && result <= 2 ? result : 3]++;
  }
  ectls_message_free(message);
  __atomic_store_n(&caller->finished, 1, __ATOMIC_RELEASE);
  return NULL;
}

/*
 * Start count threads; thread i calls the list calls times with a
 * message to rcptto[i], or with NULL when rcptto[i] is NULL or "".
 * Returns 0, or -1 when threads are still running or one cannot start.
 */
int start_callers(int count, int calls, const char **rcptto) {
  for (int i = 0; i < caller_count; i++)
    if (!callers[i].joined)
      return -1;
  if (count < 1 || count > MAX_CALLERS)
    return -1;
  memset(callers, 0, sizeof callers);
  caller_count = 0;
  for (int i = 0; i < count; i++) {
    struct caller *caller = &callers[i];
    caller->calls = calls;
    if (rcptto != NULL && rcptto[i] != NULL)
      strncpy(caller->rcptto, rcptto[i], sizeof caller->rcptto - 1);
    if (pthread_create(&caller->thread, NULL, caller_main, caller) != 0)
      return -1;
    caller_count++;
  }
  return 0;
}

static void sleep_ms(int milliseconds) {
  struct timespec delay = {milliseconds / 1000,
                           (long)(milliseconds % 1000) * 1000000L};
  while (nanosleep(&delay, &delay) != 0 && errno == EINTR)
    continue;
}

/*
 * Wait up to timeout_ms for the started threads and join them; copy their
 * result counts (4 per thread) into counts.  Returns 0, or -1 on timeout,
 * leaving the threads running.
 */
int wait_callers(int timeout_ms, int *counts) {
  for (int waited = 0;; waited++) {
    int finished = 0;
    for (int i = 0; i < caller_count; i++)
      finished += __atomic_load_n(&callers[i].finished, __ATOMIC_ACQUIRE);
    if (finished == caller_count)
      break;
    if (waited >= timeout_ms)
      return -1;
    sleep_ms(1);
  }
  for (int i = 0; i < caller_count; i++) {
    pthread_join(callers[i].thread, NULL);
    callers[i].joined = 1;
    memcpy(counts + 4 * i, callers[i].counts, sizeof callers[i].counts);
  }
  return 0;
}

/* start_callers() and wait_callers() in one C call. */
int run_callers(int count, int calls, const char **rcptto, int timeout_ms,
                int *counts) {
  if (start_callers(count, calls, rcptto) != 0)
    return -1;
  return wait_callers(timeout_ms, counts);
}

/* A C call that holds no GIL for milliseconds. */
void hold_in_c(int milliseconds) { sleep_ms(milliseconds); }

int call_without_message(void) { return call_core_use_outbound_tls_hook(NULL); }

/* ---- Providers with checked heap closures ------------------------- */

struct checked_closure {
  unsigned magic;
  int value;
};

static int closures_created, closures_destroyed, closures_bad;

int checked_provider(void *closure, email_message *message) {
  const struct checked_closure *checked = closure;
  (void)message;
  if (checked->magic != CLOSURE_MAGIC) {
    __atomic_add_fetch(&closures_bad, 1, __ATOMIC_SEQ_CST);
    return EC_USE_TLS_NO;
  }
  return checked->value;
}

static void destroy_checked(void *closure) {
  struct checked_closure *checked = closure;
  if (checked->magic != CLOSURE_MAGIC)
    __atomic_add_fetch(&closures_bad, 1, __ATOMIC_SEQ_CST);
  memset(checked, 0xdd, sizeof *checked);
  free(checked);
  __atomic_add_fetch(&closures_destroyed, 1, __ATOMIC_SEQ_CST);
}

static pthread_t churn_thread;
static int churn_stop, churn_iterations;

static void *churn_main(void *arg) {
  (void)arg;
  while (!__atomic_load_n(&churn_stop, __ATOMIC_ACQUIRE)) {
    struct checked_closure *checked = malloc(sizeof *checked);
    int first = churn_iterations % 2;
    if (checked == NULL)
      break;
    checked->magic = CLOSURE_MAGIC;
    checked->value = EC_USE_TLS_NO;
    __atomic_add_fetch(&closures_created, 1, __ATOMIC_SEQ_CST);
    if (ectls_register_core_use_outbound_tls_hook(checked_provider, checked,
                                                  first, destroy_checked)) {
      free(checked);
      __atomic_add_fetch(&closures_destroyed, 1, __ATOMIC_SEQ_CST);
      break;
    }
    call_core_use_outbound_tls_hook(NULL);
    ectls_unregister_core_use_outbound_tls_hook(checked_provider, checked);
    __atomic_add_fetch(&churn_iterations, 1, __ATOMIC_SEQ_CST);
  }
  return NULL;
}

/* Start a thread that registers and unregisters checked providers. */
int start_churn(void) {
  churn_stop = 0;
  churn_iterations = 0;
  return pthread_create(&churn_thread, NULL, churn_main, NULL);
}

/* Stop and join the churn thread; returns its iteration count. */
int stop_churn(void) {
  __atomic_store_n(&churn_stop, 1, __ATOMIC_RELEASE);
  pthread_join(churn_thread, NULL);
  return churn_iterations;
}

/* Copy closures created, destroyed and found overwritten into stats. */
void closure_stats(int *stats) {
  stats[0] = __atomic_load_n(&closures_created, __ATOMIC_SEQ_CST);
  stats[1] = __atomic_load_n(&closures_destroyed, __ATOMIC_SEQ_CST);
  stats[2] = __atomic_load_n(&closures_bad, __ATOMIC_SEQ_CST);
}

/* ---- A C provider that changes or calls the list during a call ---- */

int c_fixed_required(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_REQUIRED;
}

enum reentrant_action {
  REGISTER_FIRST = 1,
  UNREGISTER_SELF = 2,
  CALL_LIST = 3,
  HAS_HOOK = 4,
  CLEAR_LIST = 5,
  EXPLAIN_LIST = 6
};

static int reentrant_action;
static int reentrant_inner = -1;
static __thread int reentrant_depth;

int c_reentrant_provider(void *closure, email_message *message) {
  ectls_trace *trace;

  if (reentrant_depth > 0)
    return EC_USE_TLS_NO;
  reentrant_depth++;
  switch (reentrant_action) {
  case REGISTER_FIRST:
    register_core_use_outbound_tls_hook_first(c_fixed_required, NULL);
    break;
  case UNREGISTER_SELF:
    reentrant_inner =
        ectls_unregister_core_use_outbound_tls_hook(c_reentrant_provider, closure);
    break;
  case CALL_LIST:
    reentrant_inner = call_core_use_outbound_tls_hook(message);
    break;
  case HAS_HOOK:
    reentrant_inner = has_core_use_outbound_tls_hook();
    break;
  case CLEAR_LIST:
    reentrant_inner = ectls_clear_core_use_outbound_tls_hook();
    break;
  case EXPLAIN_LIST:
    trace = ectls_explain_core_use_outbound_tls_hook(message);
    reentrant_inner = trace != NULL ? trace->count : -1;
    ectls_trace_free(trace);
    break;
  }
  reentrant_depth--;
  return EC_USE_TLS_NO;
}

/* Register c_reentrant_provider to do action; returns 0 on success. */
int register_reentrant(int action, int first) {
  reentrant_action = action;
  reentrant_inner = -1;
  return ectls_register_core_use_outbound_tls_hook(c_reentrant_provider, NULL,
                                                   first, NULL);
}

/* What the last reentrant call's inner step returned. */
int reentrant_result(void) { return reentrant_inner; }
"""


class ThreadsPlugin:
    """ctypes access to THREADS_PLUGIN, loaded once per module."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.library = ctypes.CDLL(str(path))
        library = self.library
        library.start_callers.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p),
        ]
        library.wait_callers.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_int)]
        library.run_callers.argtypes = [
            ctypes.c_int,
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_char_p),
            ctypes.c_int,
            ctypes.POINTER(ctypes.c_int),
        ]
        library.hold_in_c.argtypes = [ctypes.c_int]
        library.closure_stats.argtypes = [ctypes.POINTER(ctypes.c_int)]
        library.register_reentrant.argtypes = [ctypes.c_int, ctypes.c_int]

    @staticmethod
    def _recipients(recipients: List[Optional[str]]):
        array = (ctypes.c_char_p * len(recipients))()
        for index, recipient in enumerate(recipients):
            array[index] = recipient.encode() if recipient is not None else None
        return array

    def start_callers(self, recipients: List[Optional[str]], calls: int) -> None:
        array = self._recipients(recipients)
        started = self.library.start_callers(len(recipients), calls, array)
        assert started == 0, "could not start the C caller threads"

    def wait_callers(
        self, count: int, timeout: float = WAIT_SECONDS
    ) -> List[List[int]]:
        """Return [NO, IFAVAILABLE, REQUIRED, other] counts per thread."""
        counts = (ctypes.c_int * (4 * count))()
        finished = self.library.wait_callers(int(timeout * 1000), counts)
        assert finished == 0, f"C caller threads still running after {timeout} s"
        return [list(counts[4 * i : 4 * i + 4]) for i in range(count)]

    def run_callers(
        self, recipients: List[Optional[str]], calls: int, timeout: float = WAIT_SECONDS
    ) -> List[List[int]]:
        """Start C callers and join them inside one GIL-free C call."""
        count = len(recipients)
        counts = (ctypes.c_int * (4 * count))()
        finished = self.library.run_callers(
            count, calls, self._recipients(recipients), int(timeout * 1000), counts
        )
        assert finished == 0, f"C caller threads still running after {timeout} s"
        return [list(counts[4 * i : 4 * i + 4]) for i in range(count)]

    def closure_stats(self) -> List[int]:
        stats = (ctypes.c_int * 3)()
        self.library.closure_stats(stats)
        return list(stats)


@pytest.fixture(scope="module")
def plugin(build_plugin, tmp_path_factory) -> ThreadsPlugin:
    """THREADS_PLUGIN compiled like a Momentum module, loaded once."""
    directory = tmp_path_factory.mktemp("threads_plugin")
    source = directory / "threads_plugin.c"
    source.write_text(THREADS_PLUGIN)
    output = build_plugin(source, directory / "threads_plugin.so", ["-pthread"])
    ectls.load_plugin(output)
    return ThreadsPlugin(output)


def start_thread(target: Callable[[], None]) -> threading.Thread:
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread


def join_all(threads: List[threading.Thread]) -> None:
    deadline = time.monotonic() + WAIT_SECONDS
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
        assert not thread.is_alive(), f"{thread.name} did not finish: deadlock?"


def provider_names(message: Optional[Message] = None) -> List[str]:
    return [step.provider.name for step in ectls.explain(message).steps]


def reclaim() -> int:
    """Free what no call can reach and return how many retired versions
    still wait for a call to finish."""
    return int(lib.ectls_reclaim_core_use_outbound_tls_hook())


# ---- Calls during register/unregister churn --------------------------------


def test_churn_c_and_python_callers_see_whole_versions(plugin):
    """C and Python threads call while a Python and a C thread change the
    list.  Churn providers return NO and sit before the anchor, or after
    it where they never run, so every call must return IFAVAILABLE."""
    stop = threading.Event()
    errors: List[str] = []
    churn_refs: List[weakref.ref] = []
    python_calls = [0]

    def anchor(message):
        return UseTLS.IFAVAILABLE

    ectls.register_last(anchor)
    anchor_name = provider_names()[0]

    def python_churn() -> None:
        deadline = time.monotonic() + CHURN_SECONDS
        for iteration in range(CHURN_MAX_ITERATIONS):
            if time.monotonic() > deadline:
                break

            def churn_provider(message):
                return UseTLS.NO

            churn_refs.append(weakref.ref(churn_provider))
            if iteration % 2:
                registration = ectls.register_first(churn_provider)
            else:
                registration = ectls.register_last(churn_provider)
            del churn_provider
            registration.unregister()
        stop.set()

    def python_caller(explain: bool) -> None:
        message = Message("sender@example.com", "user@example.org")
        for _ in range(CHURN_MAX_ITERATIONS):
            if stop.is_set():
                break
            if explain:
                steps = ectls.explain(message).steps
                if not steps or steps[-1].provider.name != anchor_name:
                    errors.append(f"explain ended elsewhere: {steps}")
                if any(step.decision is not UseTLS.NO for step in steps[:-1]):
                    errors.append(f"a step before the anchor decided: {steps}")
            else:
                decision = ectls.call(message)
                if decision is not UseTLS.IFAVAILABLE:
                    errors.append(f"call returned {decision!r}")
            python_calls[0] += 1

    assert plugin.library.start_churn() == 0
    plugin.start_callers(["user@example.org", None], 2_000)
    threads = [
        start_thread(python_churn),
        start_thread(lambda: python_caller(explain=False)),
        start_thread(lambda: python_caller(explain=True)),
    ]
    join_all(threads)
    c_iterations = plugin.library.stop_churn()
    c_counts = plugin.wait_callers(2)

    assert errors == []
    assert python_calls[0] > 0
    assert c_iterations > 0
    assert c_counts == [[0, 2_000, 0, 0], [0, 2_000, 0, 0]]
    assert provider_names() == [anchor_name]

    ectls.clear()
    assert reclaim() == 0
    gc.collect()
    assert [ref for ref in churn_refs if ref() is not None] == []
    created, destroyed, overwritten = plugin.closure_stats()
    assert overwritten == 0
    assert created == destroyed


def test_threads_see_own_change_on_next_call():
    """Each thread prepends its own provider and checks that its next call
    runs it, and that no call after unregistering does, whatever the other
    threads do."""
    errors: List[str] = []
    rounds = 200

    def worker(number: int) -> None:
        runs: List[int] = []
        me = threading.get_ident()

        def own(message):
            # Calls on other threads run this provider too, so count only
            # the calls made on this thread.
            if threading.get_ident() == me:
                runs.append(number)
            return UseTLS.NO

        for round_number in range(rounds):
            registration = ectls.register_first(own)
            ectls.call(None)
            if len(runs) != round_number + 1:
                errors.append(f"thread {number}: own provider did not run")
                return
            registration.unregister()
            ectls.call(None)
            if len(runs) != round_number + 1:
                errors.append(f"thread {number}: unregistered provider ran")
                return

    threads = [start_thread(lambda n=n: worker(n)) for n in range(4)]
    join_all(threads)

    assert errors == []
    assert ectls.has_hook() is False


# ---- Python callback lifetime ------------------------------------------------


def test_lambda_without_references_called_from_c(plugin):
    token = object()
    func = lambda message: UseTLS.REQUIRED if token else UseTLS.NO  # noqa: E731
    func_ref = weakref.ref(func)
    ectls.register_last(func)
    del func
    gc.collect()

    assert func_ref() is not None
    assert plugin.library.call_without_message() == UseTLS.REQUIRED
    assert plugin.run_callers([None, "user@example.org"], 50) == [
        [0, 0, 50, 0],
        [0, 0, 50, 0],
    ]

    ectls.clear()
    reclaim()
    gc.collect()
    assert func_ref() is None


def test_bound_method_without_references_called_from_c(plugin):
    class Policy:
        def __init__(self) -> None:
            self.calls = 0

        def decide(self, message):
            self.calls += 1
            return UseTLS.IFAVAILABLE

    policy = Policy()
    policy_ref = weakref.ref(policy)
    registration = ectls.register_last(policy.decide)
    del policy
    gc.collect()

    assert policy_ref() is not None
    assert plugin.run_callers([None, None], 100) == [[0, 100, 0, 0], [0, 100, 0, 0]]
    assert policy_ref().calls == 200

    registration.unregister()
    assert reclaim() == 0
    del registration
    gc.collect()
    assert policy_ref() is None


@pytest.mark.parametrize("caller", ["python-thread", "c-thread"])
def test_unregister_during_inflight_call(plugin, caller):
    entered = threading.Event()
    release = threading.Event()
    results: List[UseTLS] = []

    def blocking(message):
        entered.set()
        release.wait(WAIT_SECONDS)
        return UseTLS.IFAVAILABLE

    def later(message):
        return UseTLS.REQUIRED

    blocking_ref = weakref.ref(blocking)
    registration = ectls.register_last(blocking)
    later_name = ectls.register_last(later).name
    del blocking

    if caller == "python-thread":
        thread = start_thread(lambda: results.append(ectls.call(None)))
    else:
        plugin.start_callers([None], 1)
    assert entered.wait(WAIT_SECONDS), "the provider was never entered"

    started = time.monotonic()
    registration.unregister()
    assert time.monotonic() - started < 1.0, "unregister waited for the call"
    # Calls that start now skip the unregistered provider.
    assert ectls.call(None) is UseTLS.REQUIRED
    assert provider_names() == [later_name]
    # The in-flight call pins its version, so the handle must stay alive.
    assert reclaim() >= 1
    del registration
    gc.collect()
    assert blocking_ref() is not None

    release.set()
    if caller == "python-thread":
        join_all([thread])
        assert results == [UseTLS.IFAVAILABLE]
    else:
        assert plugin.wait_callers(1) == [[0, 1, 0, 0]]
    assert reclaim() == 0
    gc.collect()
    assert blocking_ref() is None
    assert ectls.call(None) is UseTLS.REQUIRED


def test_in_flight_call_does_not_block_others(plugin):
    """While one call waits inside a provider, other threads call,
    register, unregister, clear and reclaim."""
    entered = threading.Event()
    release = threading.Event()

    def blocking(message):
        if message is not None and message.rcptto == "blocked@example.org":
            entered.set()
            release.wait(WAIT_SECONDS)
        return UseTLS.NO

    ectls.register_last(blocking)
    blocked = start_thread(lambda: ectls.call(Message(None, "blocked@example.org")))
    try:
        assert entered.wait(WAIT_SECONDS)

        extra = ectls.register_first(lambda message: UseTLS.IFAVAILABLE)
        assert ectls.call(None) is UseTLS.IFAVAILABLE
        assert plugin.run_callers([None, None], 10) == [
            [0, 10, 0, 0],
            [0, 10, 0, 0],
        ]
        extra.unregister()
        assert ectls.clear() == 1
        assert reclaim() >= 1
        assert ectls.call(None) is UseTLS.NO
    finally:
        release.set()
    join_all([blocked])
    assert reclaim() == 0


# ---- Re-entrancy -------------------------------------------------------------


def run_bounded(action: Callable[[], object]) -> object:
    """Run action on a thread and fail unless it returns within
    WAIT_SECONDS."""
    outcome: List[object] = []
    thread = start_thread(lambda: outcome.append(action()))
    thread.join(WAIT_SECONDS)
    assert not thread.is_alive(), "a re-entrant call did not return"
    assert len(outcome) == 1, "the re-entrant call raised on its thread"
    return outcome[0]


def test_provider_registers_during_call():
    added: List[ectls.Registration] = []

    def adds(message):
        if not added:
            added.append(ectls.register_first(lambda m: UseTLS.REQUIRED))
        return UseTLS.NO

    ectls.register_last(adds)

    assert run_bounded(lambda: ectls.call(None)) is UseTLS.NO
    assert len(added) == 1
    assert ectls.call(None) is UseTLS.REQUIRED


def test_provider_unregisters_itself_during_call():
    holder: List[ectls.Registration] = []

    def once(message):
        holder[0].unregister()
        return UseTLS.IFAVAILABLE

    holder.append(ectls.register_last(once))

    assert run_bounded(lambda: ectls.call(None)) is UseTLS.IFAVAILABLE
    assert ectls.has_hook() is False
    assert ectls.call(None) is UseTLS.NO


def test_provider_unregisters_later_provider_during_call():
    """The running call keeps its version: the removed provider still runs
    in it, and not in the next call."""
    later_runs: List[int] = []
    holder: List[ectls.Registration] = []

    def remover(message):
        holder[0].unregister()
        return UseTLS.NO

    def later(message):
        later_runs.append(1)
        return UseTLS.REQUIRED

    ectls.register_last(remover)
    holder.append(ectls.register_last(later))

    assert run_bounded(lambda: ectls.call(None)) is UseTLS.REQUIRED
    assert later_runs == [1]
    assert ectls.call(None) is UseTLS.NO
    assert later_runs == [1]


def test_provider_clears_list_during_call():
    later_runs: List[int] = []

    def clears(message):
        ectls.clear()
        return UseTLS.NO

    ectls.register_last(clears)
    ectls.register_last(lambda m: later_runs.append(1) or UseTLS.IFAVAILABLE)

    assert run_bounded(lambda: ectls.call(None)) is UseTLS.IFAVAILABLE
    assert later_runs == [1]
    assert ectls.has_hook() is False
    assert ectls.call(None) is UseTLS.NO


def test_provider_calls_has_hook_and_explain():
    seen: List[object] = []

    def inspects(message):
        if not seen:
            seen.append(ectls.has_hook())
            seen.append([step.decision for step in ectls.explain(message).steps])
        return UseTLS.NO

    ectls.register_last(inspects)
    ectls.register_last(lambda m: UseTLS.IFAVAILABLE)

    assert run_bounded(lambda: ectls.call(None)) is UseTLS.IFAVAILABLE
    assert seen == [True, [UseTLS.NO, UseTLS.IFAVAILABLE]]


@pytest.mark.parametrize("route", ["python", "c"])
def test_provider_calls_list_one_level_deep(plugin, route):
    inner: List[int] = []

    def nested(message):
        if not inner:
            inner.append(-1)
            if route == "python":
                inner[0] = int(ectls.call(message))
            else:
                inner[0] = plugin.library.call_without_message()
        return UseTLS.NO

    ectls.register_last(nested)
    ectls.register_last(lambda m: UseTLS.REQUIRED)

    assert run_bounded(lambda: ectls.call(None)) is UseTLS.REQUIRED
    # The inner call walks the same list: nested (which returns NO at
    # depth two) and then the REQUIRED provider.
    assert inner == [UseTLS.REQUIRED]


@pytest.mark.parametrize(
    ("action", "inner", "first_call", "next_call", "count_after"),
    [
        # action numbers are enum reentrant_action in THREADS_PLUGIN
        pytest.param(1, -1, UseTLS.NO, UseTLS.REQUIRED, 2, id="register-first"),
        pytest.param(2, 1, UseTLS.NO, UseTLS.NO, 0, id="unregister-self"),
        pytest.param(3, UseTLS.NO, UseTLS.NO, UseTLS.NO, 1, id="call-list"),
        pytest.param(4, 1, UseTLS.NO, UseTLS.NO, 1, id="has-hook"),
        pytest.param(5, 1, UseTLS.NO, UseTLS.NO, 0, id="clear"),
        pytest.param(6, 1, UseTLS.NO, UseTLS.NO, 1, id="explain"),
    ],
)
def test_c_provider_reentrant(
    plugin, action, inner, first_call, next_call, count_after
):
    assert plugin.library.register_reentrant(action, 1) == 0

    assert run_bounded(plugin.library.call_without_message) == first_call
    assert plugin.library.reentrant_result() == inner
    assert lib.ectls_count_core_use_outbound_tls_hook() == count_after
    assert plugin.library.call_without_message() == next_call


def test_c_provider_reentrant_from_c_threads(plugin):
    """A C provider that registers, run by four C threads at once: each
    call returns NO or meets a REQUIRED provider that an earlier call
    added."""
    assert plugin.library.register_reentrant(1, 0) == 0

    counts = plugin.run_callers([None] * 4, 1)

    assert sum(thread[0] + thread[2] for thread in counts) == 4
    assert lib.ectls_count_core_use_outbound_tls_hook() >= 2
    assert plugin.library.call_without_message() == UseTLS.REQUIRED


# ---- C threads into Python while the main thread is in C ---------------------


def decide_by_domain(message):
    """REQUIRED for an even digit after "d" in the domain, IFAVAILABLE for
    an odd one, NO without a message."""
    if message is None:
        return UseTLS.NO
    digit = int(message.routing_domain[1])
    return UseTLS.REQUIRED if digit % 2 == 0 else UseTLS.IFAVAILABLE


FOUR_RECIPIENTS = ["u@d0.example", "u@d1.example", "u@d2.example", None]
FOUR_EXPECTED = [
    [0, 0, 1_000, 0],
    [0, 1_000, 0, 0],
    [0, 0, 1_000, 0],
    [1_000, 0, 0, 0],
]


def test_four_c_threads_while_main_joins_in_c(plugin):
    runs: List[int] = []

    def counting(message):
        runs.append(1)
        return decide_by_domain(message)

    ectls.register_last(counting)

    counts = plugin.run_callers(FOUR_RECIPIENTS, 1_000)

    assert counts == FOUR_EXPECTED
    assert len(runs) == 4_000


def test_four_c_threads_while_main_sleeps_in_c(plugin):
    ectls.register_last(decide_by_domain)
    plugin.start_callers(FOUR_RECIPIENTS, 1_000)

    plugin.library.hold_in_c(50)
    counts = plugin.wait_callers(4)

    assert counts == FOUR_EXPECTED


def test_four_c_threads_with_python_callers(plugin):
    ectls.register_last(decide_by_domain)
    errors: List[str] = []

    def python_caller() -> None:
        message = Message(None, "u@d4.example")
        for _ in range(500):
            if ectls.call(message) is not UseTLS.REQUIRED:
                errors.append("wrong answer on a Python thread")
                return

    plugin.start_callers(FOUR_RECIPIENTS, 1_000)
    threads = [start_thread(python_caller) for _ in range(2)]
    counts = plugin.wait_callers(4)
    join_all(threads)

    assert counts == FOUR_EXPECTED
    assert errors == []
