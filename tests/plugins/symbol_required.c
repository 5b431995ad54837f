/* Test plugin: exports only the default provider symbol, which returns REQUIRED. */
#include "hooks/core/use_outbound_tls.h"

int use_outbound_tls(void *closure, email_message *message);

int use_outbound_tls(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_REQUIRED;
}
