/*
 * message.c - the message object: envelope, routing domain and the two
 * context dictionaries.
 *
 * Dictionaries are arrays of key/value pairs in insertion order.  Policy
 * hooks read a handful of keys, so a linear search beats hashing here and
 * keeps the _firstkey/_nextkey walk in a stable order.
 */
#include "internal.h"

#include <stdlib.h>
#include <string.h>

struct pair {
  char *key;
  char *value;
};

struct dictionary {
  struct pair *pairs;
  int count;
  int capacity;
};

struct ec_message {
  char *mailfrom; /* decorated: "MAIL FROM:<...>\r\n", or NULL */
  char *rcptto;   /* decorated: "RCPT TO:<...>\r\n", or NULL */
  char *routing_domain;
  struct dictionary contexts[2]; /* by ECMESS_CTX_CONN / _MESS */
  void *userdata;
};

static const char mailfrom_prefix[] = "MAIL FROM:<";
static const char rcptto_prefix[] = "RCPT TO:<";
static const char address_suffix[] = ">\r\n";

static char *copy_string(const char *text) {
  size_t length = strlen(text) + 1;
  char *copy = malloc(length);

  if (copy != NULL)
    memcpy(copy, text, length);
  return copy;
}

static struct dictionary *dictionary_of(ec_message *message, int which) {
  if (message == NULL || (which != ECMESS_CTX_CONN && which != ECMESS_CTX_MESS))
    return NULL;
  return &message->contexts[which];
}

static int find_key(const struct dictionary *dictionary, const char *key) {
  for (int i = 0; i < dictionary->count; i++)
    if (strcmp(dictionary->pairs[i].key, key) == 0)
      return i;
  return -1;
}

ECTLS_EXPORT ec_message *ectls_message_new(void) {
  return calloc(1, sizeof(ec_message));
}

ECTLS_EXPORT void ectls_message_free(ec_message *message) {
  if (message == NULL)
    return;
  for (int which = 0; which < 2; which++) {
    struct dictionary *dictionary = &message->contexts[which];
    for (int i = 0; i < dictionary->count; i++) {
      free(dictionary->pairs[i].key);
      free(dictionary->pairs[i].value);
    }
    free(dictionary->pairs);
  }
  free(message->mailfrom);
  free(message->rcptto);
  free(message->routing_domain);
  free(message);
}

/* ---- Envelope ------------------------------------------------------- */

/* Returns 1 when text has an ASCII control character (CR and LF too). */
static int has_control(const char *text) {
  for (const unsigned char *p = (const unsigned char *)text; *p; p++)
    if (*p < 0x20 || *p == 0x7f)
      return 1;
  return 0;
}

/*
 * Returns 1 for an address ectls can store: no controls, no angle
 * brackets, and no space after the last '@', because a domain has none
 * and a policy that compares domains would be misled by one.
 */
static int valid_address(const char *address) {
  const char *at = strrchr(address, '@');

  if (strlen(address) > ECTLS_ADDRESS_MAXLEN || has_control(address) ||
      strpbrk(address, "<>") != NULL)
    return 0;
  return at == NULL || strchr(at, ' ') == NULL;
}

/* Build "prefix address >\r\n", or return NULL for an invalid address. */
static char *decorate(const char *prefix, size_t prefix_length,
                      const char *address) {
  size_t length;
  char *line;

  if (address == NULL || !valid_address(address))
    return NULL;
  length = strlen(address);
  line = malloc(prefix_length + length + sizeof address_suffix);
  if (line != NULL) {
    memcpy(line, prefix, prefix_length);
    memcpy(line + prefix_length, address, length);
    memcpy(line + prefix_length + length, address_suffix,
           sizeof address_suffix);
  }
  return line;
}

static int set_address(char **field, const char *prefix, size_t prefix_length,
                       const char *address) {
  char *line = decorate(prefix, prefix_length, address);

  if (line == NULL)
    return 0;
  free(*field);
  *field = line;
  return 1;
}

ECTLS_EXPORT int ectls_message_set_mailfrom(ec_message *message,
                                            const char *address) {
  if (message == NULL)
    return 0;
  return set_address(&message->mailfrom, mailfrom_prefix,
                     sizeof mailfrom_prefix - 1, address);
}

ECTLS_EXPORT int ectls_message_set_rcptto(ec_message *message,
                                          const char *address) {
  /* Unlike the sender, a recipient cannot be empty: "RCPT TO:<>" is not
   * valid SMTP. */
  if (message == NULL || (address != NULL && address[0] == '\0'))
    return 0;
  return set_address(&message->rcptto, rcptto_prefix,
                     sizeof rcptto_prefix - 1, address);
}

ECTLS_EXPORT const char *ec_message_get_mailfrom(ec_message *message) {
  if (message == NULL || message->mailfrom == NULL)
    return "";
  return message->mailfrom;
}

ECTLS_EXPORT const char *ec_message_get_rcptto(ec_message *message) {
  if (message == NULL || message->rcptto == NULL)
    return "";
  return message->rcptto;
}

/* ---- Routing domain ------------------------------------------------- */

ECTLS_EXPORT int ectls_message_set_routing_domain(ec_message *message,
                                                  const char *domain) {
  char *copy;

  if (message == NULL)
    return 0;
  if (domain == NULL) {
    free(message->routing_domain);
    message->routing_domain = NULL;
    return 1;
  }
  if (domain[0] == '\0' || strlen(domain) > ECTLS_DOMAIN_BUFLEN - 3 ||
      has_control(domain) || strpbrk(domain, " @<>") != NULL)
    return 0;
  copy = copy_string(domain);
  if (copy == NULL)
    return 0;
  free(message->routing_domain);
  message->routing_domain = copy;
  return 1;
}

/*
 * The recipient's domain inside the decorated RCPT TO line: what follows
 * the last '@' up to the closing '>'.  Sets *length; NULL when none.
 */
static const char *recipient_domain(const ec_message *message,
                                    size_t *length) {
  const char *line = message->rcptto, *at, *end;

  if (line == NULL)
    return NULL;
  end = line + strlen(line) - (sizeof address_suffix - 1);
  at = NULL;
  for (const char *p = line + sizeof rcptto_prefix - 1; p < end; p++)
    if (*p == '@')
      at = p;
  if (at == NULL || at + 1 == end)
    return NULL;
  *length = (size_t)(end - (at + 1));
  return at + 1;
}

ECTLS_EXPORT int ec_message_get_routing_domain(ec_message *message, char *buf,
                                               int len) {
  const char *domain = NULL;
  size_t length = 0;

  if (buf == NULL || len <= 0)
    return 0;
  buf[0] = '\0';
  if (message == NULL)
    return 0;
  if (message->routing_domain != NULL) {
    domain = message->routing_domain;
    length = strlen(domain);
  } else {
    domain = recipient_domain(message, &length);
  }
  /* "example.org." and "example.org" are one domain; policies compare
   * the second form. */
  if (domain != NULL && length > 1 && domain[length - 1] == '.')
    length--;
  if (domain == NULL || length >= (size_t)len)
    return 0;
  for (size_t i = 0; i < length; i++) {
    char c = domain[i];
    buf[i] = (c >= 'A' && c <= 'Z') ? (char)(c - 'A' + 'a') : c;
  }
  buf[length] = '\0';
  return 1;
}

/* ---- Context dictionaries --------------------------------------------- */

ECTLS_EXPORT const char *ec_message_context_get(ec_message *message,
                                                int which, const char *key) {
  struct dictionary *dictionary = dictionary_of(message, which);
  int index;

  if (dictionary == NULL || key == NULL)
    return "";
  index = find_key(dictionary, key);
  return index < 0 ? "" : dictionary->pairs[index].value;
}

ECTLS_EXPORT int ec_message_context_set(ec_message *message, int which,
                                        const char *key, const char *value) {
  struct dictionary *dictionary = dictionary_of(message, which);
  char *value_copy, *key_copy;
  int index;

  if (dictionary == NULL || key == NULL || value == NULL)
    return 0;
  value_copy = copy_string(value);
  if (value_copy == NULL)
    return 0;
  index = find_key(dictionary, key);
  if (index >= 0) {
    free(dictionary->pairs[index].value);
    dictionary->pairs[index].value = value_copy;
    return 1;
  }
  if (dictionary->count == dictionary->capacity) {
    int capacity = dictionary->capacity ? dictionary->capacity * 2 : 8;
    struct pair *pairs =
        realloc(dictionary->pairs, (size_t)capacity * sizeof *pairs);
    if (pairs == NULL) {
      free(value_copy);
      return 0;
    }
    dictionary->pairs = pairs;
    dictionary->capacity = capacity;
  }
  key_copy = copy_string(key);
  if (key_copy == NULL) {
    free(value_copy);
    return 0;
  }
  dictionary->pairs[dictionary->count].key = key_copy;
  dictionary->pairs[dictionary->count].value = value_copy;
  dictionary->count++;
  return 1;
}

ECTLS_EXPORT int ec_message_context_exists(ec_message *message, int which,
                                           const char *key) {
  struct dictionary *dictionary = dictionary_of(message, which);

  if (dictionary == NULL || key == NULL)
    return 0;
  return find_key(dictionary, key) >= 0;
}

ECTLS_EXPORT int ec_message_context_delete(ec_message *message, int which,
                                           const char *key) {
  struct dictionary *dictionary = dictionary_of(message, which);
  int index;

  if (dictionary == NULL || key == NULL)
    return 0;
  index = find_key(dictionary, key);
  if (index < 0)
    return 0;
  free(dictionary->pairs[index].key);
  free(dictionary->pairs[index].value);
  /* Shift, not swap, so the walk order stays the insertion order. */
  memmove(&dictionary->pairs[index], &dictionary->pairs[index + 1],
          (size_t)(dictionary->count - index - 1) * sizeof(struct pair));
  dictionary->count--;
  return 1;
}

ECTLS_EXPORT int ec_message_context_size(ec_message *message, int which) {
  struct dictionary *dictionary = dictionary_of(message, which);
  return dictionary == NULL ? 0 : dictionary->count;
}

ECTLS_EXPORT const char *ec_message_context_firstkey(ec_message *message,
                                                     int which) {
  struct dictionary *dictionary = dictionary_of(message, which);

  if (dictionary == NULL || dictionary->count == 0)
    return NULL;
  return dictionary->pairs[0].key;
}

ECTLS_EXPORT const char *ec_message_context_nextkey(ec_message *message,
                                                    int which,
                                                    const char *prev) {
  struct dictionary *dictionary = dictionary_of(message, which);
  int index;

  if (dictionary == NULL || prev == NULL)
    return NULL;
  index = find_key(dictionary, prev);
  if (index < 0 || index + 1 >= dictionary->count)
    return NULL;
  return dictionary->pairs[index + 1].key;
}

/* ---- Owner's pointer ---------------------------------------------------- */

ECTLS_EXPORT void ectls_message_set_userdata(ec_message *message,
                                             void *userdata) {
  if (message != NULL)
    message->userdata = userdata;
}

ECTLS_EXPORT void *ectls_message_get_userdata(ec_message *message) {
  return message == NULL ? NULL : message->userdata;
}
