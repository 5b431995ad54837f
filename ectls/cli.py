"""Command line: ``python -m ectls decide`` and friends.

Exit status follows sysexits.h: 0 success, 64 bad command line, 66 an
input file could not be read, 78 a plugin or Python provider could not
be loaded.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import re
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

import ectls
from ectls.errors import Error, MessageError

EX_OK = 0
EX_USAGE = 64
EX_NOINPUT = 66
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
    module = importlib.import_module(module_name)
    target: Any = module
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise _UsageError(f"--python {spec!r}: {attribute} is not callable")
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
        "--python",
        dest="providers",
        action=_AppendProvider,
        const="python",
        metavar="MODULE:FUNC",
        help="register a Python function; MODULE is found on sys.path or in "
        "the current directory",
    )


def register_providers(providers: Sequence[Tuple[str, str]]) -> None:
    """Load the --plugin and --python providers in order, all last."""
    for kind, spec in providers:
        try:
            if kind == "plugin":
                path, symbol = split_plugin_spec(spec)
                ectls.load_plugin(path, symbol=symbol)
            else:
                ectls.register_last(_resolve_python_provider(spec))
        except (Error, ImportError, AttributeError, ValueError) as error:
            raise _ProviderLoadError(f"--{kind} {spec}: {error}") from error


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ectls",
        description="Run Momentum's use_outbound_tls policy hooks, C and Python, "
        "without Momentum.",
        epilog="exit status: 0 success, 64 bad command line, 66 an input file "
        "could not be read, 78 a provider could not be loaded",
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
    return parser


def _warn(text: str) -> None:
    print(f"ectls: warning: {text}", file=sys.stderr)


def _error(text: str) -> None:
    print(f"ectls: error: {text}", file=sys.stderr)


def _decide_one(path: str, args: argparse.Namespace) -> dict[str, Any]:
    message = ectls.Message.from_file(path, mailfrom=args.mailfrom, rcptto=args.rcpt)
    warnings: List[str] = []
    if message.rcptto is None:
        warnings.append("no recipient in To:; deciding without one (use --rcpt)")
    explanation = ectls.explain(message)
    decided_by = explanation.decided_by
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


def _run_decide(args: argparse.Namespace) -> int:
    status = EX_OK
    for path in args.files:
        try:
            result = _decide_one(path, args)
        except (OSError, MessageError) as error:
            reason = (
                error.strerror
                if isinstance(error, OSError) and error.strerror
                else error
            )
            _error(f"{path}: {reason}")
            if args.json:
                print(json.dumps({"file": path, "error": str(reason)}), flush=True)
            status = EX_NOINPUT
            continue
        for warning in result["warnings"]:
            _warn(f"{path}: {warning}")
        if args.json:
            print(json.dumps(result, ensure_ascii=False), flush=True)
        else:
            print(_format_text(result), flush=True)
    return status


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the command line; returns the exit status."""
    parser = _build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:
        # argparse exits 2 on bad usage; sysexits says 64.
        return EX_USAGE if exit_request.code == 2 else int(exit_request.code or 0)

    try:
        register_providers(args.providers or [])
    except _UsageError as error:
        _error(str(error))
        return EX_USAGE
    except _ProviderLoadError as error:
        _error(str(error))
        return EX_CONFIG

    return _run_decide(args)
