/*
 * hooks/core/use_outbound_tls.h - the outbound TLS policy hook.
 *
 * Momentum's SMTP delivery state machine calls this hook before it opens
 * a session for a message, to learn whether TLS must not be used, should
 * be used when the server offers STARTTLS, or must be used.  The names,
 * types and signatures below are Momentum's, so a module written against
 * this header builds unchanged against Momentum's own.
 *
 * Call rule.  Providers run in list order.  The first provider that
 * returns a non-zero value ends the call, and that value is the result.
 * When every provider returns EC_USE_TLS_NO, or none is registered, the
 * result is EC_USE_TLS_NO.  So EC_USE_TLS_NO also means "no opinion": a
 * provider that wants to forbid TLS cannot stop later providers from
 * asking for it.
 *
 * Fail-closed rule.  A provider that returns a value other than the three
 * below ends the call with EC_USE_TLS_REQUIRED, and the fault is reported
 * through the log handler (see ectls.h).  REQUIRED defers a message that
 * cannot get TLS but never loses it, while any other fallback could send
 * mail in clear because a policy hook was broken.
 *
 * Threading.  Every function here may be called from any thread, also
 * from inside a provider.  A call walks the list as it was when the call
 * started: providers registered or removed meanwhile, by another thread
 * or by a provider, take part from the next call on.  Calls take no lock.
 */
#ifndef EC_HOOKS_CORE_USE_OUTBOUND_TLS_H
#define EC_HOOKS_CORE_USE_OUTBOUND_TLS_H

#include <stddef.h> /* NULL, the usual closure */

#ifdef __cplusplus
extern "C" {
#endif

/*
 * The message type, opaque to providers.  email_message is Momentum's
 * older name for ec_message; ec_message.h declares the same pair, and the
 * guard lets the two headers be included together in either order.
 */
#ifndef EC_MESSAGE_TYPEDEFS
#define EC_MESSAGE_TYPEDEFS
typedef struct ec_message ec_message;
typedef struct ec_message email_message;
#endif

/* The decisions a provider returns and a call yields. */
enum ec_use_outbound_tls_decision {
  EC_USE_TLS_NO = 0,          /* TLS must not be used (or: no opinion) */
  EC_USE_TLS_IFAVAILABLE = 1, /* STARTTLS when the server offers it */
  EC_USE_TLS_REQUIRED = 2     /* TLS, or the message is not sent */
};

/*
 * A provider, as a function type: declare one with
 *   static ec_hook_core_use_outbound_tls_func_t my_hook;
 * and point at one with
 *   ec_hook_core_use_outbound_tls_func_t *hook = my_hook;
 * closure is the pointer given at registration.  message may be NULL when
 * the caller has no message.
 */
typedef int ec_hook_core_use_outbound_tls_func_t(void *closure,
                                                 email_message *message);

/* Returns 0 when no provider is registered, non-zero otherwise. */
int has_core_use_outbound_tls_hook(void);

/*
 * Add a provider at the head (_first) or the tail (_last) of the list.
 * There is no sorting: the last _first call runs first.  The same
 * (hook, closure) pair may be registered more than once and then runs
 * once per registration.  When memory runs out the provider is not added
 * and the failure is logged; ectls_register_core_use_outbound_tls_hook()
 * in ectls.h reports it to the caller instead.
 */
void register_core_use_outbound_tls_hook_first(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure);
void register_core_use_outbound_tls_hook_last(
    ec_hook_core_use_outbound_tls_func_t *hook, void *closure);

/*
 * Run the providers by the call rule and return the decision: one of
 * EC_USE_TLS_NO, EC_USE_TLS_IFAVAILABLE or EC_USE_TLS_REQUIRED, never any
 * other value.
 */
int call_core_use_outbound_tls_hook(email_message *message);

#ifdef __cplusplus
}
#endif

#endif /* EC_HOOKS_CORE_USE_OUTBOUND_TLS_H */
