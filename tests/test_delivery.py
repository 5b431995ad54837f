"""ectls.delivery against SMTP servers on 127.0.0.1.

Each rule is checked by what reached the server: the command transcript,
which commands came over TLS, and whether message bytes came in
plaintext.
"""

from __future__ import annotations

import contextlib
import json
import re
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional

import pytest
import trustme

import ectls
from ectls import Message, UseTLS
from ectls.delivery import (
    DeliveryResult,
    DeliveryStatus,
    InvalidMessageError,
    deliver,
)

# --import-mode=importlib, set in pyproject.toml, keeps tests/ off sys.path.
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

from smtp_servers import (  # noqa: E402
    LoopbackController,
    RecordingHandler,
    Script,
    ScriptedServer,
    server_tls_context,
)

REPOSITORY = Path(__file__).resolve().parent.parent

MESSAGES = TESTS.parent / "examples" / "messages"
MARKER = b"MARKER-only-in-the-body"
RAW = (
    b"Return-Path: <sender@example.com>\n"
    b"From: Sender <sender@example.com>\n"
    b"To: Recipient <rcpt@example.net>\n"
    b"Subject: delivery test\n"
    b"\n" + MARKER + b"\n"
    b".a line that starts with a dot\n"
)
# What DATA carries: CRLF line ends; a leading dot is doubled on the wire.
EXPECTED_CONTENT = RAW.replace(b"\n", b"\r\n")
EXPECTED_ON_WIRE = EXPECTED_CONTENT.replace(b"\r\n.a line", b"\r\n..a line")
EHLO = "EHLO client.test"


def set_decision(decision: UseTLS) -> None:
    """Register a provider that always returns decision."""

    def policy(message: Optional[Message]) -> UseTLS:
        return decision

    ectls.register_last(policy)


def send(
    port: int, message: Optional[Message] = None, **options: Any
) -> DeliveryResult:
    """Deliver to 127.0.0.1:port with short timeouts and a fixed EHLO name."""
    options.setdefault("helo_name", "client.test")
    options.setdefault("timeout", 10.0)
    options.setdefault("data_timeout", 10.0)
    if message is None:
        message = Message.from_bytes(RAW)
    return deliver(message, "127.0.0.1", port, **options)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def cafile(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("ca") / "ca.pem"
    ca.cert_pem.write_to_path(str(path))
    return str(path)


@pytest.fixture(scope="module")
def tls_context(ca: trustme.CA) -> ssl.SSLContext:
    return server_tls_context(ca, "127.0.0.1")


@pytest.fixture(scope="module")
def untrusted_tls_context() -> ssl.SSLContext:
    return server_tls_context(trustme.CA(), "127.0.0.1")


@pytest.fixture(scope="module")
def wrong_host_tls_context(ca: trustme.CA) -> ssl.SSLContext:
    return server_tls_context(ca, "wrong.example")


@pytest.fixture
def refused_port() -> Iterator[int]:
    """Return a port on 127.0.0.1 that refuses connections: its socket is
    bound for the test but does not listen."""
    with socket.socket() as bound:
        bound.bind(("127.0.0.1", 0))
        yield bound.getsockname()[1]


@pytest.fixture
def start_aiosmtpd() -> Iterator[Callable[..., LoopbackController]]:
    """Return a function that starts aiosmtpd; all stop after the test."""
    controllers: List[LoopbackController] = []

    def start(handler: RecordingHandler, **parameters: Any) -> LoopbackController:
        controller = LoopbackController(handler, **parameters)
        controller.start()
        controllers.append(controller)
        return controller

    yield start
    for controller in controllers:
        controller.stop()


@pytest.fixture
def start_scripted() -> Iterator[Callable[[Script], ScriptedServer]]:
    """Return a function that starts a ScriptedServer; all stop after the
    test."""
    with contextlib.ExitStack() as stack:
        yield lambda script: stack.enter_context(ScriptedServer(script))


# ---- aiosmtpd, a real server -------------------------------------------


def test_required_delivers_over_verified_tls(start_aiosmtpd, tls_context, cafile):
    set_decision(UseTLS.REQUIRED)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=tls_context)

    result = send(server.port, cafile=cafile)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.delivered
    assert result.decision is UseTLS.REQUIRED
    assert result.decided_by is not None
    assert result.decided_by.endswith("policy")
    assert result.tls
    assert result.tls_verified
    assert result.tls_version is not None
    assert result.tls_version.startswith("TLSv1.")
    assert result.tls_cipher
    assert result.reply_code == 250
    assert result.reply_text == "2.0.0 queued"
    assert handler.commands() == ["STARTTLS", "MAIL", "RCPT", "DATA"]
    assert all(item.tls for item in handler.received)
    assert handler.received[1].argument == "sender@example.com"
    assert handler.received[2].argument == "rcpt@example.net"
    assert handler.messages()[0].argument == EXPECTED_CONTENT


def test_required_defers_without_starttls(start_aiosmtpd):
    set_decision(UseTLS.REQUIRED)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler)

    result = send(server.port)

    assert result.status is DeliveryStatus.DEFERRED
    assert "does not offer STARTTLS" in result.reason
    assert not result.tls
    assert handler.received == []


def test_required_with_ssl_context(start_aiosmtpd, tls_context, ca):
    set_decision(UseTLS.REQUIRED)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=tls_context)
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    result = send(server.port, ssl_context=client_context)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.tls_verified
    assert handler.commands() == ["STARTTLS", "MAIL", "RCPT", "DATA"]


def test_required_rejects_untrusted_certificate(start_aiosmtpd, untrusted_tls_context):
    set_decision(UseTLS.REQUIRED)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=untrusted_tls_context)

    result = send(server.port)

    assert result.status is DeliveryStatus.DEFERRED
    assert "certificate verify failed" in result.reason
    assert handler.received == []


def test_required_without_verification(start_aiosmtpd, untrusted_tls_context):
    set_decision(UseTLS.REQUIRED)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=untrusted_tls_context)

    result = send(server.port, verify=False)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.tls
    assert not result.tls_verified


def test_ifavailable_takes_unverified_tls(start_aiosmtpd, untrusted_tls_context):
    set_decision(UseTLS.IFAVAILABLE)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=untrusted_tls_context)

    result = send(server.port)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.tls
    assert not result.tls_verified
    assert not result.plaintext_fallback
    assert handler.commands() == ["STARTTLS", "MAIL", "RCPT", "DATA"]
    assert all(item.tls for item in handler.received)


def test_ifavailable_verify_failure_falls_back(start_aiosmtpd, untrusted_tls_context):
    set_decision(UseTLS.IFAVAILABLE)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=untrusted_tls_context)

    result = send(server.port, verify=True)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.plaintext_fallback
    assert not result.tls
    assert "certificate verify failed" in result.reason
    assert handler.commands() == ["MAIL", "RCPT", "DATA"]
    assert not any(item.tls for item in handler.received)


def test_ifavailable_plaintext_without_starttls(start_aiosmtpd):
    set_decision(UseTLS.IFAVAILABLE)
    handler = RecordingHandler()
    server = start_aiosmtpd(handler)

    result = send(server.port)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert not result.tls
    assert not result.plaintext_fallback
    assert handler.messages()[0].argument == EXPECTED_CONTENT


def test_no_skips_offered_starttls(start_aiosmtpd, tls_context):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=tls_context)

    result = send(server.port)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.decision is UseTLS.NO
    assert result.decided_by is None
    assert not result.tls
    assert handler.commands() == ["MAIL", "RCPT", "DATA"]
    assert not any(item.tls for item in handler.received)


@pytest.mark.parametrize(
    "reply, status",
    [
        ("550 5.1.1 no such user", DeliveryStatus.FAILED),
        ("450 4.2.1 mailbox busy", DeliveryStatus.DEFERRED),
    ],
)
def test_rcpt_rejection_status(start_aiosmtpd, reply, status):
    handler = RecordingHandler(rcpt_reply=reply)
    server = start_aiosmtpd(handler)

    result = send(server.port)

    assert result.status is status
    assert result.reply_code == int(reply[:3])
    assert result.reply_text == reply[4:]
    assert "RCPT TO:<rcpt@example.net>" in result.reason
    assert "DATA" not in handler.commands()


def test_smtputf8_used_for_non_ascii_recipient(start_aiosmtpd):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, enable_SMTPUTF8=True)
    message = Message.from_bytes(RAW, rcptto="jörg@example.net")

    result = send(server.port, message)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    mail = handler.received[0]
    assert mail.command == "MAIL"
    assert "SMTPUTF8" in mail.options
    assert handler.received[1].argument == "jörg@example.net"


def test_non_ascii_recipient_fails_without_smtputf8(start_aiosmtpd):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, enable_SMTPUTF8=False)
    message = Message.from_bytes(RAW, rcptto="jörg@example.net")

    result = send(server.port, message)

    assert result.status is DeliveryStatus.FAILED
    assert "SMTPUTF8" in result.reason
    assert handler.received == []


def test_ascii_message_without_smtputf8_option(start_aiosmtpd):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, enable_SMTPUTF8=True)
    message = Message.from_file(MESSAGES / "multipart_non_ascii.eml")

    result = send(server.port, message)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert handler.received[0].options == ()
    # Header lines go out unchanged, the long To: line included.
    source = (MESSAGES / "multipart_non_ascii.eml").read_bytes()
    assert handler.messages()[0].argument == re.sub(rb"\r?\n", b"\r\n", source)


def test_connection_refused_defers(refused_port):
    result = send(refused_port)

    assert result.status is DeliveryStatus.DEFERRED
    assert "failed" in result.reason
    assert result.reply_code is None


def test_message_without_recipient_is_rejected(refused_port):
    message = Message.from_file(MESSAGES / "no_to.eml")
    with pytest.raises(InvalidMessageError, match="recipient"):
        send(refused_port, message)


def test_message_without_sender_is_rejected(refused_port):
    message = Message.from_bytes(b"To: a@example.net\n\nbody\n")
    with pytest.raises(InvalidMessageError, match="sender"):
        send(refused_port, message)


def test_message_without_parsed_email_is_rejected(refused_port):
    message = Message("sender@example.com", "rcpt@example.net")
    with pytest.raises(InvalidMessageError, match="RFC 5322"):
        send(refused_port, message)
    with pytest.raises(ValueError):
        send(refused_port, message)


def test_ssl_context_with_verify_is_rejected(refused_port):
    with pytest.raises(ValueError, match="ssl_context"):
        send(refused_port, ssl_context=ssl.create_default_context(), verify=True)


def test_result_to_dict_is_json():
    result = DeliveryResult(
        status=DeliveryStatus.DEFERRED,
        decision=UseTLS.REQUIRED,
        decided_by="policy",
        reason="server does not offer STARTTLS",
        reply_code=250,
        reply_text="mx.test",
    )
    as_dict = json.loads(json.dumps(result.to_dict()))
    assert as_dict["status"] == "deferred"
    assert as_dict["decision"] == "REQUIRED"
    assert as_dict["tls"] is False


# ---- The scripted server: what reached the wire -------------------------


def test_required_transcript_over_tls(start_scripted, tls_context, cafile):
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(Script(tls_context=tls_context))

    result = send(server.port, cafile=cafile)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    [connection] = server.finished_connections()
    assert connection.lines() == [
        (False, EHLO),
        (False, "STARTTLS"),
        (True, EHLO),
        (True, "MAIL FROM:<sender@example.com>"),
        (True, "RCPT TO:<rcpt@example.net>"),
        (True, "DATA"),
        (True, "QUIT"),
    ]
    assert connection.messages == [(True, EXPECTED_ON_WIRE)]
    assert MARKER not in connection.cleartext


def test_no_transcript_skips_starttls(start_scripted, tls_context):
    server = start_scripted(Script(tls_context=tls_context))

    result = send(server.port)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    [connection] = server.finished_connections()
    assert connection.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert connection.messages == [(False, EXPECTED_ON_WIRE)]


# Servers that fail the upgrade in each way the delivery rules name.
UPGRADE_FAULTS = {
    "starttls_rejected": dict(starttls_reply=b"454 4.7.0 TLS not available\r\n"),
    "starttls_rejected_5xx": dict(starttls_reply=b"502 5.5.1 not implemented\r\n"),
    "closed_after_220": dict(close_after_starttls=True),
    "wrong_host_certificate": dict(),
    "data_before_handshake": dict(after_starttls_reply=b"250 injected\r\n"),
    "starttls_not_offered": dict(capabilities=("8BITMIME",)),
    "ehlo_rejected": dict(ehlo_reply=b"502 5.5.2 EHLO not supported\r\n"),
}


def fault_script(
    name: str, tls_context: ssl.SSLContext, wrong_host: ssl.SSLContext
) -> Script:
    context = wrong_host if name == "wrong_host_certificate" else tls_context
    return Script(tls_context=context, **UPGRADE_FAULTS[name])


@pytest.mark.parametrize("fault", sorted(UPGRADE_FAULTS))
def test_required_sends_nothing_in_plaintext(
    start_scripted, tls_context, wrong_host_tls_context, cafile, fault
):
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(fault_script(fault, tls_context, wrong_host_tls_context))

    result = send(server.port, cafile=cafile)

    assert result.status is DeliveryStatus.DEFERRED
    assert not result.tls
    connections = server.finished_connections()
    assert len(connections) == 1
    verbs = connections[0].verbs()
    assert "MAIL" not in verbs
    assert "RCPT" not in verbs
    assert "DATA" not in verbs
    assert "HELO" not in verbs
    assert connections[0].messages == []
    assert MARKER not in connections[0].cleartext


@pytest.mark.parametrize(
    "fault, verbs",
    [
        ("starttls_rejected", ["EHLO", "STARTTLS", "QUIT"]),
        ("closed_after_220", ["EHLO", "STARTTLS"]),
        ("wrong_host_certificate", ["EHLO", "STARTTLS"]),
        ("data_before_handshake", ["EHLO", "STARTTLS"]),
        ("starttls_not_offered", ["EHLO", "QUIT"]),
        ("ehlo_rejected", ["EHLO", "QUIT"]),
    ],
)
def test_required_fault_transcript(
    start_scripted, tls_context, wrong_host_tls_context, cafile, fault, verbs
):
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(fault_script(fault, tls_context, wrong_host_tls_context))

    result = send(server.port, cafile=cafile)

    assert result.status is DeliveryStatus.DEFERRED
    [connection] = server.finished_connections()
    assert connection.verbs() == verbs
    assert connection.verbs(tls=True) == []


def test_required_reports_rejected_starttls(start_scripted, tls_context):
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(
        Script(
            tls_context=tls_context, starttls_reply=b"454 4.7.0 TLS not available\r\n"
        )
    )

    result = send(server.port)

    assert result.reply_code == 454
    assert result.reply_text == "4.7.0 TLS not available"
    assert "rejected STARTTLS" in result.reason


def test_required_wrong_host_reason(start_scripted, wrong_host_tls_context, cafile):
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(Script(tls_context=wrong_host_tls_context))

    result = send(server.port, cafile=cafile)

    assert result.status is DeliveryStatus.DEFERRED
    assert "TLS handshake failed" in result.reason
    assert "mismatch" in result.reason
    assert result.reply_code == 220
    [connection] = server.finished_connections()
    assert connection.handshake_error is not None


@pytest.mark.parametrize(
    "fault",
    [
        "starttls_rejected",
        "starttls_rejected_5xx",
        "closed_after_220",
        "data_before_handshake",
    ],
)
def test_ifavailable_falls_back_to_plaintext(
    start_scripted, tls_context, wrong_host_tls_context, fault
):
    set_decision(UseTLS.IFAVAILABLE)
    server = start_scripted(fault_script(fault, tls_context, wrong_host_tls_context))

    result = send(server.port)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.plaintext_fallback
    assert not result.tls
    first, second = server.finished_connections()
    assert first.verbs()[:2] == ["EHLO", "STARTTLS"]
    assert "MAIL" not in first.verbs()
    assert second.verbs() == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    assert second.messages == [(False, EXPECTED_ON_WIRE)]


@pytest.mark.parametrize(
    "fault", ["starttls_rejected", "closed_after_220", "data_before_handshake"]
)
def test_ifavailable_without_fallback_defers(
    start_scripted, tls_context, wrong_host_tls_context, fault
):
    set_decision(UseTLS.IFAVAILABLE)
    server = start_scripted(fault_script(fault, tls_context, wrong_host_tls_context))

    result = send(server.port, ifavailable_fallback=False)

    assert result.status is DeliveryStatus.DEFERRED
    assert not result.plaintext_fallback
    [connection] = server.finished_connections()
    assert "MAIL" not in connection.verbs()
    assert MARKER not in connection.cleartext


def test_ifavailable_wrong_host_is_opportunistic(
    start_scripted, wrong_host_tls_context
):
    set_decision(UseTLS.IFAVAILABLE)
    server = start_scripted(Script(tls_context=wrong_host_tls_context))

    result = send(server.port)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert result.tls
    assert not result.tls_verified
    [connection] = server.finished_connections()
    assert connection.messages == [(True, EXPECTED_ON_WIRE)]


@pytest.mark.parametrize("decision", [UseTLS.NO, UseTLS.IFAVAILABLE])
def test_rejected_ehlo_falls_back_to_helo(start_scripted, tls_context, decision):
    set_decision(decision)
    server = start_scripted(
        Script(
            tls_context=tls_context,
            ehlo_reply=b"502 5.5.2 EHLO not supported\r\n",
        )
    )

    result = send(server.port)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    assert not result.tls
    [connection] = server.finished_connections()
    assert connection.verbs() == ["EHLO", "HELO", "MAIL", "RCPT", "DATA", "QUIT"]


def test_extensions_after_tls_replace_plaintext_ones(start_scripted, tls_context):
    # SMTPUTF8 offered in plaintext only: the client must not use it.
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(
        Script(
            tls_context=tls_context,
            capabilities=("STARTTLS", "SMTPUTF8"),
            tls_capabilities=("8BITMIME",),
        )
    )
    message = Message.from_bytes(RAW, rcptto="jörg@example.net")

    result = send(server.port, message, verify=False)

    assert result.status is DeliveryStatus.FAILED
    assert "SMTPUTF8" in result.reason
    [connection] = server.finished_connections()
    assert connection.verbs(tls=False) == ["EHLO", "STARTTLS"]
    assert connection.verbs(tls=True) == ["EHLO", "QUIT"]


def test_extensions_offered_only_over_tls(start_scripted, tls_context):
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(
        Script(
            tls_context=tls_context,
            capabilities=("STARTTLS",),
            tls_capabilities=("SMTPUTF8", "8BITMIME"),
        )
    )
    message = Message.from_bytes(RAW, rcptto="jörg@example.net")

    result = send(server.port, message, verify=False)

    assert result.status is DeliveryStatus.DELIVERED, result.reason
    [connection] = server.finished_connections()
    assert (True, "MAIL FROM:<sender@example.com> SMTPUTF8") in connection.lines()
    assert (True, "RCPT TO:<jörg@example.net>") in connection.lines()


def test_required_late_data_before_handshake_fails(start_scripted, tls_context, ca):
    # Bytes that arrive after the client read the 220 reach the TLS layer,
    # which rejects them as a record; nothing is read as a reply.
    set_decision(UseTLS.REQUIRED)
    server = start_scripted(
        Script(
            tls_context=tls_context,
            after_starttls_reply=b"250 injected\r\n",
            after_starttls_delay=0.3,
        )
    )

    result = send(server.port, verify=False)

    assert result.status is DeliveryStatus.DEFERRED
    assert "TLS handshake failed" in result.reason
    [connection] = server.finished_connections()
    assert connection.verbs() == ["EHLO", "STARTTLS"]


def test_smtplib_discards_data_before_handshake(start_scripted, tls_context, ca):
    # What smtplib does alone: the buffered bytes are dropped, not read as
    # the reply to EHLO over TLS.  deliver() goes further and fails closed.
    server = start_scripted(
        Script(
            tls_context=tls_context,
            after_starttls_reply=b"250-injected.test\r\n250 AUTH PLAIN\r\n",
        )
    )
    client_context = ssl.create_default_context()
    ca.configure_trust(client_context)

    with smtplib.SMTP("127.0.0.1", server.port, "client.test", timeout=10) as client:
        client.starttls(context=client_context)
        code, _ = client.ehlo()

    assert code == 250
    assert not client.has_extn("auth")
    [connection] = server.finished_connections()
    assert connection.tls


@pytest.mark.parametrize(
    "script, status, code",
    [
        (Script(greeting=b"554 5.7.1 no service\r\n"), DeliveryStatus.FAILED, 554),
        (Script(greeting=b"421 4.3.2 busy\r\n"), DeliveryStatus.DEFERRED, 421),
        (Script(mail_reply=b"553 5.1.8 bad sender\r\n"), DeliveryStatus.FAILED, 553),
        (Script(mail_reply=b"451 4.3.0 later\r\n"), DeliveryStatus.DEFERRED, 451),
        (Script(data_reply=b"554 5.5.1 no data\r\n"), DeliveryStatus.FAILED, 554),
        (Script(final_reply=b"552 5.3.4 too big\r\n"), DeliveryStatus.FAILED, 552),
        (Script(final_reply=b"452 4.3.1 full\r\n"), DeliveryStatus.DEFERRED, 452),
    ],
)
def test_rejections_map_to_status(start_scripted, script, status, code):
    server = start_scripted(script)

    result = send(server.port)

    assert result.status is status
    assert result.reply_code == code
    [connection] = server.finished_connections()
    assert connection.verbs()[-1] == "QUIT"


def test_unanswered_command_times_out(start_scripted):
    server = start_scripted(Script(silent_on="MAIL"))

    result = send(server.port, timeout=0.5)

    assert result.status is DeliveryStatus.DEFERRED
    assert "timed out" in result.reason
    [connection] = server.finished_connections()
    assert connection.verbs() == ["EHLO", "MAIL"]


def test_unanswered_data_end_times_out(start_scripted):
    server = start_scripted(Script(final_reply=b""))

    result = send(server.port, data_timeout=0.5)

    assert result.status is DeliveryStatus.DEFERRED
    assert "timed out" in result.reason


# ---- The command line -------------------------------------------------


POLICY_MODULE = """\
from ectls import UseTLS


def required(message):
    return UseTLS.REQUIRED


def ifavailable(message):
    return UseTLS.IFAVAILABLE


def by_domain(message):
    if message is not None and message.routing_domain == "secure.example":
        return UseTLS.REQUIRED
    return UseTLS.NO
"""


def run_send(tmp_path: Path, port: int, *args: str) -> subprocess.CompletedProcess:
    """Run ``python -m ectls send`` from tmp_path, so that the installed
    package is imported and --python finds policy.py there."""
    (tmp_path / "policy.py").write_text(POLICY_MODULE)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "ectls",
            "send",
            "--server",
            f"127.0.0.1:{port}",
            "--helo",
            "client.test",
            "--timeout",
            "10",
            *args,
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )


def write_message(
    tmp_path: Path, name: str = "message.eml", recipient: str = "rcpt@example.net"
) -> str:
    path = tmp_path / name
    path.write_bytes(RAW.replace(b"rcpt@example.net", recipient.encode()))
    return str(path)


def test_cli_send_delivers_over_tls(start_aiosmtpd, tls_context, cafile, tmp_path):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=tls_context)
    path = write_message(tmp_path)

    result = run_send(
        tmp_path, server.port, "--python", "policy:required", "--cafile", cafile, path
    )

    assert result.returncode == 0, result.stderr
    [line] = result.stdout.splitlines()
    assert line.startswith(f"{path}: delivered; decision REQUIRED")
    assert "decided by policy.required" in line
    assert "TLSv1." in line
    assert "reply 250 2.0.0 queued" in line
    assert handler.commands() == ["STARTTLS", "MAIL", "RCPT", "DATA"]


def test_cli_send_json_lines(start_aiosmtpd, tmp_path):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler)
    paths = [write_message(tmp_path, "a.eml"), write_message(tmp_path, "b.eml")]

    result = run_send(tmp_path, server.port, "--json", *paths)

    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [item["file"] for item in objects] == paths
    assert objects[0]["status"] == "delivered"
    assert objects[0]["decision"] == "NO"
    assert objects[0]["decided_by"] is None
    assert objects[0]["tls"] is False
    assert objects[0]["reply_code"] == 250
    assert objects[0]["mailfrom"] == "sender@example.com"
    assert objects[0]["rcptto"] == "rcpt@example.net"
    assert len(handler.messages()) == 2


def test_cli_send_deferred_exit_status(start_aiosmtpd, tmp_path):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler)

    result = run_send(
        tmp_path, server.port, "--python", "policy:required", write_message(tmp_path)
    )

    assert result.returncode == 75
    assert ": deferred; decision REQUIRED" in result.stdout
    assert handler.received == []


def test_cli_send_failed_exit_status(start_aiosmtpd, tmp_path):
    handler = RecordingHandler(rcpt_reply="550 5.1.1 no such user")
    server = start_aiosmtpd(handler)

    result = run_send(tmp_path, server.port, write_message(tmp_path))

    assert result.returncode == 69
    assert ": failed;" in result.stdout
    assert "550 5.1.1 no such user" in result.stdout


def test_cli_send_failed_outranks_deferred(start_aiosmtpd, tmp_path):
    handler = RecordingHandler(rcpt_reply="550 5.1.1 no such user")
    server = start_aiosmtpd(handler)
    deferred = write_message(tmp_path, "deferred.eml", "rcpt@secure.example")
    failed = write_message(tmp_path, "failed.eml")

    result = run_send(
        tmp_path, server.port, "--python", "policy:by_domain", deferred, failed
    )

    assert result.returncode == 69
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{deferred}: deferred; decision REQUIRED")
    assert lines[1].startswith(f"{failed}: failed; decision NO")


def test_cli_send_fallback_option(start_scripted, tls_context, tmp_path):
    server = start_scripted(
        Script(tls_context=tls_context, starttls_reply=b"454 4.7.0 not now\r\n")
    )
    path = write_message(tmp_path)

    with_fallback = run_send(
        tmp_path, server.port, "--python", "policy:ifavailable", path
    )
    without_fallback = run_send(
        tmp_path,
        server.port,
        "--python",
        "policy:ifavailable",
        "--no-ifavailable-fallback",
        path,
    )

    assert with_fallback.returncode == 0, with_fallback.stderr
    assert "plaintext fallback" in with_fallback.stdout
    assert without_fallback.returncode == 75
    assert "rejected STARTTLS" in without_fallback.stdout
    connections = server.finished_connections()
    assert len(connections) == 3
    assert "MAIL" not in connections[2].verbs()


def test_cli_send_no_verify(start_aiosmtpd, untrusted_tls_context, tmp_path):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler, tls_context=untrusted_tls_context)
    path = write_message(tmp_path)

    verified = run_send(tmp_path, server.port, "--python", "policy:required", path)
    unverified = run_send(
        tmp_path, server.port, "--python", "policy:required", "--no-verify", path
    )

    assert verified.returncode == 75
    assert "certificate verify failed" in verified.stdout
    assert unverified.returncode == 0, unverified.stderr
    assert "(not verified)" in unverified.stdout


def test_cli_send_input_errors(start_aiosmtpd, tmp_path):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler)

    no_recipient = run_send(tmp_path, server.port, str(MESSAGES / "no_to.eml"))
    missing = run_send(tmp_path, server.port, str(tmp_path / "missing.eml"))
    mixed = run_send(
        tmp_path, server.port, str(tmp_path / "missing.eml"), write_message(tmp_path)
    )

    assert no_recipient.returncode == 65
    assert "recipient" in no_recipient.stderr
    assert missing.returncode == 66
    assert "missing.eml" in missing.stderr
    assert mixed.returncode == 66
    assert ": delivered;" in mixed.stdout
    assert len(handler.messages()) == 1


def test_cli_send_rcpt_option(start_aiosmtpd, tmp_path):
    handler = RecordingHandler()
    server = start_aiosmtpd(handler)

    result = run_send(
        tmp_path,
        server.port,
        "--rcpt",
        "bounce@example.net",
        str(MESSAGES / "no_to.eml"),
    )

    assert result.returncode == 0, result.stderr
    assert handler.received[0].argument == "<>"  # aiosmtpd's null sender
    assert handler.received[1].argument == "bounce@example.net"


@pytest.mark.parametrize(
    "server", ["127.0.0.1", "127.0.0.1:0", "127.0.0.1:x", ":25", "127.0.0.1:70000"]
)
def test_cli_send_bad_server_is_usage_error(tmp_path, server):
    result = subprocess.run(
        [sys.executable, "-m", "ectls", "send", "--server", server, "x.eml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 64
    assert "--server" in result.stderr


def test_cli_send_plugin_load_failure(tmp_path, refused_port):
    result = run_send(
        tmp_path,
        refused_port,
        "--plugin",
        str(tmp_path / "missing.so"),
        write_message(tmp_path),
    )
    assert result.returncode == 78
    assert "missing.so" in result.stderr


def test_cli_send_unreadable_cafile(tmp_path, refused_port):
    result = run_send(
        tmp_path,
        refused_port,
        "--cafile",
        str(tmp_path / "missing.pem"),
        write_message(tmp_path),
    )
    assert result.returncode == 66
    assert "--cafile" in result.stderr


def test_cli_send_help_names_options(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "ectls", "send", "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0
    for option in (
        "--server",
        "--plugin",
        "--python",
        "--json",
        "--mailfrom",
        "--rcpt",
        "--no-ifavailable-fallback",
        "--cafile",
        "--no-verify",
    ):
        assert option in result.stdout


@pytest.mark.parametrize(
    "arguments, match",
    [
        ({"port": "25"}, "invalid port"),
        ({"port": 0}, "invalid port"),
        ({"helo_name": "bad\r\nMAIL FROM:<x@y>"}, "invalid helo_name"),
        ({"helo_name": ""}, "invalid helo_name"),
    ],
    ids=["port-str", "port-zero", "helo-crlf", "helo-empty"],
)
def test_deliver_rejects_bad_arguments(arguments, match):
    message = Message.from_bytes(
        b"Return-Path: <a@example.com>\r\nTo: b@example.org\r\n\r\nbody\r\n"
    )
    options = {"port": 2525, **arguments}
    with pytest.raises(ValueError, match=match):
        deliver(message, "127.0.0.1", **options)


def test_endless_ehlo_reply_bounded(start_scripted, tls_context):
    lines = b"".join(b"250-CAPABILITY-%d\r\n" % number for number in range(5000))
    server = start_scripted(
        Script(tls_context=tls_context, ehlo_reply=lines + b"250 OK\r\n")
    )

    result = send(server.port)

    assert result.status is not DeliveryStatus.DELIVERED
    [connection] = server.finished_connections()
    assert "MAIL" not in connection.verbs()
    assert connection.messages == []


def test_readme_aiosmtpd_example(tmp_path):
    """The README's delivery example: aiosmtpd started from the command
    line on loopback, then ectls send on the example messages."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "aiosmtpd", "-n", "-l", f"127.0.0.1:{port}"],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "aiosmtpd did not start"
                time.sleep(0.1)
        policy = tmp_path / "domain_policy.so"
        subprocess.run(
            [
                "cc",
                "-std=c99",
                "-fPIC",
                "-shared",
                f"-I{ectls.get_include()}",
                str(REPOSITORY / "examples" / "domain_policy.c"),
                "-o",
                str(policy),
            ],
            check=True,
        )
        messages = REPOSITORY / "examples" / "messages"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "ectls",
                "send",
                "--server",
                f"127.0.0.1:{port}",
                "--plugin",
                str(policy),
                str(messages / "plain.eml"),
                str(messages / "multipart_non_ascii.eml"),
            ],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.terminate()
        received, _ = server.communicate(timeout=20)

    lines = result.stdout.splitlines()
    assert result.returncode == 75, result.stderr
    assert "plain.eml: delivered" in lines[0]
    assert "multipart_non_ascii.eml: deferred" in lines[1]
    assert b"Your statement for November is ready." in received
    assert b"Die Abrechnung" not in received
