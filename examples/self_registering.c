/*
 * self_registering.c - example plugin that registers its providers from
 * an init function, as a Momentum module does when it starts.
 *
 * ectls_load_plugin() calls ectls_plugin_init() when a plugin exports it
 * and was given no symbol and no init.  This one registers two providers:
 *
 *   require_by_connection, at the head of the list: EC_USE_TLS_REQUIRED
 *     when the connection context variable tls_policy (ECMESS_CTX_CONN)
 *     is exactly "require", else EC_USE_TLS_NO ("no opinion").  At the
 *     head, nothing that runs later can weaken that requirement.
 *   opportunistic_fallback, at the tail: EC_USE_TLS_IFAVAILABLE for every
 *     call that no other provider decided.
 *
 * Build it like a Momentum module, without linking against libectls:
 *   cc -std=c99 -fPIC -shared -Iinclude examples/self_registering.c \
 *      -o self_registering.so
 */
#include <stddef.h>
#include <string.h>

#include "ec_message.h"
#include "hooks/core/use_outbound_tls.h"

int ectls_plugin_init(void);

static ec_hook_core_use_outbound_tls_func_t require_by_connection;
static ec_hook_core_use_outbound_tls_func_t opportunistic_fallback;

static int require_by_connection(void *closure, email_message *message) {
  const char *policy;

  (void)closure;
  /* _get returns "" for a NULL message or a missing variable. */
  policy = ec_message_context_get(message, ECMESS_CTX_CONN, "tls_policy");
  if (strcmp(policy, "require") == 0)
    return EC_USE_TLS_REQUIRED;
  return EC_USE_TLS_NO;
}

static int opportunistic_fallback(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_IFAVAILABLE;
}

/*
 * Returns 0 for success.  The register functions report no error: when
 * memory runs out they log it and leave the provider out.
 */
int ectls_plugin_init(void) {
  register_core_use_outbound_tls_hook_first(require_by_connection, NULL);
  register_core_use_outbound_tls_hook_last(opportunistic_fallback, NULL);
  return 0;
}
