"""Message: a Python view of the C message that providers inspect."""

from __future__ import annotations

import email.parser
import email.policy
import os
import re
from email.message import EmailMessage
from typing import Iterator, Mapping, MutableMapping, Optional, Union

from ectls._binding import ffi, lib
from ectls.errors import MessageError

__all__ = ["Message"]

_MAILFROM_PREFIX = b"MAIL FROM:<"
_RCPTTO_PREFIX = b"RCPT TO:<"
_SUFFIX = b">\r\n"

StrPath = Union[str, "os.PathLike[str]"]


def _encode(value: str, what: str) -> bytes:
    """Encode a str for C: UTF-8, no NUL characters."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, not {type(value).__name__}")
    if "\0" in value:
        raise MessageError(f"{what} contains a NUL character: {value!r}")
    try:
        return value.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError as error:
        raise MessageError(
            f"{what} cannot be encoded as UTF-8 ({error.reason}): {value!r}"
        ) from None


def _decode(pointer: object) -> str:
    text: str = ffi.string(pointer).decode("utf-8", "surrogateescape")
    return text


class _Context(MutableMapping[str, str]):
    """One of a message's context dictionaries, read and written in C."""

    __slots__ = ("_label", "_message", "_which")

    def __init__(self, message: Message, which: int, label: str) -> None:
        self._message = message
        self._which = which
        self._label = label

    def __getitem__(self, key: str) -> str:
        pointer = self._message._pointer()
        encoded = _encode(key, "context key")
        if not lib.ec_message_context_exists(pointer, self._which, encoded):
            raise KeyError(key)
        return _decode(lib.ec_message_context_get(pointer, self._which, encoded))

    def __setitem__(self, key: str, value: str) -> None:
        pointer = self._message._pointer()
        encoded_key = _encode(key, "context key")
        encoded_value = _encode(value, f"context value for {key!r}")
        if not lib.ec_message_context_set(
            pointer, self._which, encoded_key, encoded_value
        ):
            raise MemoryError(f"cannot store context key {key!r}")

    def __delitem__(self, key: str) -> None:
        pointer = self._message._pointer()
        if not lib.ec_message_context_delete(
            pointer, self._which, _encode(key, "context key")
        ):
            raise KeyError(key)

    def __iter__(self) -> Iterator[str]:
        pointer = self._message._pointer()
        key = lib.ec_message_context_firstkey(pointer, self._which)
        while key != ffi.NULL:
            text = ffi.string(key)
            yield text.decode("utf-8", "surrogateescape")
            # Look the key up again: the caller may have changed the
            # dictionary while this generator was suspended.
            key = lib.ec_message_context_nextkey(pointer, self._which, text)

    def __len__(self) -> int:
        return int(lib.ec_message_context_size(self._message._pointer(), self._which))

    def __repr__(self) -> str:
        return f"<{self._label} {dict(self)!r}>"


class Message:
    """An SMTP message as the use_outbound_tls hook receives it.

    A Message owns a C ``ec_message``: the envelope (one sender, one
    recipient, as Momentum hands a provider one recipient at a time), an
    optional routing domain and the message and connection context
    dictionaries.  ``mailfrom`` and ``rcptto`` are bare addresses; C
    providers read the same values decorated, e.g. ``MAIL FROM:<a@b>``.

    :param mailfrom: envelope sender; "" is the null sender.
    :param rcptto: envelope recipient.
    :param routing_domain: domain that replaces the recipient's domain
        for routing.
    :param context: initial message context (``ECMESS_CTX_MESS``).
    :param connection_context: initial connection context
        (``ECMESS_CTX_CONN``).
    """

    __slots__ = ("__weakref__", "_c_message", "_handle", "email")

    email: Optional[EmailMessage]
    """The parsed RFC 5322 message, for messages built from bytes or a file."""

    def __init__(
        self,
        mailfrom: Optional[str] = None,
        rcptto: Optional[str] = None,
        *,
        routing_domain: Optional[str] = None,
        context: Optional[Mapping[str, str]] = None,
        connection_context: Optional[Mapping[str, str]] = None,
    ) -> None:
        c_message = lib.ectls_message_new()
        if c_message == ffi.NULL:
            raise MemoryError("cannot allocate a message")
        self._c_message = ffi.gc(c_message, lib.ectls_message_free)
        # The C message points back at this object, so a Python provider
        # called with it receives this very Message, not a new wrapper.
        self._handle = ffi.new_handle(self)
        lib.ectls_message_set_userdata(c_message, self._handle)
        self.email = None

        if mailfrom is not None:
            self.mailfrom = mailfrom
        if rcptto is not None:
            self.rcptto = rcptto
        if routing_domain is not None:
            self.routing_domain = routing_domain
        if context:
            self.context.update(context)
        if connection_context:
            self.connection_context.update(connection_context)

    @classmethod
    def _borrow(cls, c_message: object) -> Message:
        """Wrap a C message that C code owns, for the length of one call."""
        message = cls.__new__(cls)
        message._c_message = c_message
        message._handle = None
        message.email = None
        return message

    def _release(self) -> None:
        """End a borrowed wrapper's use; C may free the message next."""
        self._c_message = None

    def _pointer(self) -> object:
        c_message = self._c_message
        if c_message is None:
            raise MessageError(
                "this Message wrapped a C message for one provider call and "
                "is no longer valid; copy what you need during the call"
            )
        return c_message

    # ---- Building from RFC 5322 --------------------------------------

    @classmethod
    def from_bytes(
        cls,
        raw: bytes,
        *,
        mailfrom: Optional[str] = None,
        rcptto: Optional[str] = None,
        routing_domain: Optional[str] = None,
        context: Optional[Mapping[str, str]] = None,
        connection_context: Optional[Mapping[str, str]] = None,
    ) -> Message:
        """Build a Message from an RFC 5322 message.

        The envelope comes from the arguments, else the sender from
        ``Return-Path`` and the recipient from the first address in
        ``To``.  Whichever is found in neither stays unset, so a message
        without ``To`` still gets a (recipient-less) Message.
        """
        if not isinstance(raw, (bytes, bytearray, memoryview)):
            raise TypeError(
                f"raw must be bytes, not {type(raw).__name__}; "
                "use from_file() for a path"
            )
        parsed = email.parser.BytesParser(policy=email.policy.default).parsebytes(
            bytes(raw)
        )
        assert isinstance(parsed, EmailMessage)
        if mailfrom is None:
            mailfrom = _return_path(parsed)
        if rcptto is None:
            rcptto = _first_recipient(parsed)
        message = cls(
            mailfrom,
            rcptto,
            routing_domain=routing_domain,
            context=context,
            connection_context=connection_context,
        )
        message.email = parsed
        return message

    @classmethod
    def from_file(
        cls,
        path: StrPath,
        *,
        mailfrom: Optional[str] = None,
        rcptto: Optional[str] = None,
        routing_domain: Optional[str] = None,
        context: Optional[Mapping[str, str]] = None,
        connection_context: Optional[Mapping[str, str]] = None,
    ) -> Message:
        """Build a Message from a file holding an RFC 5322 message."""
        with open(path, "rb") as file:
            raw = file.read()
        return cls.from_bytes(
            raw,
            mailfrom=mailfrom,
            rcptto=rcptto,
            routing_domain=routing_domain,
            context=context,
            connection_context=connection_context,
        )

    # ---- Envelope ---------------------------------------------------

    @property
    def mailfrom(self) -> Optional[str]:
        """Envelope sender without ``<>``: "" for the null sender, None
        when unset."""
        return _bare(lib.ec_message_get_mailfrom(self._pointer()), _MAILFROM_PREFIX)

    @mailfrom.setter
    def mailfrom(self, address: str) -> None:
        encoded = _encode(address, "mailfrom")
        if not lib.ectls_message_set_mailfrom(self._pointer(), encoded):
            raise MessageError(_address_problem("mailfrom", address, encoded))

    @property
    def rcptto(self) -> Optional[str]:
        """Envelope recipient without ``<>``, or None when unset."""
        return _bare(lib.ec_message_get_rcptto(self._pointer()), _RCPTTO_PREFIX)

    @rcptto.setter
    def rcptto(self, address: str) -> None:
        encoded = _encode(address, "rcptto")
        if not lib.ectls_message_set_rcptto(self._pointer(), encoded):
            raise MessageError(_address_problem("rcptto", address, encoded))

    @property
    def routing_domain(self) -> Optional[str]:
        """Domain the message is routed to, in lower case: the one set
        here, else the recipient's; None when there is neither.

        Assign None to route by the recipient's domain again.
        """
        buffer = ffi.new("char[]", lib.ECTLS_DOMAIN_BUFLEN)
        if not lib.ec_message_get_routing_domain(
            self._pointer(), buffer, lib.ECTLS_DOMAIN_BUFLEN
        ):
            return None
        return _decode(buffer)

    @routing_domain.setter
    def routing_domain(self, domain: Optional[str]) -> None:
        encoded = ffi.NULL if domain is None else _encode(domain, "routing_domain")
        if not lib.ectls_message_set_routing_domain(self._pointer(), encoded):
            raise MessageError(
                f"invalid routing domain {domain!r}: it must be 1 to "
                f"{lib.ECTLS_DOMAIN_BUFLEN - 3} bytes without spaces, '@', "
                "'<', '>', CR or LF"
            )

    # ---- Context ----------------------------------------------------

    @property
    def context(self) -> MutableMapping[str, str]:
        """The message context dictionary (``ECMESS_CTX_MESS``)."""
        return _Context(self, lib.ECMESS_CTX_MESS, "message context")

    @property
    def connection_context(self) -> MutableMapping[str, str]:
        """The connection context dictionary (``ECMESS_CTX_CONN``)."""
        return _Context(self, lib.ECMESS_CTX_CONN, "connection context")

    def __repr__(self) -> str:
        if self._c_message is None:
            return "<Message (released)>"
        return f"<Message mailfrom={self.mailfrom!r} rcptto={self.rcptto!r}>"


def _bare(decorated: object, prefix: bytes) -> Optional[str]:
    """Strip the SMTP decoration that libectls adds around an address."""
    line: bytes = ffi.string(decorated)
    if not line:
        return None
    return line[len(prefix) : -len(_SUFFIX)].decode("utf-8", "surrogateescape")


def _address_problem(field: str, address: str, encoded: bytes) -> str:
    if len(encoded) > lib.ECTLS_ADDRESS_MAXLEN:
        return (
            f"invalid {field} {address[:40]!r}...: {len(encoded)} bytes, "
            f"longer than the {lib.ECTLS_ADDRESS_MAXLEN} that SMTP allows"
        )
    return (
        f"invalid {field} {address!r}: an address must not contain control "
        "characters (CR and LF included), '<', '>' or a space in its domain, "
        "and a recipient must not be empty"
    )


def _first_recipient(parsed: EmailMessage) -> Optional[str]:
    """Return the first addr-spec in To, or None when To has none.

    The email package parses To, decoding RFC 2047 display names without
    splitting at commas inside them.
    """
    try:
        value = parsed.get("To")
        addresses = getattr(value, "addresses", ()) if value is not None else ()
    except ValueError as error:
        # The email package refuses, for one, a CR or LF in a decoded name.
        raise MessageError(f"invalid To header: {error}") from None
    for address in addresses:
        if address.username:
            return str(address.addr_spec)
    return None


_PATH = re.compile(r"<([^<>\s]+)>|([^<>\s]+)")


def _return_path(parsed: EmailMessage) -> Optional[str]:
    """Return the address in Return-Path: "" for "<>", None without one.

    The email package leaves Return-Path unparsed, so it is parsed here,
    and strictly: a sender that is not an address raises MessageError
    instead of turning into some other sender.
    """
    try:
        value = parsed.get("Return-Path")
    except ValueError as error:
        raise MessageError(f"invalid Return-Path header: {error}") from None
    if value is None:
        return None
    text = str(value).strip()
    if text == "<>":
        return ""
    match = _PATH.fullmatch(text)
    address = (match.group(1) or match.group(2)) if match else None
    if address is None or "@" not in address:
        raise MessageError(
            f"invalid Return-Path header {text!r}: expected <address> or <>; "
            "give the sender explicitly (mailfrom=, --mailfrom)"
        )
    return address
