"""SMTP delivery under the TLS decision of the provider list.

deliver() gets the decision from the list once, through explain(), and
then talks SMTP with smtplib:

- NO: the client never sends STARTTLS, even when the server offers it.
- IFAVAILABLE: the client sends STARTTLS when the server offers it.  When
  the upgrade fails (STARTTLS rejected, handshake error, connection
  lost), the message goes out at once in plaintext on a new connection,
  unless ``ifavailable_fallback=False``, which defers it.  This follows
  Momentum's ``tls_ifavailable_fallback`` option (4.1 and later, default
  true).
- REQUIRED: MAIL, RCPT and DATA are sent only once TLS is established.
  When STARTTLS is not offered, is rejected or fails, the client sends
  QUIT where the connection allows it and the message is deferred.

After STARTTLS the client sends EHLO again and uses only the extensions
listed over TLS, as RFC 3207 requires.  A message counts as delivered
only when the server accepts its data with a 2xx reply.
"""

from __future__ import annotations

import enum
import io
import logging
import re
import smtplib
import ssl
from dataclasses import dataclass
from email.generator import BytesGenerator
from email.message import EmailMessage
from email.policy import SMTP, SMTPUTF8
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from ectls.errors import Error
from ectls.hooks import UseTLS, explain
from ectls.message import Message

__all__ = [
    "DEFAULT_DATA_TIMEOUT",
    "DEFAULT_TIMEOUT",
    "DeliveryResult",
    "DeliveryStatus",
    "InvalidMessageError",
    "deliver",
]

logger = logging.getLogger(__name__)

# RFC 5321 section 4.5.3.2 gives 5 minutes as the minimum for most
# replies and 10 minutes for the reply to the end of the data.
DEFAULT_TIMEOUT = 300.0
"""Seconds that connecting, or waiting for one reply, may take."""
DEFAULT_DATA_TIMEOUT = 600.0
"""Seconds that each step of the DATA phase may take."""

_BARE_LINE_END = re.compile(rb"\r\n|\r|\n")
# Header lines read from the source go out as they came, not refolded.
_ASCII_POLICY = SMTP.clone(refold_source="none")
_UTF8_POLICY = SMTPUTF8.clone(refold_source="none")


class DeliveryStatus(str, enum.Enum):
    """The outcome of a delivery attempt."""

    DELIVERED = "delivered"
    """The server accepted the message data with a 2xx reply."""
    DEFERRED = "deferred"
    """Not sent; a later attempt may succeed.  A 4xx reply, a connection
    problem, or TLS that the decision needs and the server did not give."""
    FAILED = "failed"
    """Not sent, and trying again will not help: a 5xx reply, or an SMTP
    extension the message needs that the server does not offer."""


class InvalidMessageError(Error, ValueError):
    """A message that deliver() cannot send: it has no envelope sender,
    no envelope recipient, or no parsed RFC 5322 message."""


@dataclass(frozen=True)
class DeliveryResult:
    """The outcome of one deliver() call."""

    status: DeliveryStatus
    decision: UseTLS
    """The decision of the provider list."""
    decided_by: Optional[str]
    """The provider that decided, as explain() names it; None when no
    provider decided and the decision is NO."""
    reason: str
    """A one-sentence account of the outcome, for people."""
    reply_code: Optional[int] = None
    """Code of the server's last reply that mattered; None when the
    server sent none.  The reply to QUIT is not recorded."""
    reply_text: Optional[str] = None
    """Text of that reply; the lines of a multiline reply are joined with
    newlines."""
    tls: bool = False
    """True when the session that produced this result established TLS."""
    tls_version: Optional[str] = None
    """The TLS protocol version, such as "TLSv1.3"."""
    tls_cipher: Optional[str] = None
    """The OpenSSL name of the cipher suite."""
    tls_verified: bool = False
    """True when the server's certificate chain and host name were
    verified during the handshake."""
    plaintext_fallback: bool = False
    """True when an IFAVAILABLE upgrade failed and this result comes from
    the plaintext retry on a new connection."""

    @property
    def delivered(self) -> bool:
        """True when the server accepted the message."""
        return self.status is DeliveryStatus.DELIVERED

    def to_dict(self) -> Dict[str, Any]:
        """Return the fields as JSON-ready values (enums by name or value)."""
        return {
            "status": self.status.value,
            "decision": self.decision.name,
            "decided_by": self.decided_by,
            "reason": self.reason,
            "reply_code": self.reply_code,
            "reply_text": self.reply_text,
            "tls": self.tls,
            "tls_version": self.tls_version,
            "tls_cipher": self.tls_cipher,
            "tls_verified": self.tls_verified,
            "plaintext_fallback": self.plaintext_fallback,
        }


@dataclass(frozen=True)
class _Envelope:
    sender: str
    recipient: str
    email: EmailMessage
    ascii_addresses: bool
    ascii_headers: bool


@dataclass(frozen=True)
class _Settings:
    host: str
    port: int
    helo_name: Optional[str]
    timeout: float
    data_timeout: float


class _Stop(Exception):
    """End of a session before the server accepted the message."""

    def __init__(
        self,
        status: DeliveryStatus,
        reason: str,
        *,
        upgrade_failed: bool = False,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.upgrade_failed = upgrade_failed
        """True when STARTTLS was sent and TLS was not established."""


# Longest reply line read, in bytes, as smtplib reads them.
_MAX_REPLY_LINE = 8192


class _DataBeforeHandshakeError(smtplib.SMTPException):
    """The server sent bytes after its 220 reply to STARTTLS and before
    the TLS handshake."""


class _SMTP(smtplib.SMTP):
    """smtplib.SMTP that fails closed on data sent before the handshake.

    After a 220 reply to STARTTLS, smtplib.SMTP.starttls() drops its read
    buffer and starts the handshake (CPython 3.9 to 3.13), so bytes
    that arrived with the 220 are discarded and bytes arriving later go
    into the handshake, which then fails.  Either way they are never read
    as replies.  Bytes already buffered mean that someone tampers with the
    session, so this class raises before the handshake starts.
    """

    starttls_reply: Optional[Tuple[int, bytes]] = None
    """The reply to STARTTLS, kept for when starttls() raises after it."""

    def connect(
        self, host: str = "localhost", port: int = 0, source_address: Any = None
    ) -> Tuple[int, bytes]:
        # starttls() verifies the certificate against self._host, which
        # only the constructor sets; a later connect() leaves it empty.
        self._host = host
        return super().connect(host, port, source_address)

    def docmd(self, cmd: str, args: str = "") -> Tuple[int, bytes]:
        code, text = super().docmd(cmd, args)
        if cmd.upper() != "STARTTLS":
            return code, text
        self.starttls_reply = (code, text)
        if code == 220 and self._has_unread_data():
            raise _DataBeforeHandshakeError(
                "server sent data after its 220 reply to STARTTLS, before the "
                "TLS handshake"
            )
        return code, text

    # RFC 5321 sets no limit on the lines of one reply; real EHLO replies
    # have a few dozen, and a server sending lines without end must not
    # exhaust memory.
    max_reply_lines = 1000

    def getreply(self) -> Tuple[int, bytes]:
        """Read one reply like smtplib.SMTP.getreply(), and fail once it
        runs past max_reply_lines lines."""
        if self.file is None:
            if self.sock is None:
                raise smtplib.SMTPServerDisconnected("not connected")
            self.file = self.sock.makefile("rb")
        lines: List[bytes] = []
        while True:
            try:
                line = self.file.readline(_MAX_REPLY_LINE + 1)
            except OSError as error:
                self.close()
                raise smtplib.SMTPServerDisconnected(
                    f"connection closed while reading a reply: {error}"
                ) from None
            if not line:
                self.close()
                raise smtplib.SMTPServerDisconnected("connection closed")
            if len(line) > _MAX_REPLY_LINE or len(lines) >= self.max_reply_lines:
                self.close()
                raise smtplib.SMTPResponseException(
                    500, b"reply line too long, or reply of too many lines"
                )
            lines.append(line[4:].strip(b" \t\r\n"))
            try:
                code = int(line[:3])
            except ValueError:
                return -1, b"\n".join(lines)
            if line[3:4] != b"-":
                return code, b"\n".join(lines)

    def _has_unread_data(self) -> bool:
        """Return True when a byte is buffered or waiting on the socket.

        The socket is non-blocking for the check, so it never waits.
        """
        if self.file is None or self.sock is None:
            return False
        timeout = self.sock.gettimeout()
        self.sock.settimeout(0.0)
        try:
            # peek() reads the socket once when its buffer is empty; a
            # non-blocking socket without data makes it return b"".
            pending: bytes = self.file.peek(1)
        except OSError:
            pending = b""
        finally:
            self.sock.settimeout(timeout)
        return bool(pending)


def _status_for(code: int) -> DeliveryStatus:
    """Map a rejecting reply code to a status: 5xx fails, all else defers."""
    return DeliveryStatus.FAILED if 500 <= code <= 599 else DeliveryStatus.DEFERRED


def _decode(text: Union[bytes, str]) -> str:
    # smtplib gives its own messages, such as "Line too long.", as str.
    if isinstance(text, str):
        return text
    return text.decode("utf-8", "replace")


def _reply_summary(code: int, text: Union[bytes, str]) -> str:
    return f"{code} {_decode(text)}".replace("\n", " ").strip()


def _serialise(parsed: EmailMessage, utf8: bool) -> bytes:
    """Serialise a message for DATA, with CRLF line endings.

    Header lines parsed from bytes are written unchanged.  Headers set in
    Python are folded by the email package, which writes non-ASCII text
    as RFC 2047 encoded words unless utf8 is true.
    """
    buffer = io.BytesIO()
    policy = _UTF8_POLICY if utf8 else _ASCII_POLICY
    BytesGenerator(buffer, policy=policy).flatten(parsed)
    return _BARE_LINE_END.sub(b"\r\n", buffer.getvalue())


class _Session:
    """One SMTP connection: the smtplib client, the last reply that
    matters and the TLS state."""

    def __init__(self, settings: _Settings) -> None:
        self.settings = settings
        self.smtp = _SMTP(timeout=settings.timeout, local_hostname=settings.helo_name)
        self.reply: Optional[Tuple[int, str]] = None
        self.tls_version: Optional[str] = None
        self.tls_cipher: Optional[str] = None
        # True while the connection waits for a command in a known state,
        # so that QUIT may be sent.
        self.can_quit = False

    def run(
        self,
        envelope: _Envelope,
        decision: UseTLS,
        context: Optional[ssl.SSLContext],
    ) -> Optional[_Stop]:
        """Run the session to the end; return None when the server
        accepted the message, else why it ended."""
        where = f"{self.settings.host}:{self.settings.port}"
        try:
            self._connect()
            self._greet(decision is UseTLS.REQUIRED)
            if decision is not UseTLS.NO:
                assert context is not None
                self._start_tls(decision, context)
            self._transfer(envelope)
            return None
        except _Stop as stop:
            return stop
        except smtplib.SMTPServerDisconnected as error:
            # smtplib raises this for a closed connection and for a read
            # or write that failed or timed out.
            self.can_quit = False
            return _Stop(
                DeliveryStatus.DEFERRED, f"connection to {where} lost: {error}"
            )
        except smtplib.SMTPResponseException as error:
            # A reply smtplib could not parse, such as an overlong line.
            self._record(error.smtp_code, error.smtp_error)
            self.can_quit = False
            return _Stop(
                DeliveryStatus.DEFERRED,
                f"invalid reply from {where}: "
                f"{_reply_summary(error.smtp_code, error.smtp_error)}",
            )
        except OSError as error:
            self.can_quit = False
            return _Stop(
                DeliveryStatus.DEFERRED, f"connection to {where} failed: {error}"
            )
        finally:
            self._close()

    def _record(self, code: int, text: Union[bytes, str]) -> None:
        self.reply = (code, _decode(text))

    def _command(
        self, send: Callable[..., Tuple[int, bytes]], *args: Any
    ) -> Tuple[int, bytes]:
        code, text = send(*args)
        self._record(code, text)
        return code, text

    def _connect(self) -> None:
        # A port other than 0 keeps smtplib from parsing "host:port".
        code, text = self._command(
            self.smtp.connect, self.settings.host, self.settings.port
        )
        self.can_quit = True
        if code != 220:
            raise _Stop(
                _status_for(code),
                f"server rejected the connection: {_reply_summary(code, text)}",
            )

    def _greet(self, required: bool) -> None:
        """Send EHLO; when it is rejected, send HELO unless TLS is required.

        A server greeted with HELO cannot offer STARTTLS, so under
        REQUIRED a rejected EHLO ends the session.
        """
        code, text = self._command(self.smtp.ehlo)
        if 200 <= code <= 299:
            return
        if code == 421:
            raise _Stop(
                DeliveryStatus.DEFERRED,
                f"server closed the session: {_reply_summary(code, text)}",
            )
        if required and not self._tls_established():
            raise _Stop(
                DeliveryStatus.DEFERRED,
                f"server rejected EHLO ({_reply_summary(code, text)}), so it "
                "cannot offer STARTTLS, which the decision REQUIRED needs",
            )
        code, text = self._command(self.smtp.helo)
        if not 200 <= code <= 299:
            raise _Stop(
                _status_for(code),
                f"server rejected EHLO and HELO: {_reply_summary(code, text)}",
            )

    def _tls_established(self) -> bool:
        return isinstance(self.smtp.sock, ssl.SSLSocket)

    def _start_tls(self, decision: UseTLS, context: ssl.SSLContext) -> None:
        """Upgrade with STARTTLS as the decision requires, then greet again."""
        if not self.smtp.has_extn("starttls"):
            if decision is UseTLS.REQUIRED:
                raise _Stop(
                    DeliveryStatus.DEFERRED,
                    "server does not offer STARTTLS, which the decision REQUIRED needs",
                )
            return  # IFAVAILABLE goes on in plaintext on this connection.

        try:
            code, text = self.smtp.starttls(context=context)
        except _DataBeforeHandshakeError as error:
            self._record_starttls_reply()
            self.can_quit = False
            raise _Stop(
                DeliveryStatus.DEFERRED, str(error), upgrade_failed=True
            ) from error
        except smtplib.SMTPResponseException as error:
            # The connection stays in plaintext and may still take QUIT.
            self._record(error.smtp_code, error.smtp_error)
            raise _Stop(
                DeliveryStatus.DEFERRED,
                "server rejected STARTTLS: "
                f"{_reply_summary(error.smtp_code, error.smtp_error)}",
                upgrade_failed=True,
            ) from error
        except smtplib.SMTPServerDisconnected as error:
            self.can_quit = False
            raise _Stop(
                DeliveryStatus.DEFERRED,
                f"connection lost during STARTTLS: {error}",
                upgrade_failed=True,
            ) from error
        except OSError as error:
            # ssl.SSLError, certificate errors included, is an OSError.
            self._record_starttls_reply()
            self.can_quit = False
            raise _Stop(
                DeliveryStatus.DEFERRED,
                f"TLS handshake failed: {error}",
                upgrade_failed=True,
            ) from error
        self._record(code, text)

        sock = self.smtp.sock
        assert isinstance(sock, ssl.SSLSocket)
        self.tls_version = sock.version()
        cipher = sock.cipher()
        self.tls_cipher = cipher[0] if cipher else None
        # starttls() has dropped the extensions learnt in plaintext.
        self._greet(decision is UseTLS.REQUIRED)

    def _record_starttls_reply(self) -> None:
        if self.smtp.starttls_reply is not None:
            self._record(*self.smtp.starttls_reply)

    def _transfer(self, envelope: _Envelope) -> None:
        """Send MAIL, RCPT and DATA; raise _Stop unless all are accepted."""
        smtp = self.smtp
        utf8 = False
        if not envelope.ascii_addresses:
            if not smtp.has_extn("smtputf8"):
                raise _Stop(
                    DeliveryStatus.FAILED,
                    "the envelope has a non-ASCII address and the server does "
                    "not offer SMTPUTF8",
                )
            utf8 = True
        elif not envelope.ascii_headers and smtp.has_extn("smtputf8"):
            utf8 = True
        payload = _serialise(envelope.email, utf8)

        options = ["SMTPUTF8"] if utf8 else []
        # NOTE: 8-bit data goes out as it is when the server offers
        # neither 8BITMIME nor SMTPUTF8; nothing converts it to a 7-bit
        # transfer encoding or RFC 2047 encoded words.
        if not payload.isascii() and smtp.has_extn("8bitmime"):
            options.append("BODY=8BITMIME")

        code, text = self._command(smtp.mail, envelope.sender, options)
        self._expect_success(code, text, f"MAIL FROM:<{envelope.sender}>")
        code, text = self._command(smtp.rcpt, envelope.recipient)
        self._expect_success(code, text, f"RCPT TO:<{envelope.recipient}>")

        if smtp.sock is not None:
            smtp.sock.settimeout(self.settings.data_timeout)
        try:
            code, text = self._command(smtp.data, payload)
        except smtplib.SMTPDataError as error:
            # smtplib raises this for any reply to DATA other than 354.
            self._record(error.smtp_code, error.smtp_error)
            raise _Stop(
                _status_for(error.smtp_code),
                "server rejected DATA: "
                f"{_reply_summary(error.smtp_code, error.smtp_error)}",
            ) from error
        self._expect_success(code, text, "the message data")

    def _expect_success(self, code: int, text: bytes, what: str) -> None:
        if not 200 <= code <= 299:
            raise _Stop(
                _status_for(code),
                f"server rejected {what}: {_reply_summary(code, text)}",
            )

    def _close(self) -> None:
        if self.can_quit:
            try:
                self.smtp.quit()
            except (smtplib.SMTPException, OSError) as error:
                logger.debug(
                    "QUIT to %s:%d failed: %s",
                    self.settings.host,
                    self.settings.port,
                    error,
                )
        self.smtp.close()


def _envelope_of(message: Message) -> _Envelope:
    if not isinstance(message, Message):
        raise TypeError(f"expected a Message, not {type(message).__name__}")
    if message.email is None:
        raise InvalidMessageError(
            "the message has no parsed RFC 5322 message to send; build it "
            "with Message.from_bytes() or Message.from_file()"
        )
    recipient = message.rcptto
    if recipient is None:
        raise InvalidMessageError(
            "the message has no envelope recipient; set rcptto or a To: header"
        )
    sender = message.mailfrom
    if sender is None:
        raise InvalidMessageError(
            'the message has no envelope sender; set mailfrom ("" for the '
            "null sender) or a Return-Path: header"
        )
    ascii_headers = all(str(value).isascii() for _, value in message.email.raw_items())
    return _Envelope(
        sender=sender,
        recipient=recipient,
        email=message.email,
        ascii_addresses=sender.isascii() and recipient.isascii(),
        ascii_headers=ascii_headers,
    )


def _client_context(
    decision: UseTLS, verify: Optional[bool], cafile: Optional[str]
) -> ssl.SSLContext:
    """Build the client context.  Without verify, it verifies for REQUIRED
    and is opportunistic (no verification) for IFAVAILABLE."""
    context = ssl.create_default_context(cafile=cafile)
    if verify is None:
        verify = decision is UseTLS.REQUIRED
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


def deliver(
    message: Message,
    host: str,
    port: int = 25,
    *,
    helo_name: Optional[str] = None,
    ifavailable_fallback: bool = True,
    verify: Optional[bool] = None,
    cafile: Optional[str] = None,
    ssl_context: Optional[ssl.SSLContext] = None,
    timeout: float = DEFAULT_TIMEOUT,
    data_timeout: float = DEFAULT_DATA_TIMEOUT,
) -> DeliveryResult:
    """Send message to the SMTP server at host:port under the TLS decision
    of the provider list, and return how it ended.

    The envelope is ``message.mailfrom`` and ``message.rcptto``; the data
    is ``message.email``, serialised by the email package with CRLF line
    endings.  SMTPUTF8 is used when an envelope address is not ASCII (the
    server must offer it, else the result is FAILED) or when raw headers
    are not ASCII and the server offers it.

    :param helo_name: name sent with EHLO and HELO; smtplib's default is
        the fully qualified name of this host.
    :param ifavailable_fallback: when an IFAVAILABLE upgrade fails, send
        in plaintext on a new connection (True) or defer (False).
    :param verify: verify the server's certificate and host name.  None
        verifies under REQUIRED and not under IFAVAILABLE.
    :param cafile: PEM file of the CA certificates to trust in place of
        the system's.
    :param ssl_context: context for STARTTLS under either decision; it
        replaces verify and cafile.
    :param timeout: seconds that connecting or waiting for one reply may
        take.
    :param data_timeout: seconds that each step of the DATA phase may
        take.
    :raises InvalidMessageError: the message lacks a sender, a recipient
        or a parsed RFC 5322 message.
    :raises ValueError: an invalid port, or ssl_context given together
        with verify or cafile.
    :raises OSError: cafile could not be loaded.
    """
    envelope = _envelope_of(message)
    if type(port) is not int or not 0 < port < 65536:
        raise ValueError(f"invalid port {port!r}: expected an int from 1 to 65535")
    if helo_name is not None and (
        not helo_name or any(character.isspace() for character in helo_name)
    ):
        raise ValueError(
            f"invalid helo_name {helo_name!r}: expected a host name without "
            "spaces, CR or LF"
        )
    if ssl_context is not None and (verify is not None or cafile is not None):
        raise ValueError("give either ssl_context or verify and cafile, not both")

    explanation = explain(message)
    decision = explanation.decision
    decided_by = explanation.decided_by
    context: Optional[ssl.SSLContext] = None
    if decision is not UseTLS.NO:
        if ssl_context is not None:
            context = ssl_context
        else:
            context = _client_context(decision, verify, cafile)

    settings = _Settings(
        host=host,
        port=port,
        helo_name=helo_name,
        timeout=timeout,
        data_timeout=data_timeout,
    )
    session = _Session(settings)
    stop = session.run(envelope, decision, context)
    fallback = False
    first_reason = ""
    if (
        stop is not None
        and stop.upgrade_failed
        and decision is UseTLS.IFAVAILABLE
        and ifavailable_fallback
    ):
        first_reason = stop.reason
        logger.warning(
            "STARTTLS to %s:%d failed (%s); sending in plaintext on a new connection",
            host,
            port,
            stop.reason,
        )
        session = _Session(settings)
        stop = session.run(envelope, UseTLS.NO, None)
        fallback = True

    if stop is None:
        status = DeliveryStatus.DELIVERED
        reason = "server accepted the message"
    else:
        status = stop.status
        reason = stop.reason
    if fallback:
        reason = f"{reason}, in plaintext after STARTTLS failed: {first_reason}"

    tls = session.tls_version is not None
    result = DeliveryResult(
        status=status,
        decision=decision,
        decided_by=str(decided_by) if decided_by else None,
        reason=reason,
        reply_code=session.reply[0] if session.reply else None,
        reply_text=session.reply[1] if session.reply else None,
        tls=tls,
        tls_version=session.tls_version,
        tls_cipher=session.tls_cipher,
        tls_verified=tls
        and context is not None
        and context.verify_mode == ssl.CERT_REQUIRED
        and context.check_hostname,
        plaintext_fallback=fallback,
    )
    logger.info(
        "delivery to %s:%d %s (decision %s): %s",
        host,
        port,
        status.value,
        decision.name,
        reason,
    )
    return result
