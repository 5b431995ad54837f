/*
 * harness.c - checks libectls from C, with no Python involved.
 *
 * Usage: harness PLUGIN_DIR [EXAMPLE_DIR]
 *   PLUGIN_DIR   directory that contains tests/plugins/NAME.c built as
 *                NAME.so, which the plugin checks load
 *   EXAMPLE_DIR  directory that contains examples/NAME.c built as NAME.so.
 *                Without it the example checks are skipped.
 * build.sh builds this program and runs it with both directories.
 *
 * Prints one line "FILE:LINE [GROUP] ..." per failed check and, last, the
 * line "N passed, N failed".  Exits 0 only when no check failed.  An alarm
 * ends the program with status 1 after WATCHDOG_SECONDS, so a deadlock
 * fails the run instead of hanging it.
 */
#define _XOPEN_SOURCE 700

#include <dlfcn.h>
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "ectls.h"

#define WATCHDOG_SECONDS 120
#define THREAD_TEST_SECONDS 0.3
#define CALLER_THREADS 4
/*
 * Work that each thread does even after the time is up, so that a
 * scheduler that starves some threads (valgrind's default one does) cannot
 * leave one idle and the test without overlap.
 */
#define MIN_CALLER_CALLS 200
#define MIN_WRITER_ITERATIONS 100

/* ---- Checks ----------------------------------------------------------- */

static int checks_passed;
static int checks_failed;
static const char *current_group = "setup";

static void report_failure(const char *file, int line, const char *format,
                           ...) __attribute__((format(printf, 3, 4)));

static void report_failure(const char *file, int line, const char *format,
                           ...) {
  va_list arguments;

  checks_failed++;
  printf("%s:%d [%s] ", file, line, current_group);
  va_start(arguments, format);
  vprintf(format, arguments);
  va_end(arguments);
  putchar('\n');
  fflush(stdout);
}

static void check_true(int ok, const char *file, int line,
                       const char *expression) {
  if (ok)
    checks_passed++;
  else
    report_failure(file, line, "%s is false", expression);
}

static void check_int(long actual, long expected, const char *file, int line,
                      const char *expression) {
  if (actual == expected)
    checks_passed++;
  else
    report_failure(file, line, "%s is %ld, expected %ld", expression, actual,
                   expected);
}

static void check_string(const char *actual, const char *expected,
                         const char *file, int line, const char *expression) {
  if (actual != NULL && strcmp(actual, expected) == 0)
    checks_passed++;
  else
    report_failure(file, line, "%s is \"%s\", expected \"%s\"", expression,
                   actual != NULL ? actual : "(null)", expected);
}

static void check_contains(const char *text, const char *part,
                           const char *file, int line,
                           const char *expression) {
  if (text != NULL && strstr(text, part) != NULL)
    checks_passed++;
  else
    report_failure(file, line, "%s is \"%s\", which lacks \"%s\"", expression,
                   text != NULL ? text : "(null)", part);
}

#define CHECK(expression) \
  check_true((expression) != 0, __FILE__, __LINE__, #expression)
#define CHECK_INT(actual, expected) \
  check_int((long)(actual), (long)(expected), __FILE__, __LINE__, #actual)
#define CHECK_STR(actual, expected) \
  check_string((actual), (expected), __FILE__, __LINE__, #actual)
#define CHECK_CONTAINS(text, part) \
  check_contains((text), (part), __FILE__, __LINE__, #text)

static void on_watchdog(int signal_number) {
  static const char text[] =
      "harness timed out: a call, a change of the list or a plugin load "
      "did not return\n";
  ssize_t written = write(STDOUT_FILENO, text, sizeof text - 1);

  (void)signal_number;
  (void)written;
  _exit(1);
}

static double seconds_now(void) {
  struct timespec now;

  clock_gettime(CLOCK_MONOTONIC, &now);
  return (double)now.tv_sec + (double)now.tv_nsec / 1e9;
}

static void sleep_seconds(double seconds) {
  struct timespec delay;

  delay.tv_sec = (time_t)seconds;
  delay.tv_nsec = (long)((seconds - (double)delay.tv_sec) * 1e9);
  while (nanosleep(&delay, &delay) != 0 && errno == EINTR)
    continue;
}

/* ---- Providers and log capture shared by the groups -------------------- */

/* The names of the probes that ran, space-separated, in call order. */
static char call_log[1024];

/* A provider that appends its name to call_log and returns result. */
struct probe {
  const char *name;
  int result;
  int calls;
  email_message *last_message;
};

static void log_call(const char *name) {
  size_t used = strlen(call_log);

  snprintf(call_log + used, sizeof call_log - used, "%s%s",
           used > 0 ? " " : "", name);
}

static int probe_hook(void *closure, email_message *message) {
  struct probe *probe = closure;

  probe->calls++;
  probe->last_message = message;
  log_call(probe->name);
  return probe->result;
}

/* A different function from probe_hook with the same behaviour. */
static int other_probe_hook(void *closure, email_message *message) {
  return probe_hook(closure, message);
}

/* Returns the int its closure points to, which need not be a decision. */
static int value_hook(void *closure, email_message *message) {
  (void)message;
  return *(const int *)closure;
}

/* Records every closure it receives. */
static void *seen_closures[8];
static int seen_closure_count;

static int closure_hook(void *closure, email_message *message) {
  (void)message;
  if (seen_closure_count < 8)
    seen_closures[seen_closure_count++] = closure;
  return EC_USE_TLS_NO;
}

struct log_capture {
  atomic_int records;
  int level;
  char last[1024];
};

static struct log_capture captured;

static void capture_log(void *closure, int level, const char *message) {
  struct log_capture *capture = closure;

  atomic_fetch_add(&capture->records, 1);
  capture->level = level;
  snprintf(capture->last, sizeof capture->last, "%s", message);
}

static int destroyed_count;
static void *destroyed_closure;

static void count_destroy(void *closure) {
  destroyed_count++;
  destroyed_closure = closure;
}

/* Empty the list and reset the records that the previous group left. */
static void start_group(const char *name) {
  current_group = name;
  ectls_clear_core_use_outbound_tls_hook();
  ectls_reclaim_core_use_outbound_tls_hook();
  call_log[0] = '\0';
  seen_closure_count = 0;
  destroyed_count = 0;
  destroyed_closure = NULL;
  atomic_store(&captured.records, 0);
  captured.level = 0;
  captured.last[0] = '\0';
}

/* Run one call with a fresh call_log and return its decision. */
static int call_logged(email_message *message) {
  call_log[0] = '\0';
  return call_core_use_outbound_tls_hook(message);
}

/* ---- The list: has, order, call rule, closures ------------------------ */

static void test_empty_list(void) {
  ectls_trace *trace;
  struct probe probe = {"probe", EC_USE_TLS_REQUIRED, 0, NULL};

  start_group("empty list");
  CHECK_INT(has_core_use_outbound_tls_hook(), 0);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_NO);
  CHECK_INT(ectls_clear_core_use_outbound_tls_hook(), 0);
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &probe),
            0);

  trace = ectls_explain_core_use_outbound_tls_hook(NULL);
  CHECK(trace != NULL);
  if (trace != NULL) {
    CHECK_INT(trace->decision, EC_USE_TLS_NO);
    CHECK_INT(trace->count, 0);
  }
  ectls_trace_free(trace);
  ectls_trace_free(NULL);

  register_core_use_outbound_tls_hook_last(probe_hook, &probe);
  CHECK(has_core_use_outbound_tls_hook() != 0);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 1);
}

static void test_order(void) {
  struct probe a = {"a", EC_USE_TLS_NO, 0, NULL};
  struct probe b = {"b", EC_USE_TLS_NO, 0, NULL};
  struct probe c = {"c", EC_USE_TLS_NO, 0, NULL};
  struct probe d = {"d", EC_USE_TLS_NO, 0, NULL};
  ec_message *message = ectls_message_new();

  start_group("order");
  register_core_use_outbound_tls_hook_last(probe_hook, &a);
  register_core_use_outbound_tls_hook_first(probe_hook, &b);
  register_core_use_outbound_tls_hook_last(probe_hook, &c);
  register_core_use_outbound_tls_hook_first(probe_hook, &d);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 4);
  CHECK_INT(call_logged(message), EC_USE_TLS_NO);
  CHECK_STR(call_log, "d b a c");
  CHECK_INT(a.calls, 1);
  CHECK_INT(d.calls, 1);
  CHECK(a.last_message == message);
  CHECK(d.last_message == message);

  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK(a.last_message == NULL);
  CHECK(c.last_message == NULL);

  /* The same (hook, closure) pair runs once per registration. */
  register_core_use_outbound_tls_hook_last(probe_hook, &a);
  register_core_use_outbound_tls_hook_first(probe_hook, &a);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 6);
  call_logged(message);
  CHECK_STR(call_log, "a d b a c a");

  /* ectls_register_... with first != 0 prepends, with 0 appends. */
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(other_probe_hook, &b, 1,
                                                      NULL),
            0);
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(other_probe_hook, &c, 0,
                                                      NULL),
            0);
  call_logged(message);
  CHECK_STR(call_log, "b a d b a c a c");
  ectls_message_free(message);
}

static void test_call_rule(void) {
  struct probe no_1 = {"no_1", EC_USE_TLS_NO, 0, NULL};
  struct probe no_2 = {"no_2", EC_USE_TLS_NO, 0, NULL};
  struct probe no_3 = {"no_3", EC_USE_TLS_NO, 0, NULL};
  struct probe maybe = {"maybe", EC_USE_TLS_IFAVAILABLE, 0, NULL};
  struct probe must = {"must", EC_USE_TLS_REQUIRED, 0, NULL};
  int token_a = 0, token_b = 0;

  start_group("call rule");
  register_core_use_outbound_tls_hook_last(probe_hook, &no_1);
  register_core_use_outbound_tls_hook_last(probe_hook, &no_2);
  register_core_use_outbound_tls_hook_last(probe_hook, &no_3);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "no_1 no_2 no_3");

  register_core_use_outbound_tls_hook_last(probe_hook, &maybe);
  register_core_use_outbound_tls_hook_last(probe_hook, &must);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_IFAVAILABLE);
  CHECK_STR(call_log, "no_1 no_2 no_3 maybe");
  CHECK_INT(must.calls, 0);

  register_core_use_outbound_tls_hook_first(probe_hook, &must);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_REQUIRED);
  CHECK_STR(call_log, "must");
  CHECK_INT(no_1.calls, 2);
  CHECK_INT(maybe.calls, 1);

  /* Only the first non-zero value counts, even when a later one is larger. */
  start_group("call rule");
  register_core_use_outbound_tls_hook_last(probe_hook, &no_1);
  register_core_use_outbound_tls_hook_last(probe_hook, &maybe);
  register_core_use_outbound_tls_hook_last(probe_hook, &must);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_IFAVAILABLE);
  CHECK_STR(call_log, "no_1 maybe");

  start_group("closures");
  register_core_use_outbound_tls_hook_last(closure_hook, &token_a);
  register_core_use_outbound_tls_hook_last(closure_hook, NULL);
  register_core_use_outbound_tls_hook_first(closure_hook, &token_b);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_NO);
  CHECK_INT(seen_closure_count, 3);
  CHECK(seen_closures[0] == &token_b);
  CHECK(seen_closures[1] == &token_a);
  CHECK(seen_closures[2] == NULL);
}

/* ---- Out-of-range returns and the log handler ------------------------- */

static void test_out_of_range(void) {
  static const int values[] = {-1, 3, 7, 1000, INT_MIN, INT_MAX};
  struct probe after = {"after", EC_USE_TLS_IFAVAILABLE, 0, NULL};
  struct log_capture second;

  start_group("out of range");
  ectls_set_log_handler(capture_log, &captured);
  for (size_t i = 0; i < sizeof values / sizeof values[0]; i++) {
    char text[32];
    int value = values[i];
    ectls_trace *trace;

    start_group("out of range");
    register_core_use_outbound_tls_hook_last(value_hook, &value);
    register_core_use_outbound_tls_hook_last(probe_hook, &after);
    after.calls = 0;
    CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_REQUIRED);
    CHECK_INT(after.calls, 0);
    CHECK_INT(atomic_load(&captured.records), 1);
    CHECK_INT(captured.level, ECTLS_LOG_ERROR);
    snprintf(text, sizeof text, "%d", value);
    CHECK_CONTAINS(captured.last, text);

    trace = ectls_explain_core_use_outbound_tls_hook(NULL);
    CHECK(trace != NULL);
    if (trace != NULL) {
      CHECK_INT(trace->decision, EC_USE_TLS_REQUIRED);
      CHECK_INT(trace->count, 1);
      if (trace->count == 1) {
        CHECK_INT(trace->steps[0].returned, value);
        CHECK_INT(trace->steps[0].decision, EC_USE_TLS_REQUIRED);
      }
    }
    ectls_trace_free(trace);
    CHECK_INT(atomic_load(&captured.records), 2);
    CHECK_INT(after.calls, 0);
  }

  /* A new handler receives the records from then on, the old one none. */
  start_group("log handler");
  memset(&second, 0, sizeof second);
  atomic_init(&second.records, 0);
  ectls_set_log_handler(capture_log, &second);
  {
    int value = 3;
    register_core_use_outbound_tls_hook_last(value_hook, &value);
    CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_REQUIRED);
    ectls_clear_core_use_outbound_tls_hook();
  }
  CHECK_INT(atomic_load(&second.records), 1);
  CHECK_INT(atomic_load(&captured.records), 0);
  ectls_set_log_handler(capture_log, &captured);

  /* A NULL provider is not registered, and the attempt is logged. */
  register_core_use_outbound_tls_hook_first(NULL, NULL);
  register_core_use_outbound_tls_hook_last(NULL, NULL);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
  CHECK_INT(atomic_load(&captured.records), 2);
  CHECK_INT(captured.level, ECTLS_LOG_ERROR);
  CHECK_INT(atomic_load(&second.records), 1);
}

/* ---- Unregister, clear, destroy callbacks ----------------------------- */

static void test_unregister(void) {
  struct probe a = {"a", EC_USE_TLS_NO, 0, NULL};
  struct probe b = {"b", EC_USE_TLS_NO, 0, NULL};

  start_group("unregister");
  register_core_use_outbound_tls_hook_last(probe_hook, &a);
  register_core_use_outbound_tls_hook_last(probe_hook, &b);
  register_core_use_outbound_tls_hook_last(probe_hook, &a);
  call_logged(NULL);
  CHECK_STR(call_log, "a b a");

  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &a), 1);
  call_logged(NULL);
  CHECK_STR(call_log, "b a");
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);

  /* Both the function and the closure must match. */
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(other_probe_hook, &a),
            0);
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, NULL), 0);
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(NULL, &a), 0);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);

  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &a), 1);
  call_logged(NULL);
  CHECK_STR(call_log, "b");
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &a), 0);
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &b), 1);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
  CHECK_INT(has_core_use_outbound_tls_hook(), 0);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "");
}

static void test_clear_and_destroy(void) {
  struct probe a = {"a", EC_USE_TLS_NO, 0, NULL};
  struct probe b = {"b", EC_USE_TLS_NO, 0, NULL};
  struct probe c = {"c", EC_USE_TLS_NO, 0, NULL};

  start_group("clear");
  register_core_use_outbound_tls_hook_last(probe_hook, &a);
  register_core_use_outbound_tls_hook_last(probe_hook, &b);
  register_core_use_outbound_tls_hook_first(probe_hook, &c);
  CHECK_INT(ectls_clear_core_use_outbound_tls_hook(), 3);
  CHECK_INT(has_core_use_outbound_tls_hook(), 0);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "");
  CHECK_INT(ectls_clear_core_use_outbound_tls_hook(), 0);

  start_group("destroy callback");
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(NULL, &a, 1,
                                                      count_destroy),
            EINVAL);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
  CHECK_INT(ectls_reclaim_core_use_outbound_tls_hook(), 0);
  CHECK_INT(destroyed_count, 0);

  CHECK_INT(ectls_register_core_use_outbound_tls_hook(probe_hook, &a, 1,
                                                      count_destroy),
            0);
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(probe_hook, &b, 0,
                                                      count_destroy),
            0);
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(probe_hook, &c, 1,
                                                      count_destroy),
            0);
  call_logged(NULL);
  CHECK_STR(call_log, "c a b");
  CHECK_INT(destroyed_count, 0);

  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &a), 1);
  CHECK_INT(ectls_reclaim_core_use_outbound_tls_hook(), 0);
  CHECK_INT(destroyed_count, 1);
  CHECK(destroyed_closure == &a);

  CHECK_INT(ectls_clear_core_use_outbound_tls_hook(), 2);
  CHECK_INT(ectls_reclaim_core_use_outbound_tls_hook(), 0);
  CHECK_INT(destroyed_count, 3);
  CHECK_INT(ectls_reclaim_core_use_outbound_tls_hook(), 0);
  CHECK_INT(destroyed_count, 3);
}

/* ---- Explain and describe --------------------------------------------- */

static void test_explain(void) {
  struct probe no_1 = {"no_1", EC_USE_TLS_NO, 0, NULL};
  struct probe no_2 = {"no_2", EC_USE_TLS_NO, 0, NULL};
  struct probe maybe = {"maybe", EC_USE_TLS_IFAVAILABLE, 0, NULL};
  struct probe must = {"must", EC_USE_TLS_REQUIRED, 0, NULL};
  ec_message *message = ectls_message_new();
  const char *symbol = "unset", *object = "unset";
  ectls_trace *trace;

  start_group("explain");
  register_core_use_outbound_tls_hook_last(probe_hook, &no_1);
  register_core_use_outbound_tls_hook_last(other_probe_hook, &no_2);
  register_core_use_outbound_tls_hook_last(probe_hook, &maybe);
  register_core_use_outbound_tls_hook_last(probe_hook, &must);

  call_log[0] = '\0';
  trace = ectls_explain_core_use_outbound_tls_hook(message);
  CHECK(trace != NULL);
  if (trace != NULL) {
    CHECK_INT(trace->decision, EC_USE_TLS_IFAVAILABLE);
    CHECK_INT(trace->count, 3);
  }
  if (trace != NULL && trace->count == 3) {
    CHECK(trace->steps[0].hook == probe_hook);
    CHECK(trace->steps[0].closure == &no_1);
    CHECK_INT(trace->steps[0].returned, EC_USE_TLS_NO);
    CHECK_INT(trace->steps[0].decision, EC_USE_TLS_NO);
    CHECK(trace->steps[0].symbol == NULL);
    CHECK(trace->steps[0].plugin == NULL);
    CHECK(trace->steps[1].hook == other_probe_hook);
    CHECK(trace->steps[1].closure == &no_2);
    CHECK_INT(trace->steps[1].decision, EC_USE_TLS_NO);
    CHECK(trace->steps[2].hook == probe_hook);
    CHECK(trace->steps[2].closure == &maybe);
    CHECK_INT(trace->steps[2].returned, EC_USE_TLS_IFAVAILABLE);
    CHECK_INT(trace->steps[2].decision, EC_USE_TLS_IFAVAILABLE);
  }
  ectls_trace_free(trace);
  /* An explained call runs each provider once, like a plain call. */
  CHECK_STR(call_log, "no_1 no_2 maybe");
  CHECK(no_1.last_message == message);
  CHECK_INT(must.calls, 0);

  /* A call that ends on NO lists every provider, and none decided. */
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &maybe),
            1);
  CHECK_INT(ectls_unregister_core_use_outbound_tls_hook(probe_hook, &must),
            1);
  trace = ectls_explain_core_use_outbound_tls_hook(NULL);
  CHECK(trace != NULL);
  if (trace != NULL) {
    CHECK_INT(trace->decision, EC_USE_TLS_NO);
    CHECK_INT(trace->count, 2);
    for (int i = 0; i < trace->count; i++)
      CHECK_INT(trace->steps[i].decision, EC_USE_TLS_NO);
  }
  ectls_trace_free(trace);

  start_group("describe hook");
  CHECK_INT(ectls_describe_hook(NULL, &symbol, &object), 0);
  CHECK(symbol == NULL);
  CHECK(object == NULL);
  /* probe_hook is static, so no exported symbol starts at it. */
  symbol = "unset";
  CHECK_INT(ectls_describe_hook(probe_hook, &symbol, &object), 1);
  CHECK(symbol == NULL);
  CHECK(object != NULL);
  /* An exported function of libectls is named with its library. */
  CHECK_INT(ectls_describe_hook(
                (ec_hook_core_use_outbound_tls_func_t *)(void (*)(void))
                    ectls_message_new,
                &symbol, &object),
            1);
  CHECK_STR(symbol, "ectls_message_new");
  CHECK_CONTAINS(object, "libectls.so");
  ectls_message_free(message);
}

/* ---- Message API ------------------------------------------------------ */

static void test_message_envelope(void) {
  ec_message *message = ectls_message_new();
  char address[ECTLS_ADDRESS_MAXLEN + 2];
  static const char *const invalid[] = {"a\rb@example.org", "a\nb@example.org",
                                        "<a@example.org", "a@example.org>"};

  start_group("message envelope");
  CHECK(message != NULL);
  if (message == NULL)
    return;
  CHECK_STR(ec_message_get_mailfrom(message), "");
  CHECK_STR(ec_message_get_rcptto(message), "");

  CHECK_INT(ectls_message_set_mailfrom(message, "sender@example.org"), 1);
  CHECK_STR(ec_message_get_mailfrom(message),
            "MAIL FROM:<sender@example.org>\r\n");
  CHECK_INT(ectls_message_set_rcptto(message, "rcpt@example.net"), 1);
  CHECK_STR(ec_message_get_rcptto(message), "RCPT TO:<rcpt@example.net>\r\n");

  CHECK_INT(ectls_message_set_mailfrom(message, ""), 1);
  CHECK_STR(ec_message_get_mailfrom(message), "MAIL FROM:<>\r\n");

  /* An invalid address is rejected and leaves the old one in place. */
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++) {
    CHECK_INT(ectls_message_set_mailfrom(message, invalid[i]), 0);
    CHECK_INT(ectls_message_set_rcptto(message, invalid[i]), 0);
  }
  CHECK_INT(ectls_message_set_mailfrom(message, NULL), 0);
  CHECK_INT(ectls_message_set_rcptto(message, NULL), 0);
  CHECK_STR(ec_message_get_mailfrom(message), "MAIL FROM:<>\r\n");
  CHECK_STR(ec_message_get_rcptto(message), "RCPT TO:<rcpt@example.net>\r\n");

  /* ECTLS_ADDRESS_MAXLEN bytes are accepted, one more is not. */
  memset(address, 'a', sizeof address);
  memcpy(address, "x@", 2);
  address[ECTLS_ADDRESS_MAXLEN] = '\0';
  CHECK_INT(ectls_message_set_rcptto(message, address), 1);
  CHECK_INT(strlen(ec_message_get_rcptto(message)),
            strlen("RCPT TO:<>\r\n") + ECTLS_ADDRESS_MAXLEN);
  address[ECTLS_ADDRESS_MAXLEN] = 'a';
  address[ECTLS_ADDRESS_MAXLEN + 1] = '\0';
  CHECK_INT(ectls_message_set_rcptto(message, address), 0);
  CHECK_INT(ectls_message_set_mailfrom(message, address), 0);
  CHECK_STR(ec_message_get_mailfrom(message), "MAIL FROM:<>\r\n");

  ectls_message_free(message);
}

static void test_message_routing_domain(void) {
  ec_message *message = ectls_message_new();
  char buf[ECTLS_DOMAIN_BUFLEN];
  char domain[ECTLS_DOMAIN_BUFLEN];
  static const char *const invalid[] = {"",           "a b.example",
                                        "a@b.example", "<b.example",
                                        "b.example>", "b.example\r",
                                        "b\n.example"};

  start_group("routing domain");
  if (message == NULL) {
    CHECK(message != NULL);
    return;
  }
  strcpy(buf, "stale");
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 0);
  CHECK_STR(buf, "");

  /* From the recipient: the part after the last '@', in lower case. */
  CHECK_INT(ectls_message_set_rcptto(message, "User@Mail.Example.ORG"), 1);
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 1);
  CHECK_STR(buf, "mail.example.org");
  CHECK_INT(ectls_message_set_rcptto(message, "\"a@b\"@C.Example"), 1);
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 1);
  CHECK_STR(buf, "c.example");

  /* A recipient without a domain gives none. */
  CHECK_INT(ectls_message_set_rcptto(message, "postmaster"), 1);
  strcpy(buf, "stale");
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 0);
  CHECK_STR(buf, "");
  CHECK_INT(ectls_message_set_rcptto(message, "user@"), 1);
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 0);
  /* An empty recipient is rejected and the old one stays. */
  CHECK_INT(ectls_message_set_rcptto(message, ""), 0);
  CHECK_STR(ec_message_get_rcptto(message), "RCPT TO:<user@>\r\n");
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 0);

  /* The override wins over the recipient until it is reset with NULL. */
  CHECK_INT(ectls_message_set_rcptto(message, "user@example.org"), 1);
  CHECK_INT(ectls_message_set_routing_domain(message, "Relay.Example.NET"), 1);
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 1);
  CHECK_STR(buf, "relay.example.net");
  for (size_t i = 0; i < sizeof invalid / sizeof invalid[0]; i++)
    CHECK_INT(ectls_message_set_routing_domain(message, invalid[i]), 0);
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 1);
  CHECK_STR(buf, "relay.example.net");
  CHECK_INT(ectls_message_set_routing_domain(message, NULL), 1);
  CHECK_INT(ec_message_get_routing_domain(message, buf, sizeof buf), 1);
  CHECK_STR(buf, "example.org");

  /* A buffer too small gets "" and 0: the domain is never truncated. */
  strcpy(buf, "stale");
  CHECK_INT(ec_message_get_routing_domain(message, buf, 11), 0);
  CHECK_STR(buf, "");
  CHECK_INT(ec_message_get_routing_domain(message, buf, 12), 1);
  CHECK_STR(buf, "example.org");
  strcpy(buf, "stale");
  CHECK_INT(ec_message_get_routing_domain(message, buf, 1), 0);
  CHECK_STR(buf, "");
  CHECK_INT(ec_message_get_routing_domain(message, buf, 0), 0);
  CHECK_STR(buf, "");
  CHECK_INT(ec_message_get_routing_domain(message, NULL, 64), 0);

  /* ECTLS_DOMAIN_BUFLEN - 3 bytes are accepted, one more is not. */
  memset(domain, 'd', sizeof domain);
  domain[ECTLS_DOMAIN_BUFLEN - 3] = '\0';
  CHECK_INT(ectls_message_set_routing_domain(message, domain), 1);
  CHECK_INT(ec_message_get_routing_domain(message, buf, ECTLS_DOMAIN_BUFLEN),
            1);
  CHECK_STR(buf, domain);
  CHECK_INT(ec_message_get_routing_domain(message, buf,
                                          ECTLS_DOMAIN_BUFLEN - 3),
            0);
  CHECK_INT(ec_message_get_routing_domain(message, buf,
                                          ECTLS_DOMAIN_BUFLEN - 2),
            1);
  domain[ECTLS_DOMAIN_BUFLEN - 3] = 'd';
  domain[ECTLS_DOMAIN_BUFLEN - 2] = '\0';
  CHECK_INT(ectls_message_set_routing_domain(message, domain), 0);

  ectls_message_free(message);
}

static void test_message_context(int which, const char *group) {
  ec_message *message = ectls_message_new();
  int other = which == ECMESS_CTX_CONN ? ECMESS_CTX_MESS : ECMESS_CTX_CONN;
  const char *key;

  start_group(group);
  if (message == NULL) {
    CHECK(message != NULL);
    return;
  }
  CHECK_INT(ec_message_context_size(message, which), 0);
  CHECK(ec_message_context_firstkey(message, which) == NULL);
  CHECK_STR(ec_message_context_get(message, which, "missing"), "");
  CHECK_INT(ec_message_context_exists(message, which, "missing"), 0);
  CHECK_INT(ec_message_context_delete(message, which, "missing"), 0);

  CHECK_INT(ec_message_context_set(message, which, "alpha", "1"), 1);
  CHECK_INT(ec_message_context_set(message, which, "beta", "2"), 1);
  CHECK_INT(ec_message_context_set(message, which, "gamma", ""), 1);
  CHECK_INT(ec_message_context_size(message, which), 3);
  CHECK_STR(ec_message_context_get(message, which, "alpha"), "1");
  CHECK_STR(ec_message_context_get(message, which, "gamma"), "");
  CHECK_INT(ec_message_context_exists(message, which, "gamma"), 1);

  /* The other dictionary is separate. */
  CHECK_INT(ec_message_context_size(message, other), 0);
  CHECK_INT(ec_message_context_exists(message, other, "alpha"), 0);
  CHECK_STR(ec_message_context_get(message, other, "alpha"), "");

  /* Setting a key again replaces the value and keeps its place. */
  CHECK_INT(ec_message_context_set(message, which, "alpha", "one"), 1);
  CHECK_STR(ec_message_context_get(message, which, "alpha"), "one");
  CHECK_INT(ec_message_context_size(message, which), 3);

  /* The walk is in insertion order. */
  key = ec_message_context_firstkey(message, which);
  CHECK_STR(key, "alpha");
  key = ec_message_context_nextkey(message, which, key);
  CHECK_STR(key, "beta");
  key = ec_message_context_nextkey(message, which, key);
  CHECK_STR(key, "gamma");
  CHECK(ec_message_context_nextkey(message, which, key) == NULL);
  CHECK(ec_message_context_nextkey(message, which, "missing") == NULL);
  CHECK(ec_message_context_nextkey(message, which, NULL) == NULL);

  /* Deleting keeps the order of the other keys. */
  CHECK_INT(ec_message_context_delete(message, which, "alpha"), 1);
  CHECK_INT(ec_message_context_delete(message, which, "alpha"), 0);
  CHECK_INT(ec_message_context_exists(message, which, "alpha"), 0);
  CHECK_STR(ec_message_context_get(message, which, "alpha"), "");
  CHECK_INT(ec_message_context_size(message, which), 2);
  CHECK_STR(ec_message_context_firstkey(message, which), "beta");
  CHECK_INT(ec_message_context_set(message, which, "alpha", "again"), 1);
  CHECK_STR(ec_message_context_nextkey(message, which, "gamma"), "alpha");

  /* NULL key or value is rejected and changes nothing. */
  CHECK_INT(ec_message_context_set(message, which, NULL, "x"), 0);
  CHECK_INT(ec_message_context_set(message, which, "beta", NULL), 0);
  CHECK_STR(ec_message_context_get(message, which, "beta"), "2");
  CHECK_INT(ec_message_context_size(message, which), 3);
  CHECK_STR(ec_message_context_get(message, which, NULL), "");
  CHECK_INT(ec_message_context_exists(message, which, NULL), 0);
  CHECK_INT(ec_message_context_delete(message, which, NULL), 0);

  /* An invalid which value behaves like a NULL message. */
  CHECK_STR(ec_message_context_get(message, 2, "beta"), "");
  CHECK_INT(ec_message_context_set(message, 2, "beta", "x"), 0);
  CHECK_INT(ec_message_context_set(message, -1, "beta", "x"), 0);
  CHECK_INT(ec_message_context_exists(message, 2, "beta"), 0);
  CHECK_INT(ec_message_context_delete(message, 2, "beta"), 0);
  CHECK_INT(ec_message_context_size(message, 2), 0);
  CHECK(ec_message_context_firstkey(message, 2) == NULL);
  CHECK(ec_message_context_nextkey(message, 2, "beta") == NULL);
  CHECK_STR(ec_message_context_get(message, which, "beta"), "2");

  /* More keys than the first allocation holds. */
  for (int i = 0; i < 40; i++) {
    char name[16];
    snprintf(name, sizeof name, "key%d", i);
    CHECK_INT(ec_message_context_set(message, which, name, name), 1);
  }
  CHECK_INT(ec_message_context_size(message, which), 43);
  CHECK_STR(ec_message_context_get(message, which, "key39"), "key39");
  CHECK_STR(ec_message_context_nextkey(message, which, "key38"), "key39");

  ectls_message_free(message);
}

static void test_message_null(void) {
  char buf[16] = "stale";
  int token = 0;
  ec_message *message = ectls_message_new();

  start_group("NULL message");
  CHECK_STR(ec_message_get_mailfrom(NULL), "");
  CHECK_STR(ec_message_get_rcptto(NULL), "");
  CHECK_INT(ec_message_get_routing_domain(NULL, buf, sizeof buf), 0);
  CHECK_STR(buf, "");
  CHECK_INT(ectls_message_set_mailfrom(NULL, "a@example.org"), 0);
  CHECK_INT(ectls_message_set_rcptto(NULL, "a@example.org"), 0);
  CHECK_INT(ectls_message_set_routing_domain(NULL, "example.org"), 0);
  CHECK_INT(ectls_message_set_routing_domain(NULL, NULL), 0);
  for (int which = ECMESS_CTX_CONN; which <= ECMESS_CTX_MESS; which++) {
    CHECK_STR(ec_message_context_get(NULL, which, "k"), "");
    CHECK_INT(ec_message_context_set(NULL, which, "k", "v"), 0);
    CHECK_INT(ec_message_context_exists(NULL, which, "k"), 0);
    CHECK_INT(ec_message_context_delete(NULL, which, "k"), 0);
    CHECK_INT(ec_message_context_size(NULL, which), 0);
    CHECK(ec_message_context_firstkey(NULL, which) == NULL);
    CHECK(ec_message_context_nextkey(NULL, which, "k") == NULL);
  }
  ectls_message_set_userdata(NULL, &token);
  CHECK(ectls_message_get_userdata(NULL) == NULL);
  ectls_message_free(NULL);

  start_group("userdata");
  CHECK(ectls_message_get_userdata(message) == NULL);
  ectls_message_set_userdata(message, &token);
  CHECK(ectls_message_get_userdata(message) == &token);
  ectls_message_set_userdata(message, NULL);
  CHECK(ectls_message_get_userdata(message) == NULL);
  ectls_message_free(message);
}

/* ---- Changes and calls from inside a call ----------------------------- */

/* Registers `added` at the tail during its first call, and returns NO. */
struct adder {
  struct probe *added;
  int done;
};

static int adding_hook(void *closure, email_message *message) {
  struct adder *adder = closure;

  (void)message;
  log_call("adder");
  if (!adder->done) {
    adder->done = 1;
    register_core_use_outbound_tls_hook_last(probe_hook, adder->added);
  }
  return EC_USE_TLS_NO;
}

/* Unregisters victim (probe_hook with that closure) and returns NO. */
static int removing_hook(void *closure, email_message *message) {
  (void)message;
  log_call("remover");
  ectls_unregister_core_use_outbound_tls_hook(probe_hook, closure);
  return EC_USE_TLS_NO;
}

/* Unregisters itself and returns REQUIRED. */
static int self_removing_hook(void *closure, email_message *message) {
  (void)message;
  ectls_unregister_core_use_outbound_tls_hook(self_removing_hook, closure);
  return EC_USE_TLS_REQUIRED;
}

/* Empties the list and returns NO. */
static int clearing_hook(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  log_call("clearer");
  ectls_clear_core_use_outbound_tls_hook();
  return EC_USE_TLS_NO;
}

/*
 * Removes the probe `victim`, which has a destroy callback, and reclaims
 * while the call that runs this provider still walks the old list.
 */
struct reclaimer {
  struct probe *victim;
  int waiting;
  int destroyed_during_call;
};

static int reclaiming_hook(void *closure, email_message *message) {
  struct reclaimer *reclaimer = closure;

  (void)message;
  ectls_unregister_core_use_outbound_tls_hook(probe_hook, reclaimer->victim);
  reclaimer->waiting = ectls_reclaim_core_use_outbound_tls_hook();
  reclaimer->destroyed_during_call = destroyed_count;
  return EC_USE_TLS_NO;
}

/* Runs the list again, one level deep, and returns NO. */
struct nested {
  int depth;
  int inner_decision;
  int inner_trace_decision;
  int inner_trace_count;
};

static int nesting_hook(void *closure, email_message *message) {
  struct nested *nested = closure;

  if (nested->depth > 0)
    return EC_USE_TLS_NO;
  nested->depth++;
  nested->inner_decision = call_core_use_outbound_tls_hook(message);
  {
    ectls_trace *trace = ectls_explain_core_use_outbound_tls_hook(message);
    if (trace != NULL) {
      nested->inner_trace_decision = trace->decision;
      nested->inner_trace_count = trace->count;
    }
    ectls_trace_free(trace);
  }
  nested->depth--;
  return EC_USE_TLS_NO;
}

static void test_reentrancy(void) {
  struct probe late = {"late", EC_USE_TLS_NO, 0, NULL};
  struct probe victim = {"victim", EC_USE_TLS_IFAVAILABLE, 0, NULL};
  struct probe maybe = {"maybe", EC_USE_TLS_IFAVAILABLE, 0, NULL};
  struct adder adder = {&late, 0};
  struct nested nested = {0, -1, -1, -1};
  struct probe doomed = {"doomed", EC_USE_TLS_IFAVAILABLE, 0, NULL};
  struct reclaimer reclaimer = {&doomed, -1, -1};
  int token = 0;
  double started = seconds_now();

  start_group("register during a call");
  register_core_use_outbound_tls_hook_last(adding_hook, &adder);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "adder");
  CHECK_INT(late.calls, 0);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "adder late");

  start_group("unregister during a call");
  register_core_use_outbound_tls_hook_last(removing_hook, &victim);
  register_core_use_outbound_tls_hook_last(probe_hook, &victim);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_IFAVAILABLE);
  CHECK_STR(call_log, "remover victim");
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 1);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "remover");
  CHECK_INT(victim.calls, 1);

  start_group("unregister itself during a call");
  register_core_use_outbound_tls_hook_last(self_removing_hook, &token);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_REQUIRED);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_NO);

  start_group("clear during a call");
  register_core_use_outbound_tls_hook_last(clearing_hook, NULL);
  register_core_use_outbound_tls_hook_last(probe_hook, &maybe);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_IFAVAILABLE);
  CHECK_STR(call_log, "clearer maybe");
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "");

  start_group("call during a call");
  register_core_use_outbound_tls_hook_last(nesting_hook, &nested);
  register_core_use_outbound_tls_hook_last(probe_hook, &maybe);
  maybe.calls = 0;
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(nested.inner_decision, EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(nested.inner_trace_decision, EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(nested.inner_trace_count, 2);
  CHECK_INT(maybe.calls, 3);

  /* A destroy callback waits for the call that still walks the old list. */
  start_group("reclaim during a call");
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(reclaiming_hook,
                                                      &reclaimer, 0, NULL),
            0);
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(probe_hook, &doomed, 0,
                                                      count_destroy),
            0);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_IFAVAILABLE);
  CHECK_STR(call_log, "doomed");
  CHECK(reclaimer.waiting > 0);
  CHECK_INT(reclaimer.destroyed_during_call, 0);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 1);
  CHECK_INT(ectls_reclaim_core_use_outbound_tls_hook(), 0);
  CHECK_INT(destroyed_count, 1);
  CHECK(destroyed_closure == &doomed);

  /* The groups above must return quickly, and the watchdog catches a hang. */
  current_group = "changes during a call";
  CHECK(seconds_now() - started < 5.0);
  CHECK_INT(ectls_clear_core_use_outbound_tls_hook(), 1);
  CHECK_INT(ectls_reclaim_core_use_outbound_tls_hook(), 0);
}

/* ---- Threads ---------------------------------------------------------- */

static atomic_int stop_threads;
static atomic_int thread_destroyed;

static int always_required(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_REQUIRED;
}

static int always_no(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_NO;
}

static int always_ifavailable(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_IFAVAILABLE;
}

static void count_destroy_atomic(void *closure) {
  (void)closure;
  atomic_fetch_add(&thread_destroyed, 1);
}

/*
 * The list always contains always_required.  The writer adds always_no in
 * front of it and always_ifavailable behind it, so every call must yield
 * REQUIRED, decided by always_required after NO steps only.
 */
struct caller {
  long max_calls; /* stop after this many calls, or 0 to run until stopped */
  long min_calls; /* calls to make even when stopped earlier */
  long calls;
  long wrong_decisions;
  long wrong_traces;
};

static int trace_is_consistent(const ectls_trace *trace) {
  if (trace == NULL || trace->count < 1 ||
      trace->decision != EC_USE_TLS_REQUIRED)
    return 0;
  for (int i = 0; i < trace->count - 1; i++)
    if (trace->steps[i].hook != always_no || trace->steps[i].decision != 0)
      return 0;
  return trace->steps[trace->count - 1].hook == always_required &&
         trace->steps[trace->count - 1].decision == EC_USE_TLS_REQUIRED;
}

static void *run_caller(void *argument) {
  struct caller *caller = argument;
  ec_message *message = ectls_message_new();

  ectls_message_set_rcptto(message, "user@example.org");
  while (caller->calls < caller->min_calls ||
         (!atomic_load(&stop_threads) &&
          (caller->max_calls == 0 || caller->calls < caller->max_calls))) {
    if (call_core_use_outbound_tls_hook(message) != EC_USE_TLS_REQUIRED)
      caller->wrong_decisions++;
    if (caller->calls % 64 == 0) {
      ectls_trace *trace = ectls_explain_core_use_outbound_tls_hook(message);
      if (!trace_is_consistent(trace))
        caller->wrong_traces++;
      ectls_trace_free(trace);
      sched_yield();
    }
    caller->calls++;
  }
  ectls_message_free(message);
  return NULL;
}

struct writer {
  long iterations;
  long registrations;
  long failures;
};

static void *run_writer(void *argument) {
  struct writer *writer = argument;
  int tokens[8];

  for (long n = 0;
       n < MIN_WRITER_ITERATIONS || !atomic_load(&stop_threads); n++) {
    int *token = &tokens[n % 8];

    if (ectls_register_core_use_outbound_tls_hook(always_no, token, n & 1,
                                                  count_destroy_atomic) != 0)
      writer->failures++;
    if (ectls_register_core_use_outbound_tls_hook(
            always_ifavailable, token, 0, count_destroy_atomic) != 0)
      writer->failures++;
    writer->registrations += 2;
    if (n >= 4) {
      int *old = &tokens[(n - 4) % 8];
      if (ectls_unregister_core_use_outbound_tls_hook(always_no, old) != 1)
        writer->failures++;
      if (ectls_unregister_core_use_outbound_tls_hook(always_ifavailable,
                                                      old) != 1)
        writer->failures++;
    }
    writer->iterations++;
    if (n % 8 == 0)
      sched_yield();
  }
  return NULL;
}

static void test_threads(void) {
  pthread_t callers[CALLER_THREADS], writer_thread;
  struct caller caller_state[CALLER_THREADS];
  struct writer writer = {0, 0, 0};
  long short_lived = 0, short_lived_wrong = 0, removed;
  int started[CALLER_THREADS];
  int writer_started;
  double deadline;

  start_group("threads");
  atomic_store(&stop_threads, 0);
  atomic_store(&thread_destroyed, 0);
  CHECK_INT(ectls_register_core_use_outbound_tls_hook(
                always_required, NULL, 0, count_destroy_atomic),
            0);

  for (int i = 0; i < CALLER_THREADS; i++) {
    memset(&caller_state[i], 0, sizeof caller_state[i]);
    caller_state[i].min_calls = MIN_CALLER_CALLS;
    started[i] = pthread_create(&callers[i], NULL, run_caller,
                                &caller_state[i]) == 0;
    CHECK(started[i]);
  }
  writer_started = pthread_create(&writer_thread, NULL, run_writer,
                                  &writer) == 0;
  CHECK(writer_started);

  /* Meanwhile, threads that make a few calls and exit, so that reader
   * records are recycled while the others run. */
  deadline = seconds_now() + THREAD_TEST_SECONDS;
  while (seconds_now() < deadline) {
    struct caller short_caller = {50, 0, 0, 0, 0};
    pthread_t thread;

    if (pthread_create(&thread, NULL, run_caller, &short_caller) != 0) {
      sleep_seconds(0.01);
      continue;
    }
    pthread_join(thread, NULL);
    short_lived++;
    short_lived_wrong += short_caller.wrong_decisions;
    short_lived_wrong += short_caller.wrong_traces;
  }
  atomic_store(&stop_threads, 1);

  for (int i = 0; i < CALLER_THREADS; i++) {
    if (!started[i])
      continue;
    pthread_join(callers[i], NULL);
    CHECK(caller_state[i].calls >= MIN_CALLER_CALLS);
    CHECK_INT(caller_state[i].wrong_decisions, 0);
    CHECK_INT(caller_state[i].wrong_traces, 0);
  }
  if (writer_started)
    pthread_join(writer_thread, NULL);
  CHECK(writer.iterations >= MIN_WRITER_ITERATIONS);
  CHECK_INT(writer.failures, 0);
  CHECK(short_lived > 0);
  CHECK_INT(short_lived_wrong, 0);
  CHECK_INT(atomic_load(&captured.records), 0);

  /* The writer removes the pair it added four iterations before. */
  removed = 2 * (writer.iterations > 4 ? writer.iterations - 4 : 0);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(),
            1 + writer.registrations - removed);

  /* With no call running, every registration is destroyed once. */
  ectls_clear_core_use_outbound_tls_hook();
  CHECK_INT(ectls_reclaim_core_use_outbound_tls_hook(), 0);
  CHECK_INT(atomic_load(&thread_destroyed), writer.registrations + 1);
}

/* ---- Plugins ---------------------------------------------------------- */

#define ERRBUF_LEN 512
/* Directories are kept short enough that a file name always fits after them. */
#define DIR_LEN 1024
#define PATH_LEN (DIR_LEN + 64)

struct plugin_paths {
  char dir[DIR_LEN];
  char temp_dir[DIR_LEN];
  char missing[PATH_LEN];
  char text_file[PATH_LEN];
  char decisions_link[PATH_LEN];
  char init_two_link[PATH_LEN];
};

static void plugin_path(char *buf, size_t len, const char *dir,
                        const char *name) {
  snprintf(buf, len, "%s/%s.so", dir, name);
}

/* Create the files that the plugin checks use, and return 1 on success. */
static int make_temp_files(struct plugin_paths *paths) {
  const char *tmp = getenv("TMPDIR");
  char target[PATH_LEN], *resolved;
  FILE *file;
  int ok = 1;

  snprintf(paths->temp_dir, sizeof paths->temp_dir, "%s/ectls-harness-XXXXXX",
           tmp != NULL && tmp[0] != '\0' ? tmp : "/tmp");
  if (mkdtemp(paths->temp_dir) == NULL) {
    printf("harness: cannot create a directory from %s: %s\n",
           paths->temp_dir, strerror(errno));
    return 0;
  }
  snprintf(paths->missing, sizeof paths->missing, "%s/missing.so",
           paths->temp_dir);
  snprintf(paths->text_file, sizeof paths->text_file, "%s/not_elf.so",
           paths->temp_dir);
  file = fopen(paths->text_file, "w");
  if (file == NULL || fputs("this is text, not a shared object\n", file) < 0)
    ok = 0;
  if (file != NULL && fclose(file) != 0)
    ok = 0;

  plugin_path(target, sizeof target, paths->dir, "named_decisions");
  resolved = realpath(target, NULL);
  snprintf(paths->decisions_link, sizeof paths->decisions_link,
           "%s/decisions_link.so", paths->temp_dir);
  if (resolved == NULL || symlink(resolved, paths->decisions_link) != 0)
    ok = 0;
  free(resolved);

  plugin_path(target, sizeof target, paths->dir, "init_registers_two");
  resolved = realpath(target, NULL);
  snprintf(paths->init_two_link, sizeof paths->init_two_link,
           "%s/init_two_link.so", paths->temp_dir);
  if (resolved == NULL || symlink(resolved, paths->init_two_link) != 0)
    ok = 0;
  free(resolved);

  if (!ok)
    printf("harness: cannot create the test files in %s: %s\n",
           paths->temp_dir, strerror(errno));
  return ok;
}

static void remove_temp_files(const struct plugin_paths *paths) {
  unlink(paths->text_file);
  unlink(paths->decisions_link);
  unlink(paths->init_two_link);
  rmdir(paths->temp_dir);
}

static void test_plugin_argument_errors(const struct plugin_paths *paths) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN];

  start_group("plugin ERR_ARGUMENT");
  plugin_path(path, sizeof path, paths->dir, "named_decisions");
  CHECK_INT(ectls_load_plugin("", NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_ARGUMENT);
  CHECK(errbuf[0] != '\0');
  CHECK_INT(ectls_load_plugin(NULL, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_ARGUMENT);
  CHECK_INT(ectls_load_plugin(path, "decide_no", "ectls_plugin_init", 0,
                              errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_ARGUMENT);
  CHECK_CONTAINS(errbuf, path);
  CHECK_INT(ectls_load_plugin("", NULL, NULL, 0, NULL, 0),
            ECTLS_PLUGIN_ERR_ARGUMENT);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
}

static void test_plugin_open_errors(const struct plugin_paths *paths) {
  char errbuf[ERRBUF_LEN];
  char small[8];

  start_group("plugin ERR_OPEN");
  CHECK_INT(ectls_load_plugin(paths->missing, NULL, NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_OPEN);
  CHECK_CONTAINS(errbuf, paths->missing);
  CHECK_INT(ectls_load_plugin(paths->text_file, NULL, NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_OPEN);
  CHECK_CONTAINS(errbuf, paths->text_file);
  CHECK_INT(ectls_load_plugin(paths->text_file, "decide_no", NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_OPEN);
  CHECK_CONTAINS(errbuf, paths->text_file);

  /* The message is cut to the buffer and stays NUL-terminated. */
  memset(small, 'x', sizeof small);
  CHECK_INT(ectls_load_plugin(paths->missing, NULL, NULL, 0, small,
                              sizeof small),
            ECTLS_PLUGIN_ERR_OPEN);
  CHECK(memchr(small, '\0', sizeof small) != NULL);
  CHECK_INT(ectls_load_plugin(paths->missing, NULL, NULL, 0, NULL, 0),
            ECTLS_PLUGIN_ERR_OPEN);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
}

static void test_plugin_symbol_errors(const struct plugin_paths *paths) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN];

  start_group("plugin ERR_SYMBOL");
  plugin_path(path, sizeof path, paths->dir, "named_decisions");
  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_SYMBOL);
  CHECK_CONTAINS(errbuf, path);
  CHECK_CONTAINS(errbuf, ECTLS_PLUGIN_DEFAULT_INIT);
  CHECK_CONTAINS(errbuf, ECTLS_PLUGIN_DEFAULT_SYMBOL);

  CHECK_INT(ectls_load_plugin(path, "no_such_provider", NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_SYMBOL);
  CHECK_CONTAINS(errbuf, path);
  CHECK_CONTAINS(errbuf, "no_such_provider");

  CHECK_INT(ectls_load_plugin(path, NULL, "no_such_init", 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_SYMBOL);
  CHECK_CONTAINS(errbuf, path);
  CHECK_CONTAINS(errbuf, "no_such_init");

  /* A static function is not exported, so it cannot be named. */
  plugin_path(path, sizeof path, paths->dir, "init_fails");
  CHECK_INT(ectls_load_plugin(path, "left_behind", NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_SYMBOL);
  CHECK_CONTAINS(errbuf, "left_behind");
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 0);
}

static void test_plugin_default_init(const struct plugin_paths *paths) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN], dotted[PATH_LEN];
  ectls_trace *trace;

  start_group("plugin default init");
  plugin_path(path, sizeof path, paths->dir, "init_registers_two");
  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_OK);
  CHECK_STR(errbuf, "");
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_IFAVAILABLE);
  /* The tail provider returns 7 unless it gets its own closure back. */
  CHECK_INT(atomic_load(&captured.records), 0);

  trace = ectls_explain_core_use_outbound_tls_hook(NULL);
  CHECK(trace != NULL);
  if (trace != NULL) {
    CHECK_INT(trace->decision, EC_USE_TLS_IFAVAILABLE);
    CHECK_INT(trace->count, 2);
  }
  if (trace != NULL && trace->count == 2) {
    CHECK_STR(trace->steps[0].plugin, path);
    CHECK_STR(trace->steps[1].plugin, path);
    CHECK(trace->steps[0].closure == NULL);
    CHECK(trace->steps[1].closure != NULL);
    CHECK_INT(trace->steps[0].decision, EC_USE_TLS_NO);
    CHECK_INT(trace->steps[1].decision, EC_USE_TLS_IFAVAILABLE);
  }
  ectls_trace_free(trace);

  /* The same file with the same entry point, under any name, loads once. */
  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_CONTAINS(errbuf, path);
  CHECK_CONTAINS(errbuf, ECTLS_PLUGIN_DEFAULT_INIT);
  CHECK_INT(ectls_load_plugin(path, NULL, ECTLS_PLUGIN_DEFAULT_INIT, 0,
                              errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_INT(ectls_load_plugin(paths->init_two_link, NULL, NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_CONTAINS(errbuf, paths->init_two_link);
  snprintf(dotted, sizeof dotted, "%s/./init_registers_two.so", paths->dir);
  CHECK_INT(ectls_load_plugin(dotted, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
}

static void test_plugin_default_symbol(const struct plugin_paths *paths) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN];
  struct probe maybe = {"maybe", EC_USE_TLS_IFAVAILABLE, 0, NULL};
  const char *symbol = NULL, *object = NULL;
  ectls_trace *trace;

  start_group("plugin default symbol");
  plugin_path(path, sizeof path, paths->dir, "symbol_required");
  register_core_use_outbound_tls_hook_last(probe_hook, &maybe);
  /* first != 0 puts the provider ahead of the probe. */
  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 1, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_OK);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_REQUIRED);
  CHECK_INT(maybe.calls, 0);

  trace = ectls_explain_core_use_outbound_tls_hook(NULL);
  CHECK(trace != NULL);
  if (trace != NULL)
    CHECK_INT(trace->count, 1);
  if (trace != NULL && trace->count == 1) {
    CHECK_STR(trace->steps[0].symbol, ECTLS_PLUGIN_DEFAULT_SYMBOL);
    CHECK_STR(trace->steps[0].plugin, path);
    CHECK_INT(trace->steps[0].decision, EC_USE_TLS_REQUIRED);
    CHECK_INT(ectls_describe_hook(trace->steps[0].hook, &symbol, &object), 1);
    CHECK_STR(symbol, ECTLS_PLUGIN_DEFAULT_SYMBOL);
    CHECK_CONTAINS(object, "symbol_required.so");
  }
  ectls_trace_free(trace);

  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_CONTAINS(errbuf, path);
  CHECK_CONTAINS(errbuf, ECTLS_PLUGIN_DEFAULT_SYMBOL);
  CHECK_INT(ectls_load_plugin(path, ECTLS_PLUGIN_DEFAULT_SYMBOL, NULL, 0,
                              errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
}

static void test_plugin_explicit_symbols(const struct plugin_paths *paths) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN];
  struct probe middle = {"middle", EC_USE_TLS_NO, 0, NULL};
  ectls_trace *trace;

  start_group("plugin explicit symbols");
  plugin_path(path, sizeof path, paths->dir, "named_decisions");
  register_core_use_outbound_tls_hook_last(probe_hook, &middle);
  CHECK_INT(ectls_load_plugin(path, "decide_ifavailable", NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_OK);
  CHECK_INT(ectls_load_plugin(path, "decide_no", NULL, 1, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_OK);
  CHECK_INT(ectls_load_plugin(path, "decide_required", NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_OK);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 4);

  trace = ectls_explain_core_use_outbound_tls_hook(NULL);
  CHECK(trace != NULL);
  if (trace != NULL) {
    CHECK_INT(trace->decision, EC_USE_TLS_IFAVAILABLE);
    CHECK_INT(trace->count, 3);
  }
  if (trace != NULL && trace->count == 3) {
    CHECK_STR(trace->steps[0].symbol, "decide_no");
    CHECK_STR(trace->steps[0].plugin, path);
    CHECK(trace->steps[1].closure == &middle);
    CHECK(trace->steps[1].symbol == NULL);
    CHECK_STR(trace->steps[2].symbol, "decide_ifavailable");
    CHECK_STR(trace->steps[2].plugin, path);
    CHECK_INT(trace->steps[2].decision, EC_USE_TLS_IFAVAILABLE);
  }
  ectls_trace_free(trace);

  /* A provider from a plugin that returns 7 is logged with its name. */
  CHECK_INT(ectls_load_plugin(path, "decide_out_of_range", NULL, 1, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_OK);
  atomic_store(&captured.records, 0);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_REQUIRED);
  CHECK_INT(atomic_load(&captured.records), 1);
  CHECK_CONTAINS(captured.last, "decide_out_of_range");
  CHECK_CONTAINS(captured.last, path);
  CHECK_CONTAINS(captured.last, "7");

  CHECK_INT(ectls_load_plugin(path, "decide_no", NULL, 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_CONTAINS(errbuf, path);
  CHECK_CONTAINS(errbuf, "decide_no");
  CHECK_INT(ectls_load_plugin(paths->decisions_link, "decide_required", NULL,
                              0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_LOADED);
  CHECK_CONTAINS(errbuf, paths->decisions_link);
  CHECK_CONTAINS(errbuf, "decide_required");
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 5);
}

static void test_plugin_failing_init(const struct plugin_paths *paths) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN];
  struct probe a = {"a", EC_USE_TLS_NO, 0, NULL};
  struct probe b = {"b", EC_USE_TLS_NO, 0, NULL};

  start_group("plugin ERR_INIT");
  plugin_path(path, sizeof path, paths->dir, "init_fails");
  register_core_use_outbound_tls_hook_first(probe_hook, &a);
  register_core_use_outbound_tls_hook_last(probe_hook, &b);
  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_ERR_INIT);
  CHECK_CONTAINS(errbuf, path);
  CHECK_CONTAINS(errbuf, ECTLS_PLUGIN_DEFAULT_INIT);
  CHECK_CONTAINS(errbuf, "-1");
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "a b");

  /* A failed load claims nothing, so it can be tried again. */
  CHECK_INT(ectls_load_plugin(path, NULL, "ectls_plugin_init", 0, errbuf,
                              sizeof errbuf),
            ECTLS_PLUGIN_ERR_INIT);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
  CHECK_INT(call_logged(NULL), EC_USE_TLS_NO);
  CHECK_STR(call_log, "a b");
}

typedef int call_from_c_func(email_message *message);

static void test_plugin_calls_list(const struct plugin_paths *paths) {
  char path[PATH_LEN];
  struct probe must = {"must", EC_USE_TLS_REQUIRED, 0, NULL};
  call_from_c_func *call_from_c;
  void *handle, *address;
  ec_message *message = ectls_message_new();

  start_group("plugin calls the list");
  plugin_path(path, sizeof path, paths->dir, "call_from_c");
  handle = dlopen(path, RTLD_NOW | RTLD_LOCAL);
  CHECK(handle != NULL);
  if (handle == NULL) {
    printf("harness: %s\n", dlerror());
    ectls_message_free(message);
    return;
  }
  address = dlsym(handle, "call_from_c");
  CHECK(address != NULL);
  if (address != NULL) {
    memcpy(&call_from_c, &address, sizeof call_from_c);
    CHECK_INT(call_from_c(message), EC_USE_TLS_NO);
    register_core_use_outbound_tls_hook_last(probe_hook, &must);
    CHECK_INT(call_from_c(message), EC_USE_TLS_REQUIRED);
    CHECK(must.last_message == message);
  }
  dlclose(handle);
  ectls_message_free(message);
}

static void test_plugins(const char *plugin_dir) {
  struct plugin_paths paths;

  memset(&paths, 0, sizeof paths);
  current_group = "plugin setup";
  if (strlen(plugin_dir) >= sizeof paths.dir) {
    report_failure(__FILE__, __LINE__, "plugin directory is longer than %d "
                   "bytes: %s", DIR_LEN - 1, plugin_dir);
    return;
  }
  snprintf(paths.dir, sizeof paths.dir, "%s", plugin_dir);
  if (!make_temp_files(&paths)) {
    report_failure(__FILE__, __LINE__, "the plugin checks need the files "
                   "above and did not run");
    remove_temp_files(&paths);
    return;
  }

  test_plugin_argument_errors(&paths);
  test_plugin_open_errors(&paths);
  test_plugin_symbol_errors(&paths);
  test_plugin_default_init(&paths);
  test_plugin_default_symbol(&paths);
  test_plugin_explicit_symbols(&paths);
  test_plugin_failing_init(&paths);
  test_plugin_calls_list(&paths);
  remove_temp_files(&paths);
}

/* ---- Example plugins -------------------------------------------------- */

/* Returns the decision for a message with rcpt and a context variable. */
static int decide_for(const char *rcpt, int which, const char *key,
                      const char *value) {
  ec_message *message = ectls_message_new();
  int decision;

  if (rcpt != NULL)
    ectls_message_set_rcptto(message, rcpt);
  if (key != NULL)
    ec_message_context_set(message, which, key, value);
  decision = call_core_use_outbound_tls_hook(message);
  ectls_message_free(message);
  return decision;
}

static void test_example_domain_policy(const char *example_dir) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN];
  const char *key = "tls_required_domains";
  ec_message *message = ectls_message_new();

  start_group("example domain_policy");
  plugin_path(path, sizeof path, example_dir, "domain_policy");
  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_OK);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 1);

  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_NO);
  CHECK_INT(decide_for(NULL, 0, NULL, NULL), EC_USE_TLS_NO);
  CHECK_INT(decide_for("postmaster", 0, NULL, NULL), EC_USE_TLS_NO);
  CHECK_INT(decide_for("a@bank.example", 0, NULL, NULL), EC_USE_TLS_REQUIRED);
  CHECK_INT(decide_for("a@PayRoll.Example", 0, NULL, NULL),
            EC_USE_TLS_REQUIRED);
  CHECK_INT(decide_for("a@mx.bank.example", 0, NULL, NULL),
            EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(decide_for("a@other.example", 0, NULL, NULL),
            EC_USE_TLS_IFAVAILABLE);

  CHECK_INT(decide_for("a@other.example", ECMESS_CTX_MESS, key,
                       "first.example, Other.Example"),
            EC_USE_TLS_REQUIRED);
  CHECK_INT(decide_for("a@other.example", ECMESS_CTX_MESS, key,
                       " other.example ,first.example"),
            EC_USE_TLS_REQUIRED);
  CHECK_INT(decide_for("a@other.example", ECMESS_CTX_MESS, key,
                       ",,other.example,"),
            EC_USE_TLS_REQUIRED);
  CHECK_INT(decide_for("a@other.example", ECMESS_CTX_MESS, key,
                       "ther.example, other.example.net"),
            EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(decide_for("a@other.example", ECMESS_CTX_MESS, key, ""),
            EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(decide_for("a@other.example", ECMESS_CTX_MESS, key, " , "),
            EC_USE_TLS_IFAVAILABLE);
  /* Only the per-message dictionary counts. */
  CHECK_INT(decide_for("a@other.example", ECMESS_CTX_CONN, key,
                       "other.example"),
            EC_USE_TLS_IFAVAILABLE);

  /* The routing domain override decides, not the recipient. */
  ectls_message_set_rcptto(message, "a@other.example");
  ectls_message_set_routing_domain(message, "bank.example");
  CHECK_INT(call_core_use_outbound_tls_hook(message), EC_USE_TLS_REQUIRED);
  ectls_message_free(message);
}

static void test_example_self_registering(const char *example_dir) {
  char errbuf[ERRBUF_LEN];
  char path[PATH_LEN];
  const char *key = "tls_policy";

  start_group("example self_registering");
  plugin_path(path, sizeof path, example_dir, "self_registering");
  CHECK_INT(ectls_load_plugin(path, NULL, NULL, 0, errbuf, sizeof errbuf),
            ECTLS_PLUGIN_OK);
  CHECK_INT(ectls_count_core_use_outbound_tls_hook(), 2);
  CHECK_INT(decide_for("a@example.org", ECMESS_CTX_CONN, key, "require"),
            EC_USE_TLS_REQUIRED);
  CHECK_INT(decide_for("a@example.org", ECMESS_CTX_CONN, key, "Require"),
            EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(decide_for("a@example.org", ECMESS_CTX_MESS, key, "require"),
            EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(decide_for("a@example.org", 0, NULL, NULL),
            EC_USE_TLS_IFAVAILABLE);
  CHECK_INT(call_core_use_outbound_tls_hook(NULL), EC_USE_TLS_IFAVAILABLE);
}

/* ---- Main ------------------------------------------------------------- */

int main(int argc, char **argv) {
  if (argc < 2 || argc > 3) {
    fprintf(stderr, "usage: %s PLUGIN_DIR [EXAMPLE_DIR]\n", argv[0]);
    return 2;
  }
  signal(SIGALRM, on_watchdog);
  alarm(WATCHDOG_SECONDS);
  atomic_init(&captured.records, 0);
  ectls_set_log_handler(capture_log, &captured);

  test_empty_list();
  test_order();
  test_call_rule();
  test_out_of_range();
  test_unregister();
  test_clear_and_destroy();
  test_explain();
  test_message_envelope();
  test_message_routing_domain();
  test_message_context(ECMESS_CTX_CONN, "context CONN");
  test_message_context(ECMESS_CTX_MESS, "context MESS");
  test_message_null();
  test_reentrancy();
  test_threads();
  test_plugins(argv[1]);
  if (argc == 3) {
    test_example_domain_policy(argv[2]);
    test_example_self_registering(argv[2]);
  }

  start_group("teardown");
  ectls_set_log_handler(NULL, NULL);
  ectls_reclaim_core_use_outbound_tls_hook();
  printf("%d passed, %d failed\n", checks_passed, checks_failed);
  return checks_failed == 0 ? 0 : 1;
}
