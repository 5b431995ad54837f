/*
 * ec_message.h - the message a policy hook inspects.
 *
 * The ec_message_* functions mirror the part of Momentum's message API
 * that outbound TLS policies use: the envelope, the routing domain and
 * the two context dictionaries.  Their names, arguments and documented
 * return values are Momentum's.  The ectls_message_* functions exist only
 * in ectls: Momentum builds its messages itself, while tests and tools
 * need a way to make one.
 *
 * A message is not locked.  Any number of threads may read one message at
 * once, but a thread that changes a message (set, delete, free) must be
 * the only one using it at that moment.
 */
#ifndef EC_MESSAGE_H
#define EC_MESSAGE_H

#ifdef __cplusplus
extern "C" {
#endif

/* Same pair, same guard as in hooks/core/use_outbound_tls.h. */
#ifndef EC_MESSAGE_TYPEDEFS
#define EC_MESSAGE_TYPEDEFS
typedef struct ec_message ec_message;
typedef struct ec_message email_message;
#endif

/* The context dictionaries: per connection and per message. */
enum ec_message_context_which {
  ECMESS_CTX_CONN = 0,
  ECMESS_CTX_MESS = 1
};

enum ectls_message_limits {
  /*
   * Size of a buffer that fits any routing domain with its terminating
   * NUL: a domain name has at most 253 characters, and ectls rejects
   * longer ones.
   */
  ECTLS_DOMAIN_BUFLEN = 256,
  /*
   * Longest envelope address, in bytes: RFC 5321 (4.5.3.1.3) allows a
   * path of 256 octets including the angle brackets.
   */
  ECTLS_ADDRESS_MAXLEN = 254
};

/*
 * Envelope sender and recipient with their SMTP decoration, as Momentum
 * returns them: "MAIL FROM:<addr>\r\n" and "RCPT TO:<addr>\r\n" (so
 * "MAIL FROM:<>\r\n" for the null sender).  The string belongs to the
 * message and stays valid until the address is changed or the message is
 * freed.  Returns "" when the address was never set or message is NULL.
 */
const char *ec_message_get_mailfrom(ec_message *message);
const char *ec_message_get_rcptto(ec_message *message);

/*
 * Copy the message's routing domain into buf, NUL-terminated, in lower
 * case and without a trailing dot: the domain set with
 * ectls_message_set_routing_domain() if any, else the domain part of the
 * recipient.  Returns 1 on success.  Returns
 * 0, with buf set to "" when len > 0, when there is no domain, when buf is
 * NULL or when the domain does not fit in len bytes (ECTLS_DOMAIN_BUFLEN
 * always suffices).  A domain is never truncated, because a policy that
 * matched part of a name could pick the wrong TLS rule.
 */
int ec_message_get_routing_domain(ec_message *message, char *buf, int len);

/*
 * Context dictionaries.  which is ECMESS_CTX_CONN or ECMESS_CTX_MESS; any
 * other value behaves like a NULL message.  Keys and values are
 * NUL-terminated strings that the message copies.
 *
 * _get returns the value, or "" when the key, the message or which is
 *   missing or invalid.  The pointer stays valid until the key is set
 *   again or deleted, or the message is freed.
 * _set stores a copy of key and value, replacing an earlier value.
 *   Returns 1, or 0 when message, key or value is NULL, which is invalid
 *   or memory runs out.
 * _exists returns 1 when the key is present, else 0.
 * _delete removes the key; returns 1 when it was present, else 0.
 * _size returns the number of keys (0 for a NULL message).
 * _firstkey and _nextkey walk the keys in insertion order: _firstkey
 *   returns the first key, _nextkey the key after prev; both return NULL
 *   at the end, and _nextkey also when prev is not a key.  Changing the
 *   dictionary during a walk is allowed, but a deleted prev ends the walk.
 */
const char *ec_message_context_get(ec_message *message, int which,
                                   const char *key);
int ec_message_context_set(ec_message *message, int which, const char *key,
                           const char *value);
int ec_message_context_exists(ec_message *message, int which,
                              const char *key);
int ec_message_context_delete(ec_message *message, int which,
                              const char *key);
int ec_message_context_size(ec_message *message, int which);
const char *ec_message_context_firstkey(ec_message *message, int which);
const char *ec_message_context_nextkey(ec_message *message, int which,
                                       const char *prev);

/*
 * Create an empty message: no envelope, no routing domain, empty
 * dictionaries.  Returns NULL when memory runs out.  Free it with
 * ectls_message_free(), which accepts NULL.
 */
ec_message *ectls_message_new(void);
void ectls_message_free(ec_message *message);

/*
 * Set the envelope sender or recipient, given bare (without "<>").  The
 * empty string is the null sender; a recipient cannot be empty.  Returns
 * 1, or 0 when message or address is NULL, the address is longer than
 * ECTLS_ADDRESS_MAXLEN bytes, contains a control character (CR and LF
 * included), '<' or '>', has a space in its domain, is an empty
 * recipient, or memory runs out; the message is then unchanged.
 */
int ectls_message_set_mailfrom(ec_message *message, const char *address);
int ectls_message_set_rcptto(ec_message *message, const char *address);

/*
 * Set the routing domain that ec_message_get_routing_domain() returns in
 * place of the recipient's domain; NULL restores the recipient's domain.
 * Returns 1, or 0 when message is NULL, the domain is empty, longer than
 * ECTLS_DOMAIN_BUFLEN - 3 bytes or contains a character that no domain
 * name has (space, '@', '<', '>', a control character), or memory runs
 * out.
 */
int ectls_message_set_routing_domain(ec_message *message, const char *domain);

/*
 * One pointer that the message carries for its owner and never reads,
 * NULL at first.  The Python binding keeps its wrapper object here so a
 * Python provider receives the caller's own Message.
 */
void ectls_message_set_userdata(ec_message *message, void *userdata);
void *ectls_message_get_userdata(ec_message *message);

#ifdef __cplusplus
}
#endif

#endif /* EC_MESSAGE_H */
