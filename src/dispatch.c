/*
 * dispatch.c - the one provider list of the process, and its calls.
 *
 * The list is an immutable array (a "version") behind one atomic pointer.
 * A call loads the pointer once and walks that version, so providers
 * registered or removed during a call take part from the next call on.
 * Writers (register, unregister, clear) serialise on one mutex, build a
 * new version, publish it with a single store and retire the old one.
 *
 * Reclamation.  A retired version may still be walked by calls that
 * loaded it before the swap, so it is freed only when every such call has
 * returned.  The scheme is epoch based:
 *
 *   1. Every thread that calls owns a reader record (cache-line sized, in
 *      a registry, recycled after the thread exits, never freed).  On
 *      entering its outermost call it stores the global epoch in the
 *      record; on leaving it stores 0.  Nested calls keep the outer epoch.
 *   2. A writer publishes the new version, then increments the epoch, and
 *      tags the retired version with the new epoch value E.  A call that
 *      read an epoch >= E started after the swap, so it cannot hold the
 *      old version.
 *   3. To reclaim, a writer issues membarrier(PRIVATE_EXPEDITED), which
 *      runs a full memory barrier on every running thread of the process,
 *      then reads all reader records.  A version tagged E is freed when
 *      every record reads 0 or >= E.
 *
 * Step 3's barrier is what lets a call order its epoch store before its
 * list load with a compiler barrier alone: either the writer reads the
 * store, or the call's load comes after the barrier and loads the new
 * version.  Where membarrier is unavailable, calls use a real fence.
 * Writers never wait for calls, so a provider may register, unregister
 * or call the list itself.
 *
 * When to reclaim.  Each membarrier interrupts every running caller, so
 * writers reclaim only once RECLAIM_BATCH versions are waiting and at
 * most once per RECLAIM_INTERVAL_NS, unless the waiting versions exceed
 * RECLAIM_MAX_BYTES, which bounds the memory a writer in a tight loop
 * can leave behind.  ectls_reclaim_core_use_outbound_tls_hook() reclaims
 * at once.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define CACHE_LINE 64
#define RECLAIM_BATCH 64
#define RECLAIM_INTERVAL_NS 1000000 /* 1 ms */
#define RECLAIM_MAX_BYTES (1 << 20)

/* One registration; lives until its last version is reclaimed. */
struct registration {
  ec_hook_core_use_outbound_tls_func_t *hook;
  void *closure;
  ectls_destroy_func_t *destroy;
  const struct ectls_plugin *plugin;
  const char *symbol;
  /*
   * Under list_lock.  A registration is destroyed once it is out of the
   * list, no retired version that still awaits reclamation dropped it,
   * and no saved list contains it.
   */
  int in_list;
  int retiring; /* retired records that list it as removed */
  int saved;    /* saved lists that hold it */
  int mark;     /* scratch for restore */
  unsigned long faults; /* out-of-range returns, for ectls_log_due() */
};

/* A copy of the list's order, kept by ectls_save_...(). */
struct ectls_saved_list {
  int count;
  struct registration **registrations;
};

/*
 * The part of a registration that a call needs, copied inline so the
 * walk reads one 16-byte slot per provider and no registration.
 */
struct slot {
  ec_hook_core_use_outbound_tls_func_t *hook;
  void *closure;
};

struct version {
  int count;
  struct registration **registrations; /* count entries, after slots */
  struct slot slots[];
};

/* A version that calls may still walk, and what left with it. */
struct retired {
  struct retired *next;
  struct version *version;
  uint64_t epoch;
  int removed_count;
  struct registration **removed;
};

struct reader {
  _Atomic uint64_t epoch; /* 0 outside calls */
  struct reader *next;
  int in_use;
} __attribute__((aligned(CACHE_LINE)));

static const struct version empty_version = {0, NULL};

/*
 * What every call reads, alone on its cache line: writers change it once
 * per list change and keep their own state (lock, queues) elsewhere, so a
 * change costs each calling thread one cache miss.
 */
static struct {
  _Atomic(const struct version *) current;
  _Atomic uint64_t epoch;
  _Atomic int reader_fence; /* calls fence themselves: no membarrier */
} shared __attribute__((aligned(CACHE_LINE))) = {&empty_version, 1, 1};

/* Guards writers and the retired queue. */
static pthread_mutex_t list_lock = PTHREAD_MUTEX_INITIALIZER;

/*
 * Guards the reader registry.  Separate from list_lock so that a thread's
 * first call never waits for a writer; writers take it inside list_lock
 * to scan the registry.
 */
static pthread_mutex_t registry_lock = PTHREAD_MUTEX_INITIALIZER;
static struct retired *retired_head, *retired_tail;
static int retired_count;
static size_t retired_bytes;
static uint64_t last_reclaim_ns;

/*
 * Stands in for a reader record when none can be allocated.  It heads
 * the registry from the start and is never handed to a thread, so using
 * it changes no list; its epoch is 0 until first used.
 */
static struct reader fallback_reader = {.in_use = 1};
static struct reader *readers = &fallback_reader;

/* Set when membarrier failed after it had been registered. */
static int reclaim_disabled;

static pthread_key_t reader_key;
static __thread struct reader *this_reader
    __attribute__((tls_model("initial-exec")));

/* ---- Calls ---------------------------------------------------------- */

/*
 * Set from ECTLS_READER_FENCE=1 in the environment: calls then fence
 * themselves as they do where membarrier is missing, so tests can run
 * that path on machines that have membarrier.
 */
static int fence_forced;

static void register_membarrier(void) {
  long rc = fence_forced ? -1
                         : syscall(__NR_membarrier,
                                   MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
                                   0, 0);
  atomic_store_explicit(&shared.reader_fence, rc != 0, memory_order_relaxed);
}

/* Runs when a thread that called exits: recycle its reader record. */
static void release_reader(void *arg) {
  struct reader *reader = arg;

  pthread_mutex_lock(&registry_lock);
  atomic_store_explicit(&reader->epoch, 0, memory_order_relaxed);
  reader->in_use = 0;
  pthread_mutex_unlock(&registry_lock);
  this_reader = NULL;
}

/*
 * First call on this thread: take a free reader record or add one.  This
 * is the only lock on the call path, once per thread.  Returns NULL when
 * memory runs out.
 */
static __attribute__((noinline)) struct reader *attach_reader(void) {
  struct reader *reader;

  pthread_mutex_lock(&registry_lock);
  for (reader = readers; reader != NULL; reader = reader->next)
    if (!reader->in_use)
      break;
  if (reader == NULL) {
    void *memory = NULL;
    if (posix_memalign(&memory, CACHE_LINE, sizeof *reader) == 0) {
      reader = memory;
      memset(reader, 0, sizeof *reader);
      reader->next = readers;
      readers = reader;
    }
  }
  if (reader != NULL)
    reader->in_use = 1;
  pthread_mutex_unlock(&registry_lock);

  if (reader != NULL) {
    this_reader = reader;
    pthread_setspecific(reader_key, reader);
  }
  return reader;
}

static inline struct reader *enter_call(uint64_t *saved) {
  struct reader *reader = this_reader;

  if (__builtin_expect(reader == NULL, 0)) {
    reader = attach_reader();
    if (reader == NULL) {
      /* Out of memory: pin every version from now on, so nothing is
       * freed early; the process is failing anyway. */
      atomic_store(&fallback_reader.epoch, 1);
      *saved = 1;
      return &fallback_reader;
    }
  }
  *saved = atomic_load_explicit(&reader->epoch, memory_order_relaxed);
  if (*saved == 0) {
    uint64_t epoch = atomic_load_explicit(&shared.epoch, memory_order_acquire);
    atomic_store_explicit(&reader->epoch, epoch, memory_order_relaxed);
    if (atomic_load_explicit(&shared.reader_fence, memory_order_relaxed))
      atomic_thread_fence(memory_order_seq_cst);
    else
      atomic_signal_fence(memory_order_seq_cst);
  }
  return reader;
}

static inline void leave_call(struct reader *reader, uint64_t saved) {
  atomic_store_explicit(&reader->epoch, saved, memory_order_release);
}

static const char *describe(const struct registration *registration,
                            char *buf, size_t len) {
  const char *symbol = NULL, *object = NULL;

  if (registration->symbol != NULL)
    symbol = registration->symbol;
  if (registration->plugin != NULL)
    object = registration->plugin->path;
  if (symbol == NULL) {
    const char *found_object = NULL;
    ectls_describe_hook(registration->hook, &symbol, &found_object);
    if (object == NULL)
      object = found_object;
  }
  if (symbol != NULL)
    snprintf(buf, len, "%s (%s)", symbol, object ? object : "?");
  else
    snprintf(buf, len, "%p (%s)", ectls_function_address(registration->hook),
             object ? object : "?");
  return buf;
}

static __attribute__((noinline, cold)) int
out_of_range(struct registration *registration, int value) {
  unsigned long count = ectls_log_due(&registration->faults);
  char name[512];

  if (count != 0)
    ectls_log(ECTLS_LOG_ERROR,
              "provider %s returned %d, which is not a decision (0, 1 or "
              "2); the call yields EC_USE_TLS_REQUIRED (fault %lu of this "
              "provider)",
              describe(registration, name, sizeof name), value, count);
  return EC_USE_TLS_REQUIRED;
}

/*
 * The call rule, shared by calls and explained calls: walk the version
 * in order and stop at the first non-zero value, which becomes
 * EC_USE_TLS_REQUIRED when it is out of range.  With trace NULL the
 * compiler drops the recording.
 */
static inline int run_providers(const struct version *version,
                                email_message *message, ectls_trace *trace) {
  for (int i = 0; i < version->count; i++) {
    const struct slot *slot = &version->slots[i];
    int value = slot->hook(slot->closure, message);
    int decision = value;

    /* One test per provider on the common path: NO continues. */
    if (value != EC_USE_TLS_NO && (unsigned)value > EC_USE_TLS_REQUIRED)
      decision = out_of_range(version->registrations[i], value);
    if (trace != NULL) {
      const struct registration *registration = version->registrations[i];
      ectls_trace_step *step = &trace->steps[trace->count++];
      step->hook = slot->hook;
      step->closure = slot->closure;
      step->symbol = registration->symbol;
      step->plugin = registration->plugin ? registration->plugin->path : NULL;
      step->returned = value;
      step->decision = decision;
    }
    if (value != EC_USE_TLS_NO)
      return decision;
  }
  return EC_USE_TLS_NO;
}

ECTLS_EXPORT int call_core_use_outbound_tls_hook(email_message *message) {
  uint64_t saved;
  struct reader *reader = enter_call(&saved);
  const struct version *version =
      atomic_load_explicit(&shared.current, memory_order_acquire);
  int decision = run_providers(version, message, NULL);

  leave_call(reader, saved);
  return decision;
}

ECTLS_EXPORT ectls_trace *
ectls_explain_core_use_outbound_tls_hook(email_message *message) {
  uint64_t saved;
  struct reader *reader = enter_call(&saved);
  const struct version *version =
      atomic_load_explicit(&shared.current, memory_order_acquire);
  ectls_trace *trace = calloc(1, sizeof *trace);

  if (trace != NULL && version->count > 0) {
    trace->steps = calloc((size_t)version->count, sizeof *trace->steps);
    if (trace->steps == NULL) {
      free(trace);
      trace = NULL;
    }
  }
  if (trace != NULL)
    trace->decision = run_providers(version, message, trace);
  leave_call(reader, saved);
  return trace;
}

ECTLS_EXPORT void ectls_trace_free(ectls_trace *trace) {
  if (trace != NULL) {
    free(trace->steps);
    free(trace);
  }
}

ECTLS_EXPORT int ectls_count_core_use_outbound_tls_hook(void) {
  uint64_t saved;
  struct reader *reader = enter_call(&saved);
  int count = atomic_load_explicit(&shared.current, memory_order_acquire)->count;

  leave_call(reader, saved);
  return count;
}

ECTLS_EXPORT int has_core_use_outbound_tls_hook(void) {
  return ectls_count_core_use_outbound_tls_hook() != 0;
}

/* ---- Writers --------------------------------------------------------- */

/*
 * Free what reclaim_locked() detached: versions, then the destroy
 * callbacks of the registrations that left, outside the lock because a
 * callback may register or call.
 */
static void destroy_registrations(struct registration **list, int count) {
  for (int i = 0; i < count; i++) {
    if (list[i]->destroy != NULL)
      list[i]->destroy(list[i]->closure);
    free(list[i]);
  }
}

static void finish_retired(struct retired *list) {
  while (list != NULL) {
    struct retired *next = list->next;

    if (list->version != &empty_version)
      free(list->version);
    destroy_registrations(list->removed, list->removed_count);
    free(list->removed);
    free(list);
    list = next;
  }
}

static uint64_t monotonic_ns(void) {
  struct timespec now;
  clock_gettime(CLOCK_MONOTONIC, &now);
  return (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
}

/* Memory a retired version keeps until it is reclaimed, record included. */
static size_t retired_size(const struct retired *record) {
  return sizeof *record + sizeof *record->version +
         (size_t)record->version->count *
             (sizeof(struct slot) + sizeof(struct registration *)) +
         (size_t)record->removed_count * sizeof(struct registration *);
}

/*
 * Detach the retired versions that no call can reach.  Called with
 * list_lock held; returns them for finish_retired().
 */
static struct retired *reclaim_locked(void) {
  uint64_t oldest = UINT64_MAX;
  struct retired *ready = NULL, **ready_tail = &ready;

  if (retired_head == NULL || reclaim_disabled)
    return NULL;
  last_reclaim_ns = monotonic_ns();
  if (atomic_load_explicit(&shared.reader_fence, memory_order_relaxed))
    atomic_thread_fence(memory_order_seq_cst);
  else if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0)) {
    /* Calls rely on this barrier, so without it no version can be shown
     * unreachable: keep them all rather than free one too early. */
    reclaim_disabled = 1;
    ectls_log(ECTLS_LOG_ERROR, "membarrier failed (%s); retired provider "
              "lists will no longer be freed", strerror(errno));
    return NULL;
  }
  pthread_mutex_lock(&registry_lock);
  for (struct reader *reader = readers; reader != NULL; reader = reader->next) {
    uint64_t epoch =
        atomic_load_explicit(&reader->epoch, memory_order_acquire);
    if (epoch != 0 && epoch < oldest)
      oldest = epoch;
  }
  pthread_mutex_unlock(&registry_lock);
  while (retired_head != NULL && retired_head->epoch <= oldest) {
    struct retired *done = retired_head;
    int destroyed = 0;

    retired_bytes -= retired_size(done);
    /* Keep only the registrations that nothing references any more. */
    for (int i = 0; i < done->removed_count; i++) {
      struct registration *registration = done->removed[i];
      registration->retiring--;
      if (!registration->in_list && registration->retiring == 0 &&
          registration->saved == 0)
        done->removed[destroyed++] = registration;
    }
    done->removed_count = destroyed;
    retired_head = done->next;
    retired_count--;
    done->next = NULL;
    *ready_tail = done;
    ready_tail = &done->next;
  }
  if (retired_head == NULL)
    retired_tail = NULL;
  return ready;
}

/*
 * Publish next in place of the current version and queue the old one,
 * with the registrations that left, for reclamation.  Called with
 * list_lock held; record is preallocated so publishing cannot fail.
 * Returns versions ready to free, for finish_retired().
 */
static struct retired *publish_locked(struct version *next,
                                      struct retired *record) {
  const struct version *old =
      atomic_load_explicit(&shared.current, memory_order_relaxed);

  atomic_store_explicit(&shared.current, next, memory_order_release);
  record->version = (struct version *)old;
  record->epoch = atomic_fetch_add(&shared.epoch, 1) + 1;
  record->next = NULL;
  if (retired_tail != NULL)
    retired_tail->next = record;
  else
    retired_head = record;
  retired_tail = record;
  retired_count++;
  retired_bytes += retired_size(record);
  if (retired_count >= RECLAIM_BATCH &&
      (retired_bytes >= RECLAIM_MAX_BYTES ||
       monotonic_ns() - last_reclaim_ns >= RECLAIM_INTERVAL_NS))
    return reclaim_locked();
  return NULL;
}

static struct version *new_version(int count) {
  struct version *version;

  if (count == 0)
    return (struct version *)&empty_version;
  version = malloc(sizeof *version +
                   (size_t)count * (sizeof(struct slot) +
                                    sizeof(struct registration *)));
  if (version != NULL) {
    version->count = count;
    version->registrations = (struct registration **)&version->slots[count];
  }
  return version;
}

ECTLS_HIDDEN int ectls_register_from(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure, int first,
    ectls_destroy_func_t *destroy, const struct ectls_plugin *plugin,
    const char *symbol) {
  struct registration *registration;
  struct retired *record, *ready;
  struct version *next;
  const struct version *old;

  if (hook == NULL)
    return EINVAL;
  registration = malloc(sizeof *registration);
  record = calloc(1, sizeof *record);
  if (registration == NULL || record == NULL) {
    free(registration);
    free(record);
    return ENOMEM;
  }
  registration->hook = hook;
  registration->closure = closure;
  registration->destroy = destroy;
  registration->plugin = plugin;
  registration->symbol = symbol;
  registration->in_list = 1;
  registration->retiring = 0;
  registration->saved = 0;
  registration->mark = 0;
  registration->faults = 0;

  pthread_mutex_lock(&list_lock);
  old = atomic_load_explicit(&shared.current, memory_order_relaxed);
  next = new_version(old->count + 1);
  if (next == NULL) {
    pthread_mutex_unlock(&list_lock);
    free(registration);
    free(record);
    return ENOMEM;
  }
  /* First prepends, last appends; no sorting. */
  int at = first ? 0 : old->count, shift = first ? 1 : 0;
  if (old->count > 0) { /* the empty version has no arrays */
    memcpy(next->slots + shift, old->slots,
           (size_t)old->count * sizeof(struct slot));
    memcpy(next->registrations + shift, old->registrations,
           (size_t)old->count * sizeof(struct registration *));
  }
  next->slots[at].hook = hook;
  next->slots[at].closure = closure;
  next->registrations[at] = registration;
  ready = publish_locked(next, record);
  pthread_mutex_unlock(&list_lock);

  finish_retired(ready);
  return 0;
}

ECTLS_EXPORT int ectls_register_core_use_outbound_tls_hook(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure, int first,
    ectls_destroy_func_t *destroy) {
  return ectls_register_from(hook, closure, first, destroy,
                             ectls_plugin_loading(), NULL);
}

static void register_or_log(ec_hook_core_use_outbound_tls_func_t *hook,
                            void *closure, int first) {
  int rc = ectls_register_core_use_outbound_tls_hook(hook, closure, first,
                                                     NULL);

  if (rc == EINVAL)
    ectls_log(ECTLS_LOG_ERROR, "register_core_use_outbound_tls_hook_%s: "
              "hook is NULL; nothing was registered", first ? "first" : "last");
  else if (rc != 0)
    ectls_log(ECTLS_LOG_ERROR, "register_core_use_outbound_tls_hook_%s: "
              "out of memory; the provider was not registered",
              first ? "first" : "last");
}

ECTLS_EXPORT void register_core_use_outbound_tls_hook_first(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure) {
  register_or_log(hook, closure, 1);
}

ECTLS_EXPORT void register_core_use_outbound_tls_hook_last(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure) {
  register_or_log(hook, closure, 0);
}

/*
 * Remove the registrations for which match() is true, or only the first
 * one when just_one.  Returns how many were removed, or -ENOMEM.
 */
static int remove_matching(int (*match)(const struct registration *,
                                        const void *),
                           const void *key, int just_one) {
  struct retired *record, *ready;
  struct registration **removed;
  struct version *next;
  const struct version *old;
  int count = 0, kept = 0;

  pthread_mutex_lock(&list_lock);
  old = atomic_load_explicit(&shared.current, memory_order_relaxed);
  for (int i = 0; i < old->count; i++)
    if (match(old->registrations[i], key) && (!just_one || count == 0))
      count++;
  if (count == 0) {
    pthread_mutex_unlock(&list_lock);
    return 0;
  }
  next = new_version(old->count - count);
  record = calloc(1, sizeof *record);
  removed = malloc((size_t)count * sizeof *removed);
  if (next == NULL || record == NULL || removed == NULL) {
    pthread_mutex_unlock(&list_lock);
    if (next != &empty_version)
      free(next);
    free(record);
    free(removed);
    return -ENOMEM;
  }
  count = 0;
  for (int i = 0; i < old->count; i++) {
    struct registration *registration = old->registrations[i];
    if (match(registration, key) && (!just_one || count == 0)) {
      registration->in_list = 0;
      registration->retiring++;
      removed[count++] = registration;
    } else {
      next->slots[kept] = old->slots[i];
      next->registrations[kept++] = registration;
    }
  }
  record->removed = removed;
  record->removed_count = count;
  ready = publish_locked(next, record);
  pthread_mutex_unlock(&list_lock);

  finish_retired(ready);
  return count;
}

struct hook_key {
  ec_hook_core_use_outbound_tls_func_t *hook;
  void *closure;
};

static int match_hook(const struct registration *registration,
                      const void *key) {
  const struct hook_key *wanted = key;
  return registration->hook == wanted->hook &&
         registration->closure == wanted->closure;
}

static int match_any(const struct registration *registration,
                     const void *key) {
  (void)registration;
  (void)key;
  return 1;
}

static int match_plugin(const struct registration *registration,
                        const void *key) {
  return registration->plugin == key;
}

ECTLS_EXPORT int ectls_unregister_core_use_outbound_tls_hook(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure) {
  struct hook_key key = {hook, closure};
  return remove_matching(match_hook, &key, 1);
}

ECTLS_EXPORT int ectls_clear_core_use_outbound_tls_hook(void) {
  return remove_matching(match_any, NULL, 0);
}

ECTLS_HIDDEN int ectls_count_plugin(const struct ectls_plugin *plugin) {
  const struct version *version;
  int count = 0;

  pthread_mutex_lock(&list_lock);
  version = atomic_load_explicit(&shared.current, memory_order_relaxed);
  for (int i = 0; i < version->count; i++)
    count += version->registrations[i]->plugin == plugin;
  pthread_mutex_unlock(&list_lock);
  return count;
}

ECTLS_HIDDEN int ectls_unregister_plugin(const struct ectls_plugin *plugin) {
  return remove_matching(match_plugin, plugin, 0);
}

ECTLS_EXPORT ectls_saved_list *ectls_save_core_use_outbound_tls_hook(void) {
  ectls_saved_list *saved = calloc(1, sizeof *saved);
  const struct version *version;

  if (saved == NULL)
    return NULL;
  pthread_mutex_lock(&list_lock);
  version = atomic_load_explicit(&shared.current, memory_order_relaxed);
  if (version->count > 0) {
    saved->registrations =
        malloc((size_t)version->count * sizeof *saved->registrations);
    if (saved->registrations == NULL) {
      pthread_mutex_unlock(&list_lock);
      free(saved);
      return NULL;
    }
  }
  saved->count = version->count;
  for (int i = 0; i < version->count; i++) {
    saved->registrations[i] = version->registrations[i];
    saved->registrations[i]->saved++;
  }
  pthread_mutex_unlock(&list_lock);
  return saved;
}

ECTLS_EXPORT int
ectls_restore_core_use_outbound_tls_hook(const ectls_saved_list *saved) {
  struct retired *record, *ready;
  struct registration **removed;
  struct version *next;
  const struct version *old;
  int count = 0;

  if (saved == NULL)
    return EINVAL;
  pthread_mutex_lock(&list_lock);
  old = atomic_load_explicit(&shared.current, memory_order_relaxed);
  next = new_version(saved->count);
  record = calloc(1, sizeof *record);
  removed = malloc((size_t)(old->count + 1) * sizeof *removed);
  if (next == NULL || record == NULL || removed == NULL) {
    pthread_mutex_unlock(&list_lock);
    if (next != &empty_version)
      free(next);
    free(record);
    free(removed);
    return ENOMEM;
  }
  for (int i = 0; i < saved->count; i++) {
    struct registration *registration = saved->registrations[i];
    registration->mark = 1;
    next->slots[i].hook = registration->hook;
    next->slots[i].closure = registration->closure;
    next->registrations[i] = registration;
  }
  /* What is in the list now but not in the saved one leaves it. */
  for (int i = 0; i < old->count; i++) {
    struct registration *registration = old->registrations[i];
    if (!registration->mark) {
      registration->in_list = 0;
      registration->retiring++;
      removed[count++] = registration;
    }
  }
  for (int i = 0; i < saved->count; i++) {
    saved->registrations[i]->mark = 0;
    saved->registrations[i]->in_list = 1;
  }
  record->removed = removed;
  record->removed_count = count;
  ready = publish_locked(next, record);
  pthread_mutex_unlock(&list_lock);

  finish_retired(ready);
  return 0;
}

ECTLS_EXPORT void ectls_free_saved_core_use_outbound_tls_hook(
    ectls_saved_list *saved) {
  int destroyed = 0;

  if (saved == NULL)
    return;
  pthread_mutex_lock(&list_lock);
  for (int i = 0; i < saved->count; i++) {
    struct registration *registration = saved->registrations[i];
    registration->saved--;
    if (!registration->in_list && registration->retiring == 0 &&
        registration->saved == 0)
      saved->registrations[destroyed++] = registration;
  }
  pthread_mutex_unlock(&list_lock);

  destroy_registrations(saved->registrations, destroyed);
  free(saved->registrations);
  free(saved);
}

ECTLS_EXPORT int ectls_reclaim_core_use_outbound_tls_hook(void) {
  struct retired *ready;
  int waiting;

  pthread_mutex_lock(&list_lock);
  ready = reclaim_locked();
  waiting = retired_count;
  pthread_mutex_unlock(&list_lock);

  finish_retired(ready);
  return waiting;
}

/* ---- Process lifetime ------------------------------------------------ */

/* Take both locks, in the writers' order, so the child inherits neither
 * held by a thread that does not exist there. */
static void before_fork(void) {
  pthread_mutex_lock(&list_lock);
  pthread_mutex_lock(&registry_lock);
}

static void after_fork_parent(void) {
  pthread_mutex_unlock(&registry_lock);
  pthread_mutex_unlock(&list_lock);
}

/*
 * In the child only the forking thread exists: free the other threads'
 * reader records, whose calls will never finish, and register for
 * membarrier again because the child is a new process.
 */
static void after_fork_child(void) {
  for (struct reader *reader = readers; reader != NULL; reader = reader->next)
    if (reader != this_reader && reader != &fallback_reader) {
      atomic_store_explicit(&reader->epoch, 0, memory_order_relaxed);
      reader->in_use = 0;
    }
  register_membarrier();
  pthread_mutex_unlock(&registry_lock);
  pthread_mutex_unlock(&list_lock);
}

__attribute__((constructor)) static void initialise(void) {
  const char *fence = getenv("ECTLS_READER_FENCE");

  fence_forced = fence != NULL && strcmp(fence, "1") == 0;
  pthread_key_create(&reader_key, release_reader);
  pthread_atfork(before_fork, after_fork_parent, after_fork_child);
  register_membarrier();
}
