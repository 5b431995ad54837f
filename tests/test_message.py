"""Message: envelope, routing domain, contexts, RFC 5322 parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

import ectls
from ectls import Message, MessageError
from ectls._binding import ffi, lib

EXAMPLE_MESSAGES = Path(__file__).resolve().parent.parent / "examples" / "messages"


def c_string(pointer) -> bytes:
    return ffi.string(pointer)


def test_message_empty_by_default():
    message = Message()
    assert message.mailfrom is None
    assert message.rcptto is None
    assert message.routing_domain is None
    assert dict(message.context) == {}
    assert dict(message.connection_context) == {}


def test_message_envelope_bare_in_python_decorated_in_c():
    message = Message("alice@example.com", "bob@example.org")

    assert message.mailfrom == "alice@example.com"
    assert message.rcptto == "bob@example.org"
    assert c_string(lib.ec_message_get_mailfrom(message._c_message)) == (
        b"MAIL FROM:<alice@example.com>\r\n"
    )
    assert c_string(lib.ec_message_get_rcptto(message._c_message)) == (
        b"RCPT TO:<bob@example.org>\r\n"
    )


def test_message_null_sender():
    message = Message("")
    assert message.mailfrom == ""
    assert (
        c_string(lib.ec_message_get_mailfrom(message._c_message)) == b"MAIL FROM:<>\r\n"
    )


def test_message_non_ascii_address_round_trips():
    message = Message("jörg@exämple.de", "用户@例子.广告")
    assert message.mailfrom == "jörg@exämple.de"
    assert message.rcptto == "用户@例子.广告"
    assert message.routing_domain == "例子.广告"


@pytest.mark.parametrize(
    "address",
    ["a@b\r\nRCPT TO:<x@y>", "a@b\n", "<a@b>", "a>b@c", "a\0@b", "x" * 255 + "@b"],
    ids=["crlf", "lf", "brackets", "gt", "nul", "too-long"],
)
def test_message_invalid_address_rejected(address):
    message = Message("keep@example.com", "keep@example.org")
    with pytest.raises(MessageError):
        message.mailfrom = address
    with pytest.raises(MessageError):
        message.rcptto = address
    assert message.mailfrom == "keep@example.com"
    assert message.rcptto == "keep@example.org"


def test_message_error_is_value_error():
    with pytest.raises(ValueError):
        Message("a\r\n@b")
    assert issubclass(MessageError, ectls.Error)


def test_message_address_type_checked():
    with pytest.raises(TypeError, match="mailfrom must be a str"):
        Message(b"a@b")  # type: ignore[arg-type]


def test_message_address_at_limit_accepted():
    address = "x" * (lib.ECTLS_ADDRESS_MAXLEN - len("@b.c")) + "@b.c"
    assert len(address) == lib.ECTLS_ADDRESS_MAXLEN
    assert Message(rcptto=address).rcptto == address


def test_routing_domain_from_recipient_lower_case():
    assert Message(rcptto="User@Mail.Example.ORG").routing_domain == "mail.example.org"


def test_routing_domain_override_and_reset():
    message = Message(rcptto="user@example.org", routing_domain="Relay.Example.NET")
    assert message.routing_domain == "relay.example.net"
    message.routing_domain = None
    assert message.routing_domain == "example.org"


@pytest.mark.parametrize(
    "domain",
    ["", "a b", "user@host", "x" * 254, "a\r\nb"],
    ids=["empty", "space", "at", "long", "crlf"],
)
def test_routing_domain_invalid_rejected(domain):
    message = Message(rcptto="user@example.org")
    with pytest.raises(MessageError, match="invalid routing domain"):
        message.routing_domain = domain
    assert message.routing_domain == "example.org"


def test_routing_domain_without_at_is_none():
    assert Message(rcptto="postmaster").routing_domain is None


def test_context_mapping_operations():
    message = Message(context={"b": "2", "a": "1"})
    context = message.context

    context["c"] = "3"
    context["a"] = "one"
    del context["b"]

    assert list(context) == ["a", "c"]
    assert dict(context) == {"a": "one", "c": "3"}
    assert len(context) == 2
    assert "a" in context
    assert "b" not in context
    with pytest.raises(KeyError):
        context["b"]
    with pytest.raises(KeyError):
        del context["b"]


def test_context_dictionaries_are_separate():
    message = Message(context={"k": "message"}, connection_context={"k": "connection"})
    assert message.context["k"] == "message"
    assert message.connection_context["k"] == "connection"
    conn = lib.ECMESS_CTX_CONN
    assert c_string(lib.ec_message_context_get(message._c_message, conn, b"k")) == (
        b"connection"
    )


def test_context_visible_to_c_getter():
    message = Message(context={"tls_required_domains": "bank.example"})
    value = lib.ec_message_context_get(
        message._c_message, lib.ECMESS_CTX_MESS, b"tls_required_domains"
    )
    assert c_string(value) == b"bank.example"
    missing = lib.ec_message_context_get(
        message._c_message, lib.ECMESS_CTX_MESS, b"nope"
    )
    assert c_string(missing) == b""


def test_context_rejects_nul_and_non_str():
    context = Message().context
    with pytest.raises(MessageError, match="NUL"):
        context["k"] = "a\0b"
    with pytest.raises(TypeError):
        context["k"] = 5  # type: ignore[assignment]
    assert dict(context) == {}


def test_context_non_utf8_from_c_round_trips():
    message = Message()
    assert lib.ec_message_context_set(
        message._c_message, lib.ECMESS_CTX_MESS, b"raw", b"\xff\xfe"
    )
    value = message.context["raw"]
    assert value.encode("utf-8", "surrogateescape") == b"\xff\xfe"
    message.context["copy"] = value
    copied = lib.ec_message_context_get(
        message._c_message, lib.ECMESS_CTX_MESS, b"copy"
    )
    assert c_string(copied) == b"\xff\xfe"


def test_context_iteration_survives_deleting_other_keys():
    context = Message(context={"a": "1", "b": "2", "c": "3"}).context
    seen = []
    for key in context:
        seen.append(key)
        if key == "a":
            del context["c"]
    assert seen == ["a", "b"]


# ---- RFC 5322 ------------------------------------------------------------

PLAIN = (
    b"Return-Path: <sender@example.com>\r\n"
    b"From: Sender <sender@example.com>\r\n"
    b"To: =?utf-8?q?Doe=2C_J=C3=B6rg?= <joerg@Bank.Example>, other@example.org\r\n"
    b"Subject: =?utf-8?q?Kontoausz=C3=BCge?=\r\n"
    b"\r\n"
    b"Hello.\r\n"
)


def test_from_bytes_envelope_from_headers():
    message = Message.from_bytes(PLAIN)
    assert message.mailfrom == "sender@example.com"
    assert message.rcptto == "joerg@Bank.Example"
    assert message.routing_domain == "bank.example"
    assert message.email is not None
    assert message.email["Subject"] == "Kontoauszüge"


def test_from_bytes_arguments_override_headers():
    message = Message.from_bytes(
        PLAIN, mailfrom="", rcptto="x@override.example", context={"k": "v"}
    )
    assert message.mailfrom == ""
    assert message.rcptto == "x@override.example"
    assert message.context["k"] == "v"


def test_from_bytes_null_return_path():
    message = Message.from_bytes(b"Return-Path: <>\r\nTo: a@b.example\r\n\r\nx\r\n")
    assert message.mailfrom == ""


def test_from_bytes_without_to():
    message = Message.from_bytes(b"From: a@b.example\r\nSubject: hi\r\n\r\nbody\r\n")
    assert message.mailfrom is None
    assert message.rcptto is None
    assert message.routing_domain is None


def test_from_bytes_group_without_addresses():
    message = Message.from_bytes(b"To: undisclosed-recipients:;\r\n\r\nbody\r\n")
    assert message.rcptto is None


def test_from_file_reads_examples():
    files = sorted(EXAMPLE_MESSAGES.glob("*.eml"))
    assert len(files) >= 3
    for path in files:
        message = Message.from_file(path)
        assert message.email is not None


def test_from_file_missing_raises_file_not_found(tmp_path):
    with pytest.raises(FileNotFoundError):
        Message.from_file(tmp_path / "missing.eml")


def test_message_empty_recipient_rejected():
    message = Message(rcptto="keep@example.org")
    with pytest.raises(MessageError):
        message.rcptto = ""
    assert message.rcptto == "keep@example.org"


def test_message_lone_surrogate_rejected():
    with pytest.raises(MessageError, match="UTF-8"):
        Message().context["key"] = "\ud800"


def test_from_bytes_crlf_in_display_name_rejected():
    raw = (
        b"To: =?utf-8?q?bob=0D=0ARCPT_TO=3A=3Cevil=40x=3E?= <bob@bank.example>\r\n"
        b"\r\nbody\r\n"
    )
    with pytest.raises(MessageError, match="invalid To header"):
        Message.from_bytes(raw)


@pytest.mark.parametrize(
    "value", ["not an address <<", "statements at bank dot example", "<a@b"]
)
def test_from_bytes_invalid_return_path_rejected(value):
    raw = f"Return-Path: {value}\r\nTo: a@b.example\r\n\r\nbody\r\n".encode()
    with pytest.raises(MessageError, match="invalid Return-Path"):
        Message.from_bytes(raw)


def test_from_bytes_bare_return_path_accepted():
    raw = b"Return-Path: sender@example.com\r\n\r\nbody\r\n"
    assert Message.from_bytes(raw).mailfrom == "sender@example.com"


def test_from_bytes_rejects_str():
    with pytest.raises(TypeError, match="from_file"):
        Message.from_bytes("To: a@b\r\n\r\n")  # type: ignore[arg-type]


def test_routing_domain_trailing_dot_dropped():
    assert Message(rcptto="f@Payroll.Example.").routing_domain == "payroll.example"
    message = Message(rcptto="a@b.example", routing_domain="relay.example.")
    assert message.routing_domain == "relay.example"


@pytest.mark.parametrize(
    "address", ["u@bank example", "u@payroll.example ", "a\x01@b.example"]
)
def test_address_with_space_in_domain_or_control_rejected(address):
    with pytest.raises(MessageError):
        Message(rcptto=address)


def test_routing_domain_control_character_rejected():
    with pytest.raises(MessageError):
        Message(routing_domain="b\x01nk.example")
