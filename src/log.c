/*
 * log.c - routes the faults ectls detects in C to one log handler.
 *
 * Without a handler, records go to stderr, one line each.  The Python
 * package installs a handler that forwards them to logging.
 */
#include "internal.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

/*
 * A handler and its closure, swapped as one pointer so a record never
 * pairs one handler with another's closure.  Replaced targets stay
 * allocated, because a record on another thread may still be using one;
 * a process sets its handler a few times at most.
 */
struct log_target {
  ectls_log_func_t *handler;
  void *closure;
  struct log_target *older;
};

static _Atomic(struct log_target *) target;
static struct log_target *installed; /* all targets made, newest first */
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static const char *level_name(int level) {
  return level >= ECTLS_LOG_ERROR ? "error" : "warning";
}

ECTLS_EXPORT void ectls_set_log_handler(ectls_log_func_t *handler,
                                        void *closure) {
  struct log_target *next = NULL;

  if (handler != NULL) {
    next = malloc(sizeof *next);
    if (next == NULL) {
      ectls_log(ECTLS_LOG_ERROR,
                "ectls_set_log_handler: out of memory; handler unchanged");
      return;
    }
    next->handler = handler;
    next->closure = closure;
  }
  pthread_mutex_lock(&install_lock);
  if (next != NULL) {
    next->older = installed;
    installed = next;
  }
  atomic_store(&target, next);
  pthread_mutex_unlock(&install_lock);
}

ECTLS_HIDDEN void ectls_log(int level, const char *format, ...) {
  char text[1024];
  va_list arguments;
  struct log_target *current = atomic_load(&target);

  va_start(arguments, format);
  vsnprintf(text, sizeof text, format, arguments);
  va_end(arguments);

  if (current != NULL)
    current->handler(current->closure, level, text);
  else
    fprintf(stderr, "ectls: %s: %s\n", level_name(level), text);
}

ECTLS_HIDDEN unsigned long ectls_log_due(unsigned long *counter) {
  unsigned long count = __atomic_add_fetch(counter, 1, __ATOMIC_RELAXED);
  unsigned long power = 100;

  while (power < count && power <= 1000000000ul)
    power *= 10;
  return count <= 10 || count == power ? count : 0;
}
