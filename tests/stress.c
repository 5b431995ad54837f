/*
 * stress.c - races calls of the provider list against changes to it.
 *
 * Usage: stress [SECONDS [SEED]]
 *   SECONDS  how long the threads run (default 10)
 *   SEED     seed of the writer's random choices (default: from the clock)
 *
 * Build it against libectls like tests/harness.c, or compile the library
 * sources (src/NAME.c) into it to run the library under a sanitizer
 * (tests/test_stress.py does both).  Threads:
 *
 *   - CALLER_SLOTS caller threads call the list in a loop, with and
 *     without a message, and sometimes explain instead.  Each one is
 *     replaced by a new thread after CALLER_LIFETIME_CALLS calls, so
 *     reader records are recycled while the list changes.
 *   - One writer thread prepends and appends providers and removes them
 *     again, in random order.
 *
 * Every provider's closure is a heap node whose destroy callback
 * overwrites it with POISON_BYTE and frees it, so a call that reaches a
 * freed node reads a bad magic number, and AddressSanitizer reports the
 * read.  The writer keeps the list shaped so that each call's result
 * follows from the nodes the call visited:
 *
 *   [FRONT nodes, newest first] [ANCHOR] [BACK and TERMINAL nodes, oldest
 *   first]
 *
 * ANCHOR (never removed) and BACK nodes return NO.  A FRONT node returns
 * NO or, rarely, REQUIRED.  A TERMINAL node returns IFAVAILABLE, and the
 * writer appends a new TERMINAL before it removes the old one, so every
 * version of the list contains one.  A call therefore always returns
 * IFAVAILABLE or REQUIRED.  The nodes a call visited must also form one
 * version: they come in the order above, each node comes once, and all of
 * them were in the list at the same moment.  The last rule is checked with
 * the list version in which each node was added and removed.
 *
 * Halfway through, the main thread forks while another thread holds
 * libectls' list lock (see run_lock_probe()), and checks that calls go on
 * meanwhile: calls take no lock.
 *
 * Prints the first failures, a few counts, and last the line
 * "N passed, N failed".  Exits 0 only when no check failed.  A watchdog
 * ends the program with status 3 when it runs WATCHDOG_EXTRA_SECONDS
 * longer than asked.
 */
#define _GNU_SOURCE

#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "ectls.h"

#define DEFAULT_SECONDS 10.0
#define MAX_SECONDS 3600.0
#define WATCHDOG_EXTRA_SECONDS 60
#define CALLER_SLOTS 2
#define CALLER_LIFETIME_CALLS 20000
/* One call in EXPLAIN_EVERY is an explained call. */
#define EXPLAIN_EVERY 16
/* Nodes besides the anchor.  A TERMINAL rotation adds one more for a moment. */
#define MAX_LIVE_NODES 24
#define MAX_VISITS (MAX_LIVE_NODES + 8)
/* The writer reclaims and checks the count every this many operations. */
#define WRITER_CHECK_EVERY 64
/* A FRONT node returns REQUIRED with probability 1 / REQUIRED_ONE_IN. */
#define REQUIRED_ONE_IN 16
/* Removal versions are kept for this many most recent nodes. */
#define HISTORY_SIZE (1u << 16)
#define MAX_REPORTED_FAILURES 20
#define NODE_MAGIC UINT64_C(0x6e6f64652d6f6b21)
#define POISON_BYTE 0xdd
/* Time the lock probe waits for a blocked writer, and for calls. */
#define PROBE_WRITER_WAIT_SECONDS 0.2
#define PROBE_CALLS_WAIT_SECONDS 2.0
#define PROBE_MIN_CALLS 1000
#define PROBE_ATTACH_WAIT_SECONDS 10.0

enum node_kind { NODE_ANCHOR, NODE_FRONT, NODE_BACK, NODE_TERMINAL };

static const char *const kind_names[] = {"ANCHOR", "FRONT", "BACK",
                                         "TERMINAL"};

/* A provider's closure, immutable while registered. */
struct node {
  uint64_t magic;
  uint64_t serial;  /* creation order, 0 for the anchor */
  uint64_t added;   /* list version in which the node first appears */
  int kind;
  int decision;
};

/* ---- Checks and failure reports ----------------------------------------- */

static atomic_ulong checks_passed;
static atomic_ulong checks_failed;
static pthread_mutex_t report_lock = PTHREAD_MUTEX_INITIALIZER;

static void fail(const char *format, ...) __attribute__((format(printf, 1, 2)));

static void fail(const char *format, ...) {
  unsigned long number = atomic_fetch_add(&checks_failed, 1) + 1;
  va_list arguments;

  if (number > MAX_REPORTED_FAILURES)
    return;
  pthread_mutex_lock(&report_lock);
  printf("failure %lu: ", number);
  va_start(arguments, format);
  vprintf(format, arguments);
  va_end(arguments);
  putchar('\n');
  fflush(stdout);
  pthread_mutex_unlock(&report_lock);
}

static void pass(void) { atomic_fetch_add(&checks_passed, 1); }

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

static void on_watchdog(int signal_number) {
  static const char text[] =
      "stress: timed out: a thread did not finish (deadlock?)\n";
  ssize_t written = write(STDOUT_FILENO, text, sizeof text - 1);

  (void)signal_number;
  (void)written;
  _exit(3);
}

/* ---- Shared state --------------------------------------------------------- */

static atomic_int stop_requested;

/*
 * The list version in which node `serial` was removed, UINT64_MAX while it
 * is registered, for the HISTORY_SIZE most recent serials.  An entry is
 * valid for serial s while next_serial - s < HISTORY_SIZE.
 */
static _Atomic uint64_t removed_at[HISTORY_SIZE];
static _Atomic uint64_t next_serial = 1;

static atomic_ulong nodes_created;
static atomic_ulong nodes_destroyed;
static atomic_ulong total_calls;
static atomic_ulong explained_calls;
static atomic_ulong caller_threads_started;
static atomic_ulong log_records;

/* ---- Providers ------------------------------------------------------------ */

/* What one call saw, recorded by the providers on the calling thread. */
struct visit {
  const struct node *node;
  uint64_t serial;
  uint64_t added;
  int kind;
  int decision;
};

struct visit_log {
  email_message *expected_message;
  int count;
  int overflow;
  int bad_magic;
  int wrong_message;
  struct visit visits[MAX_VISITS];
};

static __thread struct visit_log visit_log;

static int stress_provider(void *closure, email_message *message) {
  const struct node *node = closure;
  struct visit_log *log = &visit_log;

  if (message != log->expected_message)
    log->wrong_message++;
  if (node->magic != NODE_MAGIC) {
    log->bad_magic++;
    return EC_USE_TLS_NO;
  }
  if (log->count == MAX_VISITS) {
    log->overflow = 1;
    return node->decision;
  }
  log->visits[log->count].node = node;
  log->visits[log->count].serial = node->serial;
  log->visits[log->count].added = node->added;
  log->visits[log->count].kind = node->kind;
  log->visits[log->count].decision = node->decision;
  log->count++;
  return node->decision;
}

static void destroy_node(void *closure) {
  struct node *node = closure;

  if (node->magic != NODE_MAGIC)
    fail("destroy callback got node %p with magic %#llx: destroyed twice?",
         closure, (unsigned long long)node->magic);
  memset(node, POISON_BYTE, sizeof *node);
  free(node);
  atomic_fetch_add(&nodes_destroyed, 1);
}

static void count_log_record(void *closure, int level, const char *message) {
  (void)closure;
  atomic_fetch_add(&log_records, 1);
  fail("unexpected ectls log record (level %d): %s", level, message);
}

/* ---- The invariant of one call --------------------------------------------- */

static uint64_t removal_version(uint64_t serial, int *known) {
  uint64_t removed;

  if (serial == 0) { /* the anchor is never removed */
    *known = 1;
    return UINT64_MAX;
  }
  removed = atomic_load(&removed_at[serial % HISTORY_SIZE]);
  *known = atomic_load(&next_serial) - serial < HISTORY_SIZE;
  return removed;
}

/*
 * Check that the nodes visited by one call form a version of the list that
 * the writer published, and that decision follows from them.  Returns 1
 * when every rule holds, else reports the first broken rule and returns 0.
 */
static int check_visits(const struct visit_log *log, int decision) {
  const struct visit *visits = log->visits;
  int count = log->count, anchors = 0, in_back = 0;
  uint64_t latest_added = 0, earliest_removed = UINT64_MAX;

  if (log->bad_magic || log->wrong_message || log->overflow) {
    fail("a provider saw %d freed or overwritten nodes, %d wrong messages, "
         "overflow %d", log->bad_magic, log->wrong_message, log->overflow);
    return 0;
  }
  if (decision != EC_USE_TLS_IFAVAILABLE && decision != EC_USE_TLS_REQUIRED) {
    fail("call returned %d; every version has a TERMINAL node, so only "
         "IFAVAILABLE or REQUIRED is possible", decision);
    return 0;
  }
  if (count == 0 || visits[count - 1].decision != decision) {
    fail("call returned %d, but the last of %d visited nodes returned %d",
         decision, count, count ? visits[count - 1].decision : -1);
    return 0;
  }
  for (int i = 0; i < count; i++) {
    const struct visit *visit = &visits[i];
    int known;
    uint64_t removed = removal_version(visit->serial, &known);

    if (i < count - 1 && visit->decision != EC_USE_TLS_NO) {
      fail("node %llu (%s) returned %d, yet the walk went on",
           (unsigned long long)visit->serial, kind_names[visit->kind],
           visit->decision);
      return 0;
    }
    if (visit->kind == NODE_FRONT && in_back) {
      fail("FRONT node %llu visited after the anchor or a BACK node",
           (unsigned long long)visit->serial);
      return 0;
    }
    if (visit->kind == NODE_ANCHOR)
      anchors++;
    if (visit->kind != NODE_FRONT)
      in_back = 1;
    if (i > 0 && visit->kind == NODE_FRONT &&
        visit->serial >= visits[i - 1].serial) {
      fail("FRONT node %llu visited after FRONT node %llu: prepended nodes "
           "must run newest first", (unsigned long long)visit->serial,
           (unsigned long long)visits[i - 1].serial);
      return 0;
    }
    if (i > 0 && (visit->kind == NODE_BACK || visit->kind == NODE_TERMINAL) &&
        visits[i - 1].kind != NODE_ANCHOR &&
        visit->serial <= visits[i - 1].serial) {
      fail("appended node %llu visited after appended node %llu: appended "
           "nodes must run oldest first", (unsigned long long)visit->serial,
           (unsigned long long)visits[i - 1].serial);
      return 0;
    }
    if (visit->added > latest_added)
      latest_added = visit->added;
    if (known && removed < earliest_removed)
      earliest_removed = removed;
  }
  if (anchors > 1) {
    fail("the anchor ran %d times in one call", anchors);
    return 0;
  }
  if (visits[count - 1].kind == NODE_TERMINAL && anchors != 1) {
    fail("the walk reached TERMINAL node %llu without passing the anchor",
         (unsigned long long)visits[count - 1].serial);
    return 0;
  }
  if (decision == EC_USE_TLS_REQUIRED && visits[count - 1].kind != NODE_FRONT) {
    fail("REQUIRED came from a %s node", kind_names[visits[count - 1].kind]);
    return 0;
  }
  if (latest_added >= earliest_removed) {
    fail("one call visited a node added in version %llu and one removed in "
         "version %llu: the walk mixed two versions of the list",
         (unsigned long long)latest_added,
         (unsigned long long)earliest_removed);
    return 0;
  }
  return 1;
}

/* Check that an explained call's trace matches what the providers saw. */
static int check_trace(const ectls_trace *trace, const struct visit_log *log) {
  if (trace->count != log->count) {
    fail("trace lists %d steps, providers ran %d times", trace->count,
         log->count);
    return 0;
  }
  for (int i = 0; i < trace->count; i++) {
    const ectls_trace_step *step = &trace->steps[i];
    const struct visit *visit = &log->visits[i];

    if (step->hook != stress_provider || step->closure != visit->node ||
        step->returned != visit->decision ||
        step->decision != visit->decision) {
      fail("trace step %d (closure %p, returned %d, decision %d) differs "
           "from the provider run (closure %p, returned %d)", i,
           step->closure, step->returned, step->decision,
           (const void *)visit->node, visit->decision);
      return 0;
    }
  }
  if (trace->count > 0 && trace->decision != trace->steps[trace->count - 1].decision) {
    fail("trace decision %d differs from its last step's %d", trace->decision,
         trace->steps[trace->count - 1].decision);
    return 0;
  }
  return 1;
}

/* ---- Callers -------------------------------------------------------------- */

struct caller_slot {
  int index;
  pthread_t thread;
  atomic_int attached; /* the current caller thread has made a call */
};

static struct caller_slot caller_slots[CALLER_SLOTS];
/* While set, caller threads are not replaced (see run_lock_probe()). */
static atomic_int keep_callers;

static void run_one_call(email_message *message, int explain) {
  struct visit_log *log = &visit_log;
  int decision;

  log->expected_message = message;
  log->count = 0;
  log->overflow = 0;
  log->bad_magic = 0;
  log->wrong_message = 0;
  if (explain) {
    ectls_trace *trace = ectls_explain_core_use_outbound_tls_hook(message);
    if (trace == NULL) {
      fail("explain returned NULL (out of memory?)");
      return;
    }
    if (check_visits(log, trace->decision) && check_trace(trace, log))
      pass();
    ectls_trace_free(trace);
    atomic_fetch_add(&explained_calls, 1);
  } else {
    decision = call_core_use_outbound_tls_hook(message);
    if (check_visits(log, decision))
      pass();
  }
  atomic_fetch_add(&total_calls, 1);
}

static void *caller_main(void *arg) {
  struct caller_slot *slot = arg;
  ec_message *message = ectls_message_new();
  unsigned long calls = 0;

  if (message == NULL || !ectls_message_set_rcptto(message, "user@example.org")) {
    fail("caller %d could not build its message", slot->index);
    ectls_message_free(message);
    return NULL;
  }
  atomic_fetch_add(&caller_threads_started, 1);
  while (!atomic_load(&stop_requested)) {
    run_one_call(calls % 2 ? message : NULL, calls % EXPLAIN_EVERY == 0);
    calls++;
    atomic_store(&slot->attached, 1);
    if (calls >= CALLER_LIFETIME_CALLS && !atomic_load(&keep_callers))
      break;
  }
  ectls_message_free(message);
  return NULL;
}

/* Runs caller threads one after another until stop_requested. */
static void *slot_main(void *arg) {
  struct caller_slot *slot = arg;

  while (!atomic_load(&stop_requested)) {
    pthread_t caller;

    atomic_store(&slot->attached, 0);
    if (pthread_create(&caller, NULL, caller_main, slot) != 0) {
      fail("caller slot %d could not start a thread", slot->index);
      return NULL;
    }
    pthread_join(caller, NULL);
  }
  return NULL;
}

/* ---- Writer --------------------------------------------------------------- */

struct writer_state {
  uint64_t seed;
  uint64_t random_state;
  uint64_t version; /* number of list versions published so far */
  unsigned long operations;
  struct node *anchor;
  struct node *live[MAX_LIVE_NODES + 1];
  int live_count;
};

static uint64_t next_random(struct writer_state *writer) {
  /* xorshift64* */
  uint64_t x = writer->random_state;

  x ^= x >> 12;
  x ^= x << 25;
  x ^= x >> 27;
  writer->random_state = x;
  return x * UINT64_C(2685821657736338717);
}

static struct node *new_node(struct writer_state *writer, int kind,
                             int decision) {
  struct node *node = malloc(sizeof *node);

  if (node == NULL)
    return NULL;
  node->magic = NODE_MAGIC;
  node->kind = kind;
  node->decision = decision;
  node->added = writer->version + 1;
  node->serial = kind == NODE_ANCHOR ? 0 : atomic_load(&next_serial);
  if (kind != NODE_ANCHOR) {
    atomic_store(&removed_at[node->serial % HISTORY_SIZE], UINT64_MAX);
    atomic_store(&next_serial, node->serial + 1);
  }
  atomic_fetch_add(&nodes_created, 1);
  return node;
}

static int add_node(struct writer_state *writer, int kind, int decision) {
  struct node *node = new_node(writer, kind, decision);
  int first = kind == NODE_FRONT;
  int rc;

  if (node == NULL) {
    fail("writer: out of memory");
    return 0;
  }
  rc = ectls_register_core_use_outbound_tls_hook(stress_provider, node, first,
                                                 destroy_node);
  if (rc != 0) {
    fail("writer: register returned %d", rc);
    memset(node, POISON_BYTE, sizeof *node);
    free(node);
    atomic_fetch_add(&nodes_destroyed, 1);
    return 0;
  }
  writer->version++;
  if (kind != NODE_ANCHOR)
    writer->live[writer->live_count++] = node;
  return 1;
}

static void remove_live(struct writer_state *writer, int index) {
  struct node *node = writer->live[index];
  int rc;

  /* Recorded before the node leaves, because calls that start after the
   * new version is published must not count it as present. */
  atomic_store(&removed_at[node->serial % HISTORY_SIZE], writer->version + 1);
  writer->live[index] = writer->live[--writer->live_count];
  rc = ectls_unregister_core_use_outbound_tls_hook(stress_provider, node);
  if (rc == 1) {
    writer->version++;
    pass();
  } else {
    fail("writer: unregister of node %llu returned %d, expected 1",
         (unsigned long long)node->serial, rc);
  }
}

static int find_terminal(const struct writer_state *writer) {
  for (int i = 0; i < writer->live_count; i++)
    if (writer->live[i]->kind == NODE_TERMINAL)
      return i;
  return -1;
}

static void check_count(const struct writer_state *writer) {
  int count = ectls_count_core_use_outbound_tls_hook();

  if (count == writer->live_count + 1)
    pass();
  else
    fail("writer: the list holds %d providers, expected %d", count,
         writer->live_count + 1);
}

static void writer_step(struct writer_state *writer) {
  uint64_t choice = next_random(writer) % 100;

  if (writer->live_count >= MAX_LIVE_NODES)
    choice = 99;
  if (choice < 30) {
    int required = next_random(writer) % REQUIRED_ONE_IN == 0;
    add_node(writer, NODE_FRONT,
             required ? EC_USE_TLS_REQUIRED : EC_USE_TLS_NO);
  } else if (choice < 50) {
    add_node(writer, NODE_BACK, EC_USE_TLS_NO);
  } else if (choice < 65) {
    /* Append the new TERMINAL first, so that no version lacks one. */
    int old = find_terminal(writer);
    if (add_node(writer, NODE_TERMINAL, EC_USE_TLS_IFAVAILABLE) && old >= 0)
      remove_live(writer, old);
  } else {
    /* Remove a random node other than the TERMINAL. */
    int index = (int)(next_random(writer) % (uint64_t)writer->live_count);
    if (writer->live[index]->kind != NODE_TERMINAL)
      remove_live(writer, index);
  }
  writer->operations++;
  if (writer->operations % WRITER_CHECK_EVERY == 0) {
    check_count(writer);
    ectls_reclaim_core_use_outbound_tls_hook();
    /* The writer calls too: a thread that changes the list may walk it. */
    run_one_call(NULL, writer->operations % (2 * WRITER_CHECK_EVERY) == 0);
  }
}

static void *writer_main(void *arg) {
  struct writer_state *writer = arg;

  while (!atomic_load(&stop_requested))
    writer_step(writer);
  return NULL;
}

/* ---- Lock probe -------------------------------------------------------------- */

/*
 * libectls' fork handler locks the list lock before the fork and unlocks
 * it after.  When libectls is compiled into this program, this program
 * registers its own prepare handler first, because constructor priority
 * 101 runs before default-priority constructors.  Prepare handlers run in
 * reverse order of registration, so this one then runs while libectls
 * holds the lock.  It checks that a writer is blocked, which shows that
 * the lock is held, and that calls on the caller threads go on.
 */
enum probe_result {
  PROBE_NOT_RUN,
  PROBE_CALLS_WENT_ON,
  PROBE_CALLS_STALLED,
  PROBE_LOCK_NOT_HELD
};

static const char *const probe_result_names[] = {
    "not run",
    "calls went on while the list lock was held",
    "calls stalled while the list lock was held",
    "inconclusive: the list lock was not held in the fork handler (libectls "
    "registered its fork handler first)"};

static atomic_int probe_armed;
static atomic_int probe_result;
static atomic_int probe_writer_go;
static atomic_int probe_writer_done;

/* Waits for the fork handler's signal, then takes the list lock. */
static void *probe_writer_main(void *arg) {
  double deadline = seconds_now() + 2 * PROBE_CALLS_WAIT_SECONDS;

  (void)arg;
  while (!atomic_load(&probe_writer_go) && seconds_now() < deadline)
    sleep_seconds(0.001);
  ectls_reclaim_core_use_outbound_tls_hook();
  atomic_store(&probe_writer_done, 1);
  return NULL;
}

static void probe_before_fork(void) {
  double deadline;
  unsigned long calls_before, calls_made;

  if (!atomic_load(&probe_armed))
    return;
  atomic_store(&probe_armed, 0);
  atomic_store(&probe_writer_go, 1);
  sleep_seconds(PROBE_WRITER_WAIT_SECONDS);
  if (atomic_load(&probe_writer_done)) {
    atomic_store(&probe_result, PROBE_LOCK_NOT_HELD);
    return;
  }
  calls_before = atomic_load(&total_calls);
  deadline = seconds_now() + PROBE_CALLS_WAIT_SECONDS;
  while (atomic_load(&total_calls) - calls_before < PROBE_MIN_CALLS &&
         seconds_now() < deadline)
    sleep_seconds(0.001);
  calls_made = atomic_load(&total_calls) - calls_before;
  if (calls_made >= PROBE_MIN_CALLS) {
    atomic_store(&probe_result, PROBE_CALLS_WENT_ON);
    pass();
  } else {
    atomic_store(&probe_result, PROBE_CALLS_STALLED);
    fail("lock probe: %lu calls in %.1f s while the list lock was held; "
         "calls must not wait for the lock", calls_made,
         PROBE_CALLS_WAIT_SECONDS);
  }
}

__attribute__((constructor(101))) static void install_probe(void) {
  pthread_atfork(probe_before_fork, NULL, NULL);
}

static void run_lock_probe(void) {
  /* Generous: on a loaded machine a new caller thread may take a while
   * to make its first call. */
  double deadline = seconds_now() + PROBE_ATTACH_WAIT_SECONDS;
  pthread_t writer;
  pid_t child;
  int status;

  /* Every caller must hold its reader record, because a thread's first
   * call takes the registry lock once, which the fork holds. */
  atomic_store(&keep_callers, 1);
  for (int i = 0; i < CALLER_SLOTS; i++) {
    while (!atomic_load(&caller_slots[i].attached) && seconds_now() < deadline)
      sleep_seconds(0.001);
    if (!atomic_load(&caller_slots[i].attached)) {
      fail("lock probe: caller %d made no first call within %.0f s", i,
           PROBE_ATTACH_WAIT_SECONDS);
      atomic_store(&keep_callers, 0);
      return;
    }
  }
  if (pthread_create(&writer, NULL, probe_writer_main, NULL) != 0) {
    fail("lock probe: could not start its writer thread");
    atomic_store(&keep_callers, 0);
    return;
  }
  atomic_store(&probe_armed, 1);
  child = fork();
  if (child == 0)
    _exit(0);
  atomic_store(&probe_armed, 0);
  atomic_store(&probe_writer_go, 1);
  if (child < 0)
    fail("lock probe: fork failed: %s", strerror(errno));
  else if (waitpid(child, &status, 0) != child || !WIFEXITED(status) ||
           WEXITSTATUS(status) != 0)
    fail("lock probe: the forked child did not exit with status 0");
  pthread_join(writer, NULL);
  atomic_store(&keep_callers, 0);
}

/* ---- Main ------------------------------------------------------------------ */

static int parse_arguments(int argc, char **argv, double *seconds,
                           uint64_t *seed) {
  char *end;

  *seconds = DEFAULT_SECONDS;
  *seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
  if (argc > 3)
    return 0;
  if (argc >= 2) {
    errno = 0;
    *seconds = strtod(argv[1], &end);
    if (errno != 0 || *end != '\0' || !(*seconds > 0) || *seconds > MAX_SECONDS)
      return 0;
  }
  if (argc == 3) {
    errno = 0;
    *seed = strtoull(argv[2], &end, 0);
    if (errno != 0 || *end != '\0')
      return 0;
  }
  if (*seed == 0) /* xorshift never leaves 0 */
    *seed = 1;
  return 1;
}

int main(int argc, char **argv) {
  static struct writer_state writer;
  struct sigaction watchdog;
  pthread_t writer_thread;
  double seconds, started;
  uint64_t seed;
  int removed, waiting;

  if (!parse_arguments(argc, argv, &seconds, &seed)) {
    fprintf(stderr, "usage: %s [SECONDS [SEED]]\n  SECONDS: run time, more "
            "than 0 and at most %.0f (default %.0f)\n", argv[0], MAX_SECONDS,
            DEFAULT_SECONDS);
    return 2;
  }
  memset(&watchdog, 0, sizeof watchdog);
  watchdog.sa_handler = on_watchdog;
  sigaction(SIGALRM, &watchdog, NULL);
  alarm((unsigned)seconds + WATCHDOG_EXTRA_SECONDS);
  setvbuf(stdout, NULL, _IOLBF, 0);
  printf("stress: %.1f s, seed %llu\n", seconds, (unsigned long long)seed);

  ectls_set_log_handler(count_log_record, NULL);
  ectls_clear_core_use_outbound_tls_hook();
  writer.seed = seed;
  writer.random_state = seed;
  if (!add_node(&writer, NODE_ANCHOR, EC_USE_TLS_NO) ||
      !add_node(&writer, NODE_TERMINAL, EC_USE_TLS_IFAVAILABLE)) {
    printf("0 passed, %lu failed\n", atomic_load(&checks_failed));
    return 1;
  }

  started = seconds_now();
  for (int i = 0; i < CALLER_SLOTS; i++) {
    caller_slots[i].index = i;
    if (pthread_create(&caller_slots[i].thread, NULL, slot_main,
                       &caller_slots[i]) != 0) {
      fprintf(stderr, "stress: cannot start a caller thread\n");
      return 1;
    }
  }
  if (pthread_create(&writer_thread, NULL, writer_main, &writer) != 0) {
    fprintf(stderr, "stress: cannot start the writer thread\n");
    return 1;
  }

  sleep_seconds(seconds / 2);
  run_lock_probe();
  while (seconds_now() - started < seconds)
    sleep_seconds(0.01);
  atomic_store(&stop_requested, 1);
  for (int i = 0; i < CALLER_SLOTS; i++)
    pthread_join(caller_slots[i].thread, NULL);
  pthread_join(writer_thread, NULL);

  /* No call runs now: everything removed must be freed by one reclaim. */
  check_count(&writer);
  removed = ectls_clear_core_use_outbound_tls_hook();
  if (removed == writer.live_count + 1)
    pass();
  else
    fail("clear removed %d providers, expected %d", removed,
         writer.live_count + 1);
  waiting = ectls_reclaim_core_use_outbound_tls_hook();
  if (waiting == 0)
    pass();
  else
    fail("%d retired list versions still wait after every call returned",
         waiting);
  if (atomic_load(&nodes_destroyed) == atomic_load(&nodes_created))
    pass();
  else
    fail("%lu nodes created but %lu destroyed", atomic_load(&nodes_created),
         atomic_load(&nodes_destroyed));
  if (atomic_load(&total_calls) > 0 && writer.operations > 0)
    pass();
  else
    fail("no overlap: %lu calls, %lu writer operations",
         atomic_load(&total_calls), writer.operations);
  ectls_set_log_handler(NULL, NULL);

  printf("calls: %lu (%lu explained) on %lu caller threads; writer "
         "operations: %lu; nodes: %lu; log records: %lu\n",
         atomic_load(&total_calls), atomic_load(&explained_calls),
         atomic_load(&caller_threads_started), writer.operations,
         atomic_load(&nodes_created), atomic_load(&log_records));
  printf("lock probe: %s\n", probe_result_names[atomic_load(&probe_result)]);
  printf("%lu passed, %lu failed\n", atomic_load(&checks_passed),
         atomic_load(&checks_failed));
  return atomic_load(&checks_failed) == 0 ? 0 : 1;
}
