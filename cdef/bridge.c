/*
 * bridge.c - the C half of the Python binding, compiled into the cffi
 * module (the set_source preamble includes this file, after Python.h).
 *
 * A Python provider sits in the C list as ectls_bridge_provider with a
 * cffi handle as its closure.  The bridge guards the one crossing that
 * could otherwise leak a wrong decision: cffi makes an extern "Python"
 * function return 0 (EC_USE_TLS_NO) when no Python code is attached or
 * the interpreter cannot run it.  So the Python half returns the decision
 * plus one, and everything outside 1..3 fails closed here.
 */
#include <pthread.h>
#include <stdio.h>
#include <time.h>

#include "ectls.h"

/*
 * Implemented in Python; declared as extern "Python+C" in bridge.cdef.
 * ectls_py_provider gets the handle of the caller's Message;
 * ectls_py_provider_c_message gets a message that C made (or NULL), for
 * which Python has no Message yet.  Splitting them keeps the common case
 * to two arguments, and cffi converts each argument on every call.
 */
int ectls_py_provider(void *closure, void *owner);
int ectls_py_provider_c_message(void *closure, email_message *message);
void ectls_py_destroy(void *closure);
void ectls_py_log(int level, const char *message);

/* Set by an atexit handler of ectls: from then on the interpreter is
 * shutting down and no Python provider is entered. */
static int python_exiting;

/* Bridge calls that are running Python code now, on any thread. */
static int python_calls;

/*
 * Set in a child that C code forked (fork() outside os.fork()): the
 * child has one thread, but Python's state may still record another
 * thread as the GIL's holder, so entering Python would wait forever.
 * os.fork() resets Python's state and then this flag
 * (ectls_bridge_python_forked).
 */
static int python_forked_away;

static void after_fork_child(void) {
  __atomic_store_n(&python_forked_away, 1, __ATOMIC_SEQ_CST);
}

/* Called once when ectls is imported. */
static void ectls_bridge_watch_fork(void) {
  pthread_atfork(NULL, NULL, after_fork_child);
}

/* Called by os.fork() in the child, after Python reset its own state. */
static void ectls_bridge_python_forked(void) {
  __atomic_store_n(&python_forked_away, 0, __ATOMIC_SEQ_CST);
}

/*
 * Write one line to stderr for the first 10 faults, then for the 100th,
 * 1000th and so on, so a provider failing on every call cannot flood it.
 */
static void report(const char *text) {
  static unsigned long faults;
  unsigned long count = __atomic_add_fetch(&faults, 1, __ATOMIC_RELAXED);
  unsigned long power = 100;

  while (power < count && power <= 1000000000ul)
    power *= 10;
  if (count <= 10 || count == power)
    fprintf(stderr, "ectls: error: %s (fault %lu of this kind)\n", text,
            count);
}

/* How long exit waits for calls already inside Python, in milliseconds. */
#define EXIT_WAIT_MS 2000

/*
 * Stop entering Python, then wait for the calls already inside it, so a
 * C thread's call returns its decision instead of being cut off when the
 * interpreter ends the thread.  ectls' atexit handler calls this through
 * cffi, which releases the GIL, so those calls can finish.
 */
static void ectls_bridge_set_exiting(void) {
  struct timespec millisecond = {0, 1000000};

  __atomic_store_n(&python_exiting, 1, __ATOMIC_SEQ_CST);
  for (int waited = 0; waited < EXIT_WAIT_MS &&
                       __atomic_load_n(&python_calls, __ATOMIC_SEQ_CST) > 0;
       waited++)
    nanosleep(&millisecond, NULL);
}

/*
 * Count a call into Python and return 1 when Python code can run: the
 * interpreter is initialised and ectls' atexit handler has not run.  On 0
 * the call is not counted.  Counting before testing the flag means
 * ectls_bridge_set_exiting() either counts this call or this call reads the
 * flag.  (The limited C API that the module is built against has no test
 * for finalization itself.)
 */
static int enter_python(void) {
  __atomic_add_fetch(&python_calls, 1, __ATOMIC_SEQ_CST);
  if (Py_IsInitialized() &&
      !__atomic_load_n(&python_exiting, __ATOMIC_SEQ_CST) &&
      !__atomic_load_n(&python_forked_away, __ATOMIC_SEQ_CST))
    return 1;
  __atomic_sub_fetch(&python_calls, 1, __ATOMIC_SEQ_CST);
  return 0;
}

static void leave_python(void) {
  __atomic_sub_fetch(&python_calls, 1, __ATOMIC_SEQ_CST);
}

static int ectls_bridge_provider(void *closure, email_message *message) {
  void *owner;
  int biased;

  if (!enter_python()) {
    report("a Python provider was called while the Python interpreter is "
           "not running, is exiting, or cannot run in a process forked by C "
           "code; the call yields EC_USE_TLS_REQUIRED");
    return EC_USE_TLS_REQUIRED;
  }
  owner = message != NULL ? ectls_message_get_userdata(message) : NULL;
  if (owner != NULL)
    biased = ectls_py_provider(closure, owner);
  else
    biased = ectls_py_provider_c_message(closure, message);
  leave_python();
  if (biased < 1 || biased > 3) {
    /* 0 is what cffi returns when the Python half could not run at all; the
     * Python half logs every fault it detects itself. */
    report("a Python provider could not run (no Python code attached to "
           "the bridge); the call yields EC_USE_TLS_REQUIRED");
    return EC_USE_TLS_REQUIRED;
  }
  return biased - 1;
}

/* A registration's closure is released only while Python runs; during
 * finalization the interpreter frees everything itself. */
static void ectls_bridge_destroy(void *closure) {
  if (enter_python()) {
    ectls_py_destroy(closure);
    leave_python();
  }
}

static void ectls_bridge_log(void *closure, int level, const char *message) {
  (void)closure;
  if (enter_python()) {
    ectls_py_log(level, message);
    leave_python();
  } else {
    fprintf(stderr, "ectls: %s: %s\n",
            level >= ECTLS_LOG_ERROR ? "error" : "warning", message);
  }
}
