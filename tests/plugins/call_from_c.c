/* Test plugin: exports call_from_c(), which runs the provider list from C outside libectls. */
#include "hooks/core/use_outbound_tls.h"

int call_from_c(email_message *message);

/*
 * Returns call_core_use_outbound_tls_hook(message), resolved from the
 * process at load time as in a Momentum module, so a test can show that
 * a C caller reaches every provider, including those added from Python.
 */
int call_from_c(email_message *message) {
  return call_core_use_outbound_tls_hook(message);
}
