/*
 * domain_policy.c - example plugin: outbound TLS policy by routing domain.
 *
 * The provider returns EC_USE_TLS_REQUIRED when the message's routing
 * domain is in required_domains below or in the message context variable
 * tls_required_domains (ECMESS_CTX_MESS), a comma-separated list such as
 * "partner.example, mail.example.net".  Any other domain gets
 * EC_USE_TLS_IFAVAILABLE.  Without a message or a routing domain it
 * returns EC_USE_TLS_NO, which means "no opinion" and lets the providers
 * after it decide.
 *
 * Domains match whole and without regard to case: listing bank.example
 * does not cover mx.bank.example.
 *
 * The provider is exported as use_outbound_tls, the symbol that
 * ectls_load_plugin() registers when given no symbol and no init.  Build
 * it like a Momentum module, without linking against libectls:
 *   cc -std=c99 -fPIC -shared -Iinclude examples/domain_policy.c \
 *      -o domain_policy.so
 */
#include <ctype.h>
#include <stddef.h>
#include <string.h>

#include "ec_message.h"
#include "hooks/core/use_outbound_tls.h"

/* Domains that always need TLS.  Replace them with your own. */
static const char *const required_domains[] = {
    "bank.example",
    "payroll.example",
};

ec_hook_core_use_outbound_tls_func_t use_outbound_tls;

/* Returns 1 when the first length bytes of name spell domain, ignoring case. */
static int same_domain(const char *name, size_t length, const char *domain) {
  if (strlen(domain) != length)
    return 0;
  for (size_t i = 0; i < length; i++)
    if (tolower((unsigned char)name[i]) != tolower((unsigned char)domain[i]))
      return 0;
  return 1;
}

/* Returns 1 when domain is an entry of the comma-separated list. */
static int in_list(const char *list, const char *domain) {
  while (*list != '\0') {
    size_t length, end;

    while (*list == ',' || *list == ' ' || *list == '\t')
      list++;
    length = strcspn(list, ",");
    end = length;
    while (end > 0 && (list[end - 1] == ' ' || list[end - 1] == '\t'))
      end--;
    if (end > 0 && same_domain(list, end, domain))
      return 1;
    list += length;
  }
  return 0;
}

int use_outbound_tls(void *closure, email_message *message) {
  char domain[ECTLS_DOMAIN_BUFLEN];
  size_t count = sizeof required_domains / sizeof required_domains[0];
  const char *listed;

  (void)closure;
  if (message == NULL ||
      !ec_message_get_routing_domain(message, domain, ECTLS_DOMAIN_BUFLEN))
    return EC_USE_TLS_NO;

  for (size_t i = 0; i < count; i++)
    if (same_domain(domain, strlen(domain), required_domains[i]))
      return EC_USE_TLS_REQUIRED;

  /* An unset variable reads as "", which lists no domain. */
  listed = ec_message_context_get(message, ECMESS_CTX_MESS,
                                  "tls_required_domains");
  if (in_list(listed, domain))
    return EC_USE_TLS_REQUIRED;
  return EC_USE_TLS_IFAVAILABLE;
}
