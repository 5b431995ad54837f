/*
 * ectls.h - what ectls adds to Momentum's hook API.
 *
 * Momentum can only add providers.  Tests and tools also need to remove
 * them, see who decided, load plugins and route log records, so these
 * functions exist in ectls alone; all carry the ectls_ prefix and leave
 * the Momentum-named API in hooks/core/use_outbound_tls.h unchanged.
 *
 * Every function here may be called from any thread.
 */
#ifndef ECTLS_H
#define ECTLS_H

#include "hooks/core/use_outbound_tls.h"
#include "ec_message.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ---- The provider list ------------------------------------------------ */

/*
 * Called once for a registration's closure when no call can reach the
 * registration any more: after it was removed and every call that had
 * already started has returned.  It runs on the thread that registers,
 * unregisters, clears or reclaims at that moment, never while ectls holds
 * a lock, and must not block for long.
 */
typedef void ectls_destroy_func_t(void *closure);

/*
 * Add a provider at the head (first != 0) or the tail of the list, like
 * the register_..._first and _last functions, with an optional destroy
 * callback (NULL for none).  Returns 0, or ENOMEM when memory runs out,
 * or EINVAL when hook is NULL; the list is then unchanged and destroy is
 * not called.
 */
int ectls_register_core_use_outbound_tls_hook(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure, int first,
    ectls_destroy_func_t *destroy);

/*
 * Remove the registration of (hook, closure) nearest the head of the list.
 * Returns 1 when one was removed, 0 when none matched, -ENOMEM when memory
 * runs out (the list is then unchanged).  Calls already under way finish
 * with the list they started with.
 */
int ectls_unregister_core_use_outbound_tls_hook(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure);

/* Remove every provider.  Returns how many were removed. */
int ectls_clear_core_use_outbound_tls_hook(void);

/* Returns the number of providers in the list. */
int ectls_count_core_use_outbound_tls_hook(void);

/*
 * Free the list versions that no call can reach any more and run the
 * destroy callbacks of the registrations they held.  ectls does this by
 * itself every few changes; call it to release closures at a known point.
 * Returns how many retired list versions are still waiting for a call to
 * finish.
 */
int ectls_reclaim_core_use_outbound_tls_hook(void);

/*
 * Save the list's current order, and put it back later: for tests that
 * need an empty or different list and must leave the process's list as
 * they found it.  A saved list keeps its registrations alive (their
 * destroy callbacks wait) until it is freed.
 *
 * _save returns NULL when memory runs out.  _restore makes the list
 * exactly the saved one: registrations added since are removed (and
 * destroyed once unreachable), removed ones come back in their saved
 * places.  It returns 0, ENOMEM (list unchanged) or EINVAL (saved is
 * NULL), and may be called more than once.  _free releases a saved list
 * and accepts NULL.
 */
typedef struct ectls_saved_list ectls_saved_list;
ectls_saved_list *ectls_save_core_use_outbound_tls_hook(void);
int ectls_restore_core_use_outbound_tls_hook(const ectls_saved_list *saved);
void ectls_free_saved_core_use_outbound_tls_hook(ectls_saved_list *saved);

/* ---- Explaining a decision -------------------------------------------- */

/* One provider's part in an explained call. */
typedef struct ectls_trace_step {
  ec_hook_core_use_outbound_tls_func_t *hook;
  void *closure;
  const char *symbol;   /* symbol the plugin loader registered, or NULL */
  const char *plugin;   /* plugin that registered it, or NULL */
  int returned;         /* the provider's return value, as returned */
  int decision;         /* what the call rule made of it */
} ectls_trace_step;

/* A whole explained call. */
typedef struct ectls_trace {
  int decision;            /* the result, as call_...() returns it */
  int count;               /* providers that ran, in call order */
  ectls_trace_step *steps; /* count entries; the last one decided */
} ectls_trace;

/*
 * Perform one call exactly like call_core_use_outbound_tls_hook() and
 * record each provider that ran.  A call that ends on EC_USE_TLS_NO ran
 * every provider and none decided.  Returns NULL, without calling any
 * provider, when memory runs out.  Free the result with ectls_trace_free().
 * The symbol and plugin strings live as long as the process.
 */
ectls_trace *ectls_explain_core_use_outbound_tls_hook(email_message *message);
void ectls_trace_free(ectls_trace *trace);

/*
 * Name the function at hook with the dynamic linker's help: *symbol gets
 * the exported symbol that starts exactly at hook (NULL for a static
 * function), *object the path of the file that contains it.  Returns 1
 * when the file is known, else 0 (both outputs NULL).  The strings live
 * as long as that file stays loaded.
 */
int ectls_describe_hook(ec_hook_core_use_outbound_tls_func_t *hook,
                        const char **symbol, const char **object);

/* ---- Plugins ------------------------------------------------------------ */

/* Results of ectls_load_plugin(). */
enum ectls_plugin_status {
  ECTLS_PLUGIN_OK = 0,
  ECTLS_PLUGIN_ERR_ARGUMENT = 1, /* path NULL or empty, or symbol and init */
  ECTLS_PLUGIN_ERR_OPEN = 2,     /* the dynamic linker could not load it */
  ECTLS_PLUGIN_ERR_SYMBOL = 3,   /* the provider or init symbol is missing */
  ECTLS_PLUGIN_ERR_INIT = 4,     /* the init function returned non-zero */
  ECTLS_PLUGIN_ERR_LOADED = 5,   /* this file and entry point are loaded */
  ECTLS_PLUGIN_ERR_NOMEM = 6     /* memory ran out */
};

/*
 * Load the shared object at path and register what it provides.
 *
 * With symbol, register that provider (at the head when first != 0, else
 * at the tail) and call no init function.  With init, call
 * int init(void), which registers providers itself and returns 0 on
 * success.  With neither, call ECTLS_PLUGIN_DEFAULT_INIT when the plugin
 * exports it, else register ECTLS_PLUGIN_DEFAULT_SYMBOL.  Passing both
 * symbol and init is an error.
 *
 * path goes to dlopen() as given, so a path without a '/' is searched
 * for on the dynamic linker's library path, not in the current
 * directory; write "./plugin.so" for that.
 *
 * The plugin needs not link against libectls: ectls makes its own symbols
 * global before loading, so a module built like a Momentum module
 * resolves register_..._first and the rest from the process.  A plugin is
 * never unloaded.  Loading the same file (also through another path or a
 * symlink) with the same entry point again fails with
 * ECTLS_PLUGIN_ERR_LOADED and registers nothing.  When a load fails, the
 * providers that the plugin's constructors or init function registered
 * are removed again, so a failed load leaves the list as it was.  The
 * symbol must be a function defined in the plugin itself, not a variable
 * and not a symbol of a library the plugin uses.
 *
 * Returns ECTLS_PLUGIN_OK or an error code; on error, errbuf (when not
 * NULL) receives a NUL-terminated message naming the path, the symbol and
 * the dynamic linker's own text, truncated to errlen bytes.
 */
int ectls_load_plugin(const char *path, const char *symbol, const char *init,
                      int first, char *errbuf, int errlen);

/* The entry points ectls_load_plugin() looks for when given neither. */
#define ECTLS_PLUGIN_DEFAULT_INIT "ectls_plugin_init"
#define ECTLS_PLUGIN_DEFAULT_SYMBOL "use_outbound_tls"

/* ---- Logging ------------------------------------------------------------ */

/* Record levels; the numbers are those of Python's logging module. */
enum ectls_log_level {
  ECTLS_LOG_WARNING = 30,
  ECTLS_LOG_ERROR = 40
};

/*
 * Receives each fault that ectls detects in C, such as a provider's
 * out-of-range return value, as one line of text without a newline.  It
 * may run on any thread, also inside a call, and must not call back into
 * the list.
 */
typedef void ectls_log_func_t(void *closure, int level, const char *message);

/*
 * Send log records to handler, or, with NULL, back to the default, which
 * writes each record as one line "ectls: LEVEL: message" to stderr.  The
 * Python package installs a handler that forwards to logging's "ectls"
 * logger while the interpreter runs.
 */
void ectls_set_log_handler(ectls_log_func_t *handler, void *closure);

#ifdef __cplusplus
}
#endif

#endif /* ECTLS_H */
