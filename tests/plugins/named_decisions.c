/* Test plugin: one named provider per decision, one returning 7, and no default entry point. */
#include "hooks/core/use_outbound_tls.h"

ec_hook_core_use_outbound_tls_func_t decide_no;
ec_hook_core_use_outbound_tls_func_t decide_ifavailable;
ec_hook_core_use_outbound_tls_func_t decide_required;
ec_hook_core_use_outbound_tls_func_t decide_out_of_range;

int decide_no(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_NO;
}

int decide_ifavailable(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_IFAVAILABLE;
}

int decide_required(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_REQUIRED;
}

/* Not a decision: a call that reaches it must yield REQUIRED and log. */
int decide_out_of_range(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return 7;
}
