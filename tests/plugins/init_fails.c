/* Test plugin: ectls_plugin_init registers a provider and then fails, so the load must undo it. */
#include "hooks/core/use_outbound_tls.h"

int ectls_plugin_init(void);

static ec_hook_core_use_outbound_tls_func_t left_behind;

static int left_behind(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_REQUIRED;
}

int ectls_plugin_init(void) {
  register_core_use_outbound_tls_hook_first(left_behind, NULL);
  return -1;
}
