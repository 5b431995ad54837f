/*
 * internal.h - declarations shared by the C files of libectls and
 * hidden from every other program.
 */
#ifndef ECTLS_INTERNAL_H
#define ECTLS_INTERNAL_H

#include "ectls.h"

/* Marks the functions the shared library exports; all else is hidden. */
#define ECTLS_EXPORT __attribute__((visibility("default")))
#define ECTLS_HIDDEN __attribute__((visibility("hidden")))

/* A plugin that ectls loaded; records are never freed. */
struct ectls_plugin {
  struct ectls_plugin *next;
  void *handle;
  char *path;  /* as the caller gave it */
  char *entry; /* the symbol or init function used */
  int entry_is_init;
  int failed; /* its load failed; kept for calls that still name it */
};

/*
 * Count one more fault on *counter; return the count when it is due for a
 * record (the first 10, then the 100th, 1000th and so on), else 0.  This
 * keeps a provider that fails on every call from flooding the log.
 */
ECTLS_HIDDEN unsigned long ectls_log_due(unsigned long *counter);

/* Format and deliver one record to the current log handler. */
ECTLS_HIDDEN void ectls_log(int level, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * Register with the plugin that registers it recorded, for explain and
 * for undoing a failed init.  symbol may be NULL.
 */
ECTLS_HIDDEN int ectls_register_from(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure, int first,
    ectls_destroy_func_t *destroy, const struct ectls_plugin *plugin,
    const char *symbol);

/* Remove every provider that plugin registered; returns how many. */
ECTLS_HIDDEN int ectls_unregister_plugin(const struct ectls_plugin *plugin);

/* Returns how many providers in the list plugin registered. */
ECTLS_HIDDEN int ectls_count_plugin(const struct ectls_plugin *plugin);

/* The plugin whose init function runs on this thread, or NULL. */
ECTLS_HIDDEN const struct ectls_plugin *ectls_plugin_loading(void);

/*
 * Convert between a function pointer and void *, which POSIX allows (for
 * dlsym and dladdr) but ISO C does not spell.
 */
ECTLS_HIDDEN void *ectls_function_address(
    ec_hook_core_use_outbound_tls_func_t *hook);

#endif /* ECTLS_INTERNAL_H */
