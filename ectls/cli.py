"""Command line: ``python -m ectls decide``, ``send`` and ``config``.

Exit status follows sysexits.h.  Every command returns 0 for success and
64 for a bad command line, and 78 when a plugin or Python provider could
not be loaded.  decide and send return 66 when an input file could not
be read.  send also returns 65 for a file without sender or recipient,
69 when a message failed (5xx) and 75 when one was deferred.
"""

from __future__ import annotations

import argparse
import errno
import importlib
import json
import logging
import os
import re
import ssl
import stat
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

import ectls
from ectls import config as _config
from ectls._binding import lib
from ectls.delivery import (
    DEFAULT_DATA_TIMEOUT,
    DEFAULT_TIMEOUT,
    DeliveryResult,
    DeliveryStatus,
    InvalidMessageError,
    deliver,
)
from ectls.errors import Error, MessageError

EX_OK = 0
EX_USAGE = 64
EX_DATAERR = 65
EX_NOINPUT = 66
EX_UNAVAILABLE = 69
EX_TEMPFAIL = 75
EX_CONFIG = 78

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


class _UsageError(Exception):
    """A command-line value that argparse accepted but ectls cannot use."""


class _ProviderLoadError(Exception):
    """A --plugin or --python provider that could not be loaded."""


def split_plugin_spec(spec: str) -> Tuple[str, Optional[str]]:
    """Split ``PATH[:SYMBOL]`` at the last colon, and only when what
    follows it is a C identifier, so paths with colons still work."""
    path, colon, symbol = spec.rpartition(":")
    if colon and path and _IDENTIFIER.match(symbol):
        return path, symbol
    return spec, None


def _resolve_python_provider(spec: str) -> Callable[..., Any]:
    """Import ``MODULE:FUNC`` and return the callable."""
    module_name, colon, attribute = spec.rpartition(":")
    if not colon or not module_name or not attribute:
        raise _UsageError(
            f"--python {spec!r}: expected MODULE:FUNC, e.g. mypolicy:decide"
        )
    # Like ``python -m``, find modules in the current directory too.
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except (Exception, SystemExit) as error:
        # Importing runs the module's code, which may fail in any way.
        raise _ProviderLoadError(
            f"--python {spec}: importing {module_name!r} failed: "
            f"{type(error).__name__}: {error}"
        ) from error
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise _ProviderLoadError(f"--python {spec}: {attribute} is not callable")
    return target  # type: ignore[no-any-return]


class _AppendProvider(argparse.Action):
    """Collect --plugin and --python in command-line order."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: Any,
        option_string: Optional[str] = None,
    ) -> None:
        providers = list(getattr(namespace, self.dest) or [])
        providers.append((self.const, values))
        setattr(namespace, self.dest, providers)


def _add_provider_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "providers", "registered last, in the order given on the command line"
    )
    group.add_argument(
        "--plugin",
        dest="providers",
        action=_AppendProvider,
        const="plugin",
        metavar="PATH[:SYMBOL]",
        help=(
            "load a C plugin; with SYMBOL register that provider, else call "
            f"{ectls.DEFAULT_INIT}() or register {ectls.DEFAULT_SYMBOL}"
        ),
    )
    group.add_argument(
        "--allow-writable-plugins",
        action="store_true",
        help="load plugins even when they or their directories are writable "
        "by group or others (refused by default)",
    )
    group.add_argument(
        "--python",
        dest="providers",
        action=_AppendProvider,
        const="python",
        metavar="MODULE:FUNC",
        help="register a Python function; MODULE is found on sys.path or in "
        "the current directory",
    )


def _provider_count() -> int:
    return int(lib.ectls_count_core_use_outbound_tls_hook())


def register_providers(
    providers: Sequence[Tuple[str, str]], allow_writable: bool = False
) -> None:
    """Load the --plugin and --python providers in order, all last."""
    for kind, spec in providers:
        try:
            if kind == "plugin":
                path, symbol = split_plugin_spec(spec)
                before = _provider_count()
                ectls.load_plugin(path, symbol=symbol, allow_writable=allow_writable)
                if _provider_count() == before:
                    # Deciding without the policy the user named could
                    # send mail in clear that the policy would protect.
                    raise _ProviderLoadError(
                        f"--plugin {spec}: the plugin loaded but registered no provider"
                    )
            else:
                ectls.register_last(_resolve_python_provider(spec))
        except (Error, AttributeError, ValueError, TypeError) as error:
            raise _ProviderLoadError(f"--{kind} {spec}: {error}") from error


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ectls",
        description="Run Momentum's use_outbound_tls policy hooks, C and Python, "
        "without Momentum.",
        epilog="exit status: 0 success, 64 bad command line, 66 an input file "
        "could not be read, 78 a provider could not be loaded; send adds 65, "
        "69 and 75 (see send --help)",
    )
    parser.add_argument(
        "--version", action="version", version=f"ectls {ectls.__version__}"
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True

    decide = commands.add_parser(
        "decide",
        help="print the TLS decision for RFC 5322 message files",
        description="Print, for each RFC 5322 file, the envelope used, the "
        "decision and the provider that made it.  The envelope comes from "
        "--mailfrom/--rcpt, else from the Return-Path and the first To "
        "address.",
    )
    _add_provider_options(decide)
    decide.add_argument(
        "--mailfrom",
        metavar="ADDR",
        help='envelope sender for every file, in place of Return-Path ("" is '
        "the null sender)",
    )
    decide.add_argument(
        "--rcpt",
        metavar="ADDR",
        help="envelope recipient for every file, in place of To",
    )
    decide.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per file (JSON Lines)",
    )
    decide.add_argument(
        "files", nargs="+", metavar="FILE", help="RFC 5322 message file"
    )
    _add_send_parser(commands)
    _add_config_parser(commands)
    return parser


# ---- send ---------------------------------------------------------------


def _server_address(text: str) -> Tuple[str, int]:
    """Parse ``HOST:PORT``; an IPv6 address goes in brackets."""
    host, colon, port = text.rpartition(":")
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    if (
        not colon
        or not host
        or (":" in host and not bracketed)
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        raise argparse.ArgumentTypeError(
            f"invalid server {text!r}: expected HOST:PORT with a port from 1 "
            "to 65535, e.g. mx.example.com:25 or [2001:db8::1]:25"
        )
    return host, int(port)


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    # A day bounds what sockets accept and any SMTP timeout worth setting.
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError(
            f"invalid time {text!r}: expected a number of seconds above 0 "
            "and at most 86400"
        )
    return value


def _add_send_parser(commands: Any) -> None:
    send = commands.add_parser(
        "send",
        help="deliver RFC 5322 message files over SMTP under the TLS decision",
        description="Deliver each RFC 5322 file to one SMTP server, using TLS "
        "as the providers decide: NO never sends STARTTLS, IFAVAILABLE sends "
        "it when the server offers it, REQUIRED defers the message unless TLS "
        "is established.  The envelope comes from --mailfrom/--rcpt, else "
        "from the Return-Path and the first To address.  One line per file "
        "goes to standard output.",
        epilog="exit status: 0 every message delivered, 64 bad command line, "
        "65 a file has no sender or recipient, 66 a file or the --cafile "
        "could not be read, 69 a message failed (5xx reply), 75 a message "
        "was deferred (4xx reply, connection problem, or TLS the decision "
        "needs), 78 a provider could not be loaded.  When files end "
        "differently, the first of 66, 65, 69 and 75 that applies is the "
        "exit status.",
    )
    send.add_argument(
        "--server",
        required=True,
        type=_server_address,
        metavar="HOST:PORT",
        help="SMTP server to deliver to, e.g. mx.example.com:25",
    )
    _add_provider_options(send)
    send.add_argument(
        "--mailfrom",
        metavar="ADDR",
        help='envelope sender for every file, in place of Return-Path ("" is '
        "the null sender)",
    )
    send.add_argument(
        "--rcpt",
        metavar="ADDR",
        help="envelope recipient for every file, in place of To",
    )
    send.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object per file (JSON Lines)",
    )
    _add_send_tls_options(send)
    _add_send_session_options(send)
    send.add_argument("files", nargs="+", metavar="FILE", help="RFC 5322 message file")


def _add_send_tls_options(send: argparse.ArgumentParser) -> None:
    tls = send.add_argument_group("TLS")
    tls.add_argument(
        "--no-ifavailable-fallback",
        dest="ifavailable_fallback",
        action="store_false",
        help="under IFAVAILABLE, defer a message whose STARTTLS upgrade fails "
        "(default: send it in plaintext on a new connection)",
    )
    tls.add_argument(
        "--cafile",
        metavar="FILE",
        help="PEM file of the CA certificates that verify the server, in "
        "place of the system's",
    )
    verification = tls.add_mutually_exclusive_group()
    verification.add_argument(
        "--verify",
        dest="verify",
        action="store_const",
        const=True,
        help="verify the server's certificate under IFAVAILABLE too (default: "
        "only under REQUIRED)",
    )
    verification.add_argument(
        "--no-verify",
        dest="verify",
        action="store_const",
        const=False,
        help="verify no certificate, not even under REQUIRED",
    )


def _helo_name(text: str) -> str:
    if not text or any(character.isspace() for character in text):
        raise argparse.ArgumentTypeError(
            f"invalid name {text!r}: expected a host name without spaces, CR or LF"
        )
    return text


def _add_send_session_options(send: argparse.ArgumentParser) -> None:
    session = send.add_argument_group("SMTP session")
    session.add_argument(
        "--helo",
        metavar="NAME",
        type=_helo_name,
        help="name to send with EHLO and HELO (default: the fully qualified "
        "name of this host)",
    )
    session.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="SECONDS",
        help="seconds to wait for the connection and for each reply "
        f"(default: {DEFAULT_TIMEOUT:g})",
    )
    session.add_argument(
        "--data-timeout",
        type=_seconds,
        default=DEFAULT_DATA_TIMEOUT,
        metavar="SECONDS",
        help="seconds to wait for each step of the DATA phase, including the "
        f"reply to the message (default: {DEFAULT_DATA_TIMEOUT:g})",
    )


_EXIT_STATUS = {
    DeliveryStatus.DELIVERED: EX_OK,
    DeliveryStatus.DEFERRED: EX_TEMPFAIL,
    DeliveryStatus.FAILED: EX_UNAVAILABLE,
}
# When files end differently, the first of these that occurred wins.
_EXIT_PRECEDENCE = (EX_NOINPUT, EX_DATAERR, EX_UNAVAILABLE, EX_TEMPFAIL)


def _format_delivery(path: str, result: DeliveryResult) -> str:
    if result.decided_by:
        decided = f"decided by {result.decided_by}"
    else:
        decided = "no provider decided"
    if result.tls:
        tls = f"TLS {result.tls_version} {result.tls_cipher}"
        if not result.tls_verified:
            tls += " (not verified)"
    elif result.plaintext_fallback:
        tls = "no TLS (plaintext fallback)"
    else:
        tls = "no TLS"
    if result.reply_code is None:
        reply = "no reply"
    else:
        text = (result.reply_text or "").replace("\n", " ")
        reply = f"reply {result.reply_code} {text}".rstrip()
    parts = [
        result.status.value,
        f"decision {result.decision.name} ({decided})",
        tls,
        reply,
    ]
    if not result.delivered or result.plaintext_fallback:
        parts.append(result.reason)
    return f"{path}: " + "; ".join(parts)


def _report_input_error(path: str, reason: str, as_json: bool) -> None:
    _error(f"{path}: {reason}")
    if as_json:
        print(json.dumps({"file": path, "error": reason}), flush=True)


def _send_one(path: str, server: Tuple[str, int], args: argparse.Namespace) -> int:
    """Deliver one file and print its line; return its exit status."""
    try:
        _check_regular_file(path)
        message = ectls.Message.from_file(
            path, mailfrom=args.mailfrom, rcptto=args.rcpt
        )
        result = deliver(
            message,
            server[0],
            server[1],
            helo_name=args.helo,
            ifavailable_fallback=args.ifavailable_fallback,
            verify=args.verify,
            cafile=args.cafile,
            timeout=args.timeout,
            data_timeout=args.data_timeout,
        )
    except OSError as error:
        _report_input_error(path, error.strerror or str(error), args.json)
        return EX_NOINPUT
    except (MessageError, InvalidMessageError) as error:
        _report_input_error(path, str(error), args.json)
        return EX_DATAERR

    if args.json:
        record = {
            "file": path,
            "mailfrom": message.mailfrom,
            "rcptto": message.rcptto,
            **result.to_dict(),
        }
        print(json.dumps(record, ensure_ascii=False), flush=True)
    else:
        print(_format_delivery(path, result), flush=True)
    return _EXIT_STATUS[result.status]


def _run_send(args: argparse.Namespace) -> int:
    if args.cafile is not None:
        # Load once here, so that a bad file is one error, not one per file.
        try:
            ssl.create_default_context(cafile=args.cafile)
        except OSError as error:  # ssl.SSLError included
            _error(
                f"--cafile {args.cafile}: cannot load CA certificates: "
                f"{error.strerror or error}"
            )
            return EX_NOINPUT
    status = EX_OK
    for path in args.files:
        status = _worse(status, _send_one(path, args.server, args))
    return status


# ---- config -------------------------------------------------------------

_CONFIG_HELP = {
    "cflags": "compiler flags for the ectls headers (-I)",
    "libs": "linker flags for libectls.so: -L, -lectls and an rpath, so the "
    "program finds the library at run time",
    "embed-libs": "linker flags for a program that registers Python providers "
    "through ectls_python.h: libectls_python.so, libectls.so and libpython, "
    "with rpaths",
    "includedir": "directory of ectls.h, ec_message.h and hooks/",
    "libdir": "directory of libectls.so",
    "pkgconfigdir": "directory of ectls.pc, for PKG_CONFIG_PATH",
}


def _add_config_parser(commands: Any) -> None:
    config = commands.add_parser(
        "config",
        help="print compiler and linker flags for C code built against the "
        "installed ectls",
        description="Print the flags and directories of the installed ectls, "
        "as python3-config does for Python, on one line in the order given.  "
        "A plugin needs --cflags only; a program that calls the list needs "
        "--cflags and --libs.  pkg-config gives the same flags with "
        'PKG_CONFIG_PATH="$(python -m ectls config --pkgconfigdir)".',
        epilog="exit status: 0 success, 64 bad command line (no option given)",
    )
    for name in _config.ITEMS:
        config.add_argument(
            f"--{name}",
            dest="config_items",
            action="append_const",
            const=name,
            help=_CONFIG_HELP[name],
        )


def _run_config(args: argparse.Namespace) -> int:
    if not args.config_items:
        options = ", ".join(f"--{name}" for name in _config.ITEMS)
        _error(f"config: give at least one of {options}")
        return EX_USAGE
    words = [word for name in args.config_items for word in _config.ITEMS[name]()]
    print(" ".join(words), flush=True)
    return EX_OK


def _warn(text: str) -> None:
    print(f"ectls: warning: {text}", file=sys.stderr)


def _error(text: str) -> None:
    print(f"ectls: error: {text}", file=sys.stderr)


def _check_regular_file(path: str) -> None:
    """Raise OSError unless path is a regular file: a device such as
    /dev/zero would be read without end."""
    mode = os.stat(path).st_mode
    if stat.S_ISDIR(mode):
        raise IsADirectoryError(errno.EISDIR, "Is a directory", path)
    if not stat.S_ISREG(mode):
        raise OSError(errno.EINVAL, "Not a regular file", path)


def _decide_one(path: str, args: argparse.Namespace) -> dict[str, Any]:
    _check_regular_file(path)
    message = ectls.Message.from_file(path, mailfrom=args.mailfrom, rcptto=args.rcpt)
    warnings: List[str] = []
    if message.rcptto is None:
        warnings.append("no recipient in To:; deciding without one (use --rcpt)")
    explanation = ectls.explain(message)
    decided_by = explanation.decided_by
    for step in explanation.steps:
        if step.fault:
            warnings.append(f"provider {step.provider} {step.fault}")
    return {
        "file": path,
        "mailfrom": message.mailfrom,
        "rcptto": message.rcptto,
        "routing_domain": message.routing_domain,
        "decision": explanation.decision.name,
        "decided_by": str(decided_by) if decided_by else None,
        "providers": [
            {
                "name": str(step.provider),
                "language": step.provider.language,
                "returned": step.returned,
                "decision": step.decision.name,
                "fault": step.fault,
            }
            for step in explanation.steps
        ],
        "warnings": warnings,
    }


def _format_text(result: dict[str, Any]) -> str:
    def angle(address: Optional[str]) -> str:
        return "(none)" if address is None else f"<{address}>"

    if result["decided_by"]:
        decided = f"decided by {result['decided_by']}"
    else:
        decided = "no provider decided"
    return (
        f"{result['file']}: {result['decision']} ({decided}); "
        f"MAIL FROM:{angle(result['mailfrom'])} RCPT TO:{angle(result['rcptto'])}"
    )


def _worse(status: int, other: int) -> int:
    """Return whichever exit status _EXIT_PRECEDENCE ranks first."""
    for candidate in _EXIT_PRECEDENCE:
        if candidate in (status, other):
            return candidate
    return status


def _check_envelope_options(args: argparse.Namespace) -> None:
    """Reject an invalid --mailfrom or --rcpt once, naming the option."""
    for option, value, field in (
        ("--mailfrom", args.mailfrom, "mailfrom"),
        ("--rcpt", args.rcpt, "rcptto"),
    ):
        if value is None:
            continue
        try:
            setattr(ectls.Message(), field, value)
        except MessageError as error:
            raise _UsageError(f"{option} {value!r}: {error}") from None


def _run_decide(args: argparse.Namespace) -> int:
    status = EX_OK
    for path in args.files:
        try:
            result = _decide_one(path, args)
        except OSError as error:
            _report_input_error(path, error.strerror or str(error), args.json)
            status = _worse(status, EX_NOINPUT)
            continue
        except MessageError as error:
            _report_input_error(path, str(error), args.json)
            status = _worse(status, EX_DATAERR)
            continue
        for warning in result["warnings"]:
            _warn(f"{path}: {warning}")
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        else:
            print(_format_text(result), flush=True)
    return status


class _RecordFormatter(logging.Formatter):
    """Format log records like the command's own "ectls: error: ..." lines."""

    def format(self, record: logging.LogRecord) -> str:
        return f"ectls: {record.levelname.lower()}: {super().format(record)}"


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse exits 2 on bad usage; sysexits.h has 64 (EX_USAGE).
        return EX_USAGE if exit_request.code == 2 else int(exit_request.code or 0)

    if args.command == "config":
        return _run_config(args)

    # Records of the "ectls" logger (faults, warnings from plugins) reach
    # stderr in the same form as the command's own messages.
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_RecordFormatter())
    logging.getLogger("ectls").addHandler(handler)
    try:
        return _run_command(args)
    except KeyboardInterrupt:
        _error("interrupted")
        return 130  # 128 + SIGINT, as shells report it
    finally:
        logging.getLogger("ectls").removeHandler(handler)


def _run_command(args: argparse.Namespace) -> int:
    try:
        _check_envelope_options(args)
        register_providers(args.providers or [], args.allow_writable_plugins)
    except _UsageError as error:
        _error(str(error))
        return EX_USAGE
    except _ProviderLoadError as error:
        _error(str(error))
        return EX_CONFIG

    if args.command == "send":
        return _run_send(args)
    return _run_decide(args)
