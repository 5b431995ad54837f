/*
 * plugin.c - loads provider plugins with the dynamic linker.
 *
 * Plugins are opened with RTLD_NODELETE and never closed, so a provider
 * address in the list stays valid for the life of the process.  Before
 * the first load, libectls promotes itself to the global symbol scope:
 * Python opens extension modules with RTLD_LOCAL, which would otherwise
 * hide register_..._first and friends from a plugin that, like a Momentum
 * module, does not link against libectls.
 */
#define _GNU_SOURCE
#include "internal.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static pthread_mutex_t plugin_lock = PTHREAD_MUTEX_INITIALIZER;
static struct ectls_plugin *plugins; /* loaded or loading, newest first */
static __thread const struct ectls_plugin *loading;

ECTLS_HIDDEN const struct ectls_plugin *ectls_plugin_loading(void) {
  return loading;
}

ECTLS_HIDDEN void *ectls_function_address(
    ec_hook_core_use_outbound_tls_func_t *hook) {
  void *address;
  memcpy(&address, &hook, sizeof address);
  return address;
}

static ec_hook_core_use_outbound_tls_func_t *as_hook(void *address) {
  ec_hook_core_use_outbound_tls_func_t *hook;
  memcpy(&hook, &address, sizeof hook);
  return hook;
}

ECTLS_EXPORT int ectls_describe_hook(ec_hook_core_use_outbound_tls_func_t *hook,
                                     const char **symbol,
                                     const char **object) {
  void *address = ectls_function_address(hook);
  Dl_info info;

  if (symbol != NULL)
    *symbol = NULL;
  if (object != NULL)
    *object = NULL;
  if (hook == NULL || dladdr(address, &info) == 0 || info.dli_fname == NULL)
    return 0;
  if (symbol != NULL && info.dli_saddr == address)
    *symbol = info.dli_sname;
  if (object != NULL)
    *object = info.dli_fname;
  return 1;
}

static int fail(char *errbuf, int errlen, int status, const char *format,
                ...) __attribute__((format(printf, 4, 5)));

static int fail(char *errbuf, int errlen, int status, const char *format,
                ...) {
  va_list arguments;

  if (errbuf != NULL && errlen > 0) {
    va_start(arguments, format);
    vsnprintf(errbuf, (size_t)errlen, format, arguments);
    va_end(arguments);
  }
  return status;
}

/* Make this library's symbols visible to plugins; see the file comment. */
static void export_own_symbols(void) {
  Dl_info info;
  void *self;

  if (dladdr((void *)&plugins, &info) == 0 || info.dli_fname == NULL)
    return;
  self = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD | RTLD_GLOBAL);
  /* RTLD_NOLOAD took a reference to a library that is already loaded;
   * keeping it is what we want, as libectls must never be unloaded. */
  (void)self;
}

/* Returns the record for (handle, entry), or NULL. Holds plugin_lock. */
static struct ectls_plugin *find_plugin(void *handle, const char *entry) {
  for (struct ectls_plugin *plugin = plugins; plugin != NULL;
       plugin = plugin->next)
    if (!plugin->failed && plugin->handle == handle &&
        strcmp(plugin->entry, entry) == 0)
      return plugin;
  return NULL;
}

/*
 * Take back the claim of a load that failed.  The record stays allocated
 * because calls that are still walking an old list may print its path.
 */
static void forget_plugin(struct ectls_plugin *plugin) {
  pthread_mutex_lock(&plugin_lock);
  plugin->failed = 1;
  pthread_mutex_unlock(&plugin_lock);
}

/*
 * Look name up in the plugin itself.  dlsym() also searches the plugin's
 * dependencies, and a provider taken from libc (strcmp, say) would crash
 * the first call.  Returns NULL when the plugin does not define name;
 * *reason then gets the dynamic linker's text, or the file that does
 * define it.
 */
static void *own_symbol(void *handle, const char *name, char *reason,
                        size_t length) {
  struct link_map *plugin_map = NULL, *symbol_map = NULL;
  const char *error;
  Dl_info info;
  void *address;

  dlerror();
  address = dlsym(handle, name);
  error = dlerror();
  if (address == NULL) {
    snprintf(reason, length, "%s", error != NULL ? error : "symbol is NULL");
    return NULL;
  }
  if (dlinfo(handle, RTLD_DI_LINKMAP, &plugin_map) == 0 &&
      dladdr1(address, &info, (void **)&symbol_map, RTLD_DL_LINKMAP) != 0 &&
      symbol_map != plugin_map) {
    snprintf(reason, length, "it is defined in [%s], which the plugin uses",
             info.dli_fname != NULL ? info.dli_fname : "another object");
    return NULL;
  }
  /* Calling a variable (stdout, environ) as a provider would crash. */
  const ElfW(Sym) *entry = NULL;
  if (dladdr1(address, &info, (void **)&entry, RTLD_DL_SYMENT) != 0 &&
      entry != NULL && ELF64_ST_TYPE(entry->st_info) != STT_FUNC &&
      ELF64_ST_TYPE(entry->st_info) != STT_GNU_IFUNC) {
    snprintf(reason, length, "it is not a function");
    return NULL;
  }
  return address;
}

/*
 * Find the entry point to use.  Sets *address and *is_init; returns the
 * symbol name, or NULL with errbuf filled.
 */
static const char *choose_entry(void *handle, const char *path,
                                const char *symbol, const char *init,
                                void **address, int *is_init, char *errbuf,
                                int errlen) {
  const char *name = symbol != NULL ? symbol : init;
  char reason[512];

  if (name != NULL) {
    *address = own_symbol(handle, name, reason, sizeof reason);
    if (*address == NULL) {
      fail(errbuf, errlen, 0, "no %s symbol [%s] in [%s]: %s",
           symbol != NULL ? "provider" : "init", name, path, reason);
      return NULL;
    }
    *is_init = init != NULL;
    return name;
  }
  *address = own_symbol(handle, ECTLS_PLUGIN_DEFAULT_INIT, reason,
                        sizeof reason);
  if (*address != NULL) {
    *is_init = 1;
    return ECTLS_PLUGIN_DEFAULT_INIT;
  }
  *address = own_symbol(handle, ECTLS_PLUGIN_DEFAULT_SYMBOL, reason,
                        sizeof reason);
  if (*address != NULL) {
    *is_init = 0;
    return ECTLS_PLUGIN_DEFAULT_SYMBOL;
  }
  fail(errbuf, errlen, 0,
       "no entry point in [%s]: it exports neither [%s] nor [%s]; name one "
       "with a symbol or init argument",
       path, ECTLS_PLUGIN_DEFAULT_INIT, ECTLS_PLUGIN_DEFAULT_SYMBOL);
  return NULL;
}

ECTLS_EXPORT int ectls_load_plugin(const char *path, const char *symbol,
                                   const char *init, int first, char *errbuf,
                                   int errlen) {
  struct ectls_plugin *plugin;
  const char *entry;
  void *handle, *address;
  int is_init = 0, rc;

  if (errbuf != NULL && errlen > 0)
    errbuf[0] = '\0';
  /* An empty path would make dlopen return the main program. */
  if (path == NULL || path[0] == '\0')
    return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_ARGUMENT,
                "plugin path is empty");
  if (symbol != NULL && init != NULL)
    return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_ARGUMENT,
                "plugin [%s]: give a provider symbol or an init function, "
                "not both", path);

  /*
   * The record exists before dlopen() because a plugin's constructors run
   * inside dlopen() and may register providers: tagging them with the
   * record lets a failed load remove them too.  It stays unclaimed
   * (failed) until the entry point is known and not loaded already.
   */
  plugin = calloc(1, sizeof *plugin);
  if (plugin == NULL || (plugin->path = strdup(path)) == NULL) {
    free(plugin);
    return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_NOMEM,
                "plugin [%s]: out of memory", path);
  }
  plugin->failed = 1;
  pthread_mutex_lock(&plugin_lock);
  plugin->next = plugins;
  plugins = plugin;
  pthread_mutex_unlock(&plugin_lock);

  export_own_symbols();
  const struct ectls_plugin *outer = loading;
  loading = plugin;
  handle = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
  loading = outer;
  if (handle == NULL) {
    const char *error = dlerror();
    const char *name = symbol != NULL ? symbol : init;
    ectls_unregister_plugin(plugin);
    return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_OPEN,
                "unable to open shared library [%s]%s%s%s: %s", path,
                name != NULL ? " for [" : "", name != NULL ? name : "",
                name != NULL ? "]" : "",
                error != NULL ? error : "unknown error");
  }
  entry = choose_entry(handle, path, symbol, init, &address, &is_init,
                       errbuf, errlen);
  if (entry == NULL) {
    ectls_unregister_plugin(plugin);
    return ECTLS_PLUGIN_ERR_SYMBOL;
  }
  plugin->entry = strdup(entry);
  if (plugin->entry == NULL) {
    ectls_unregister_plugin(plugin);
    return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_NOMEM,
                "plugin [%s]: out of memory", path);
  }
  plugin->handle = handle;
  plugin->entry_is_init = is_init;

  /* Claim (handle, entry) before running anything, so two threads that
   * load the same plugin at once cannot both register it. */
  pthread_mutex_lock(&plugin_lock);
  if (find_plugin(handle, entry) != NULL) {
    pthread_mutex_unlock(&plugin_lock);
    ectls_unregister_plugin(plugin);
    return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_LOADED,
                "plugin [%s] is already loaded with entry point [%s]", path,
                entry);
  }
  plugin->failed = 0;
  pthread_mutex_unlock(&plugin_lock);

  if (!is_init) {
    rc = ectls_register_from(as_hook(address), NULL, first, NULL, plugin,
                             plugin->entry);
    if (rc != 0) {
      ectls_unregister_plugin(plugin);
      forget_plugin(plugin);
      return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_NOMEM,
                  "plugin [%s]: out of memory registering [%s]", path, entry);
    }
    return ECTLS_PLUGIN_OK;
  }

  int (*init_function)(void);
  memcpy(&init_function, &address, sizeof init_function);
  loading = plugin;
  rc = init_function();
  loading = outer;
  if (rc == 0 && ectls_count_plugin(plugin) == 0)
    ectls_log(ECTLS_LOG_WARNING,
              "init function [%s] of [%s] returned 0 but registered no "
              "provider",
              entry, path);
  if (rc != 0) {
    int removed = ectls_unregister_plugin(plugin);
    forget_plugin(plugin);
    return fail(errbuf, errlen, ECTLS_PLUGIN_ERR_INIT,
                "init function [%s] of [%s] returned %d; removed the %d "
                "provider(s) it had registered",
                entry, path, rc, removed < 0 ? 0 : removed);
  }
  return ECTLS_PLUGIN_OK;
}
