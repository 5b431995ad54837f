"""SMTP servers on 127.0.0.1 for the delivery tests.

- RecordingHandler with LoopbackController: aiosmtpd, a real SMTP
  server, with or without STARTTLS, recording what each command brought.
- ScriptedServer: a small threaded server that follows a Script, to
  produce protocol faults aiosmtpd does not (a rejected STARTTLS, a
  connection closed after 220, bytes sent before the handshake,
  different extensions before and after TLS, a rejected EHLO).  It
  records every command line and every byte received in plaintext.

Every server binds 127.0.0.1 with an OS-assigned port, and every socket
has a timeout, so no test can hang.
"""

from __future__ import annotations

import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Any, List, Optional, Tuple

import trustme
from aiosmtpd.controller import Controller

SOCKET_TIMEOUT = 10.0
"""Seconds a server socket waits for the client before giving up."""
SERVER_NAME = "mx.test"


def server_tls_context(ca: trustme.CA, *names: str) -> ssl.SSLContext:
    """Return a server context with a certificate from ca for names."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert(*names).configure_cert(context)
    return context


# ---- aiosmtpd ----------------------------------------------------------


@dataclass
class Received:
    """One command that reached the aiosmtpd handler."""

    command: str
    tls: bool
    argument: Any = None
    options: Tuple[str, ...] = ()


class RecordingHandler:
    """aiosmtpd handler that records commands and replies as configured."""

    def __init__(
        self,
        rcpt_reply: str = "250 2.1.5 OK",
        data_reply: str = "250 2.0.0 queued",
    ) -> None:
        self.rcpt_reply = rcpt_reply
        self.data_reply = data_reply
        self.received: List[Received] = []

    def commands(self) -> List[str]:
        return [item.command for item in self.received]

    def messages(self) -> List[Received]:
        return [item for item in self.received if item.command == "DATA"]

    def handle_STARTTLS(self, server: Any, session: Any, envelope: Any) -> bool:
        self.received.append(Received("STARTTLS", tls=True))
        return True

    async def handle_MAIL(
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        options: List[str],
    ) -> str:
        self.received.append(
            Received("MAIL", session.ssl is not None, address, tuple(options))
        )
        envelope.mail_from = address
        envelope.mail_options.extend(options)
        return "250 2.1.0 OK"

    async def handle_RCPT(
        self,
        server: Any,
        session: Any,
        envelope: Any,
        address: str,
        options: List[str],
    ) -> str:
        self.received.append(
            Received("RCPT", session.ssl is not None, address, tuple(options))
        )
        if self.rcpt_reply.startswith("2"):
            envelope.rcpt_tos.append(address)
        return self.rcpt_reply

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.received.append(
            Received("DATA", session.ssl is not None, envelope.original_content)
        )
        return self.data_reply


class LoopbackController(Controller):
    """aiosmtpd Controller on 127.0.0.1 with a port the OS assigns."""

    def __init__(self, handler: Any, **smtp_parameters: Any) -> None:
        super().__init__(
            handler,
            hostname="127.0.0.1",
            port=0,
            ready_timeout=SOCKET_TIMEOUT,
            # A fixed name keeps aiosmtpd from resolving this host's name.
            server_hostname=SERVER_NAME,
            **smtp_parameters,
        )

    def _trigger_server(self) -> None:
        # Controller connects to self.port to check that the server runs;
        # with port 0 that must be the port the OS assigned.
        assert self.server is not None
        self.port = self.server.sockets[0].getsockname()[1]
        super()._trigger_server()


# ---- The scripted server -----------------------------------------------


@dataclass
class Script:
    """Replies and faults of a ScriptedServer.  The defaults offer
    STARTTLS and accept the message.  Replies are whole lines, CRLF
    included."""

    tls_context: Optional[ssl.SSLContext] = None
    greeting: bytes = b"220 scripted.test ESMTP\r\n"
    ehlo_reply: Optional[bytes] = None
    """Reply to EHLO in plaintext in place of the capability list."""
    capabilities: Tuple[str, ...] = ("8BITMIME", "STARTTLS")
    """Extensions listed in reply to EHLO in plaintext."""
    tls_capabilities: Tuple[str, ...] = ("8BITMIME",)
    """Extensions listed in reply to EHLO over TLS."""
    starttls_reply: bytes = b"220 2.0.0 Ready to start TLS\r\n"
    after_starttls_reply: bytes = b""
    """Bytes sent after the STARTTLS reply, before the handshake."""
    after_starttls_delay: float = 0.0
    """Seconds between the STARTTLS reply and those bytes; with 0 both go
    in one write."""
    close_after_starttls: bool = False
    """Close the connection after the 220 in place of the handshake."""
    mail_reply: bytes = b"250 2.1.0 OK\r\n"
    rcpt_reply: bytes = b"250 2.1.5 OK\r\n"
    data_reply: bytes = b"354 End data with <CR><LF>.<CR><LF>\r\n"
    final_reply: bytes = b"250 2.0.0 queued\r\n"
    silent_on: Optional[str] = None
    """Command verb after which the server stops replying."""


@dataclass
class Connection:
    """Record of one client connection to a ScriptedServer."""

    commands: List[Tuple[bool, str]] = field(default_factory=list)
    """(over TLS, command line without CRLF), in order."""
    messages: List[Tuple[bool, bytes]] = field(default_factory=list)
    """(over TLS, data as received, dot-stuffed, without the final dot)."""
    cleartext: bytearray = field(default_factory=bytearray)
    """Every byte received before TLS was established."""
    tls: bool = False
    handshake_error: Optional[str] = None
    closed: threading.Event = field(default_factory=threading.Event)

    def lines(self) -> List[Tuple[bool, str]]:
        """Return commands as (over TLS, line) with the verb, and the FROM:
        or TO: of MAIL and RCPT, in upper case.

        SMTP ignores their case, and the case smtplib sends differs
        between Python versions ("mail FROM:" in 3.11, "mail from:" in
        3.13).
        """
        result = []
        for over_tls, line in self.commands:
            verb, space, rest = line.partition(" ")
            verb = verb.upper()
            if verb in ("MAIL", "RCPT"):
                keyword, colon, address = rest.partition(":")
                rest = keyword.upper() + colon + address
            result.append((over_tls, verb + space + rest))
        return result

    def verbs(self, tls: Optional[bool] = None) -> List[str]:
        """Return the command verbs in upper case, all or only those sent
        with or without TLS."""
        return [
            line.split(" ", 1)[0].upper()
            for over_tls, line in self.commands
            if tls is None or over_tls == tls
        ]


class _Handler(socketserver.BaseRequestHandler):
    server: _TCPServer

    def handle(self) -> None:
        connection = Connection()
        self.server.owner.add(connection)
        try:
            self._converse(connection)
        except (OSError, ValueError):
            pass  # the client closed or timed out; the record stays.
        finally:
            connection.closed.set()

    def _converse(self, connection: Connection) -> None:
        script = self.server.owner.script
        stream: socket.socket = self.request
        stream.settimeout(SOCKET_TIMEOUT)
        reader = stream.makefile("rb")
        tls = False
        stream.sendall(script.greeting)
        while True:
            line = reader.readline(4096)
            if not line:
                return
            if not tls:
                connection.cleartext += line
            command = line.rstrip(b"\r\n").decode("utf-8", "replace")
            connection.commands.append((tls, command))
            verb = command.split(" ", 1)[0].upper()
            if verb == script.silent_on:
                reader.readline()  # returns once the client closes
                return

            if verb == "EHLO":
                if not tls and script.ehlo_reply is not None:
                    stream.sendall(script.ehlo_reply)
                    continue
                names = script.tls_capabilities if tls else script.capabilities
                lines = ["scripted.test", *names]
                reply = "".join(
                    f"250{' ' if number == len(lines) - 1 else '-'}{text}\r\n"
                    for number, text in enumerate(lines)
                )
                stream.sendall(reply.encode())
            elif verb == "HELO":
                stream.sendall(b"250 scripted.test\r\n")
            elif verb == "STARTTLS" and not tls:
                if script.after_starttls_delay:
                    stream.sendall(script.starttls_reply)
                    time.sleep(script.after_starttls_delay)
                    stream.sendall(script.after_starttls_reply)
                else:
                    stream.sendall(script.starttls_reply + script.after_starttls_reply)
                if not script.starttls_reply.startswith(b"220"):
                    continue
                if script.close_after_starttls or script.tls_context is None:
                    return
                try:
                    stream = script.tls_context.wrap_socket(stream, server_side=True)
                except (ssl.SSLError, OSError) as error:
                    connection.handshake_error = str(error)
                    return
                reader = stream.makefile("rb")
                tls = connection.tls = True
            elif verb == "MAIL":
                stream.sendall(script.mail_reply)
            elif verb == "RCPT":
                stream.sendall(script.rcpt_reply)
            elif verb == "DATA":
                stream.sendall(script.data_reply)
                if not script.data_reply.startswith(b"354"):
                    continue
                data = bytearray()
                while True:
                    data_line = reader.readline(65536)
                    if not data_line:
                        return
                    if data_line == b".\r\n":
                        break
                    data += data_line
                if not tls:
                    connection.cleartext += data
                connection.messages.append((tls, bytes(data)))
                stream.sendall(script.final_reply)
            elif verb == "QUIT":
                stream.sendall(b"221 2.0.0 Bye\r\n")
                return
            elif verb in ("RSET", "NOOP"):
                stream.sendall(b"250 2.0.0 OK\r\n")
            else:
                stream.sendall(b"502 5.5.2 Command not recognized\r\n")


class _TCPServer(socketserver.ThreadingTCPServer):
    daemon_threads = True
    owner: ScriptedServer


class ScriptedServer:
    """A threaded SMTP server on 127.0.0.1 that follows a Script.

    Use it as a context manager; ``port`` is the port the OS assigned.
    """

    def __init__(self, script: Script) -> None:
        self.script = script
        self.connections: List[Connection] = []
        self._lock = threading.Lock()
        self._server = _TCPServer(("127.0.0.1", 0), _Handler)
        self._server.owner = self
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def add(self, connection: Connection) -> None:
        with self._lock:
            self.connections.append(connection)

    def finished_connections(self, timeout: float = SOCKET_TIMEOUT) -> List[Connection]:
        """Return the connections once each has ended on the server side.

        Connections are counted when accepted, and the client finishes
        with each before it returns, so none can be missing here.
        """
        with self._lock:
            connections = list(self.connections)
        for connection in connections:
            if not connection.closed.wait(timeout):
                raise TimeoutError("a scripted SMTP connection did not end")
        return connections

    def __enter__(self) -> ScriptedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(SOCKET_TIMEOUT)
