/* Test plugin: ectls_plugin_init registers two static providers, one at each end. */
#include "hooks/core/use_outbound_tls.h"

int ectls_plugin_init(void);

/* The closure that use_outbound_tls expects back from every call. */
static int expected_closure;

static ec_hook_core_use_outbound_tls_func_t at_head;

/* Returns EC_USE_TLS_NO, so the call goes on to the provider at the tail. */
static int at_head(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_NO;
}

/*
 * Static, so the loader's default symbol lookup cannot find it.  Returns
 * an out-of-range value when the closure is not the registered one, which
 * the call turns into EC_USE_TLS_REQUIRED and logs.
 */
static int use_outbound_tls(void *closure, email_message *message) {
  (void)message;
  if (closure != &expected_closure)
    return 7;
  return EC_USE_TLS_IFAVAILABLE;
}

int ectls_plugin_init(void) {
  register_core_use_outbound_tls_hook_last(use_outbound_tls, &expected_closure);
  register_core_use_outbound_tls_hook_first(at_head, NULL);
  return 0;
}
