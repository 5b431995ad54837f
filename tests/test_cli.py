"""The ectls command line, run as a user runs it: ``python -m ectls``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

import ectls
from ectls.cli import split_plugin_spec

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

MESSAGES = EXAMPLES / "messages"


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Run outside the repository so the installed package is imported.
    return subprocess.run(
        [sys.executable, "-m", "ectls", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.fixture
def domain_policy(compile_plugin) -> Path:
    return compile_plugin(EXAMPLES / "domain_policy.c")


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("plugin.so", ("plugin.so", None)),
        ("plugin.so:my_hook", ("plugin.so", "my_hook")),
        ("/odd:dir/plugin.so", ("/odd:dir/plugin.so", None)),
        ("/odd:dir/plugin.so:hook_2", ("/odd:dir/plugin.so", "hook_2")),
        ("plugin.so:not-an-identifier", ("plugin.so:not-an-identifier", None)),
        ("plugin.so:", ("plugin.so:", None)),
        (":hook", (":hook", None)),
    ],
)
def test_split_plugin_spec(spec, expected):
    assert split_plugin_spec(spec) == expected


def test_decide_text_output(domain_policy, tmp_path):
    files = [MESSAGES / "plain.eml", MESSAGES / "multipart_non_ascii.eml"]
    result = run_cli(
        "decide", "--plugin", str(domain_policy), *map(str, files), cwd=tmp_path
    )

    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].startswith(f"{files[0]}: IFAVAILABLE (decided by use_outbound_tls")
    assert "RCPT TO:<alice@customer.example>" in lines[0]
    assert lines[1].startswith(f"{files[1]}: REQUIRED (decided by use_outbound_tls")
    assert "RCPT TO:<francoise@Payroll.Example>" in lines[1]


def test_decide_json_lines(domain_policy, tmp_path):
    files = sorted(MESSAGES.glob("*.eml"))
    result = run_cli(
        "decide",
        "--json",
        "--plugin",
        f"{domain_policy}:use_outbound_tls",
        *map(str, files),
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    objects = [json.loads(line) for line in result.stdout.splitlines()]
    assert [item["file"] for item in objects] == [str(path) for path in files]
    for item in objects:
        assert {"file", "mailfrom", "rcptto", "decision", "decided_by"} <= set(item)
        assert item["decision"] in {"NO", "IFAVAILABLE", "REQUIRED"}
    by_name = {Path(item["file"]).name: item for item in objects}
    assert by_name["multipart_non_ascii.eml"]["decision"] == "REQUIRED"
    assert by_name["multipart_non_ascii.eml"]["mailfrom"] == "jorg@sender.example"
    assert by_name["no_to.eml"]["rcptto"] is None
    assert by_name["no_to.eml"]["mailfrom"] == ""
    assert by_name["no_to.eml"]["warnings"]


def test_decide_missing_to_warns_and_decides(domain_policy, tmp_path):
    result = run_cli(
        "decide",
        "--plugin",
        str(domain_policy),
        str(MESSAGES / "no_to.eml"),
        cwd=tmp_path,
    )

    assert result.returncode == 0
    assert "no recipient" in result.stderr
    assert "no_to.eml: NO (no provider decided)" in result.stdout


def test_decide_rcpt_overrides_headers(domain_policy, tmp_path):
    result = run_cli(
        "decide",
        "--json",
        "--plugin",
        str(domain_policy),
        "--rcpt",
        "ops@bank.example",
        "--mailfrom",
        "",
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )

    item = json.loads(result.stdout)
    assert item["rcptto"] == "ops@bank.example"
    assert item["mailfrom"] == ""
    assert item["decision"] == "REQUIRED"


def test_decide_python_provider_in_order(domain_policy, tmp_path):
    (tmp_path / "mypolicy.py").write_text(
        "import ectls\n"
        "def never(message):\n"
        "    return ectls.UseTLS.NO\n"
        "def always(message):\n"
        "    return ectls.UseTLS.REQUIRED\n"
    )
    result = run_cli(
        "decide",
        "--json",
        "--python",
        "mypolicy:never",
        "--plugin",
        str(domain_policy),
        "--python",
        "mypolicy:always",
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )

    assert result.returncode == 0, result.stderr
    item = json.loads(result.stdout)
    assert [provider["name"] for provider in item["providers"]] == [
        "mypolicy.never",
        f"use_outbound_tls ({domain_policy})",
    ]
    assert item["decided_by"] == f"use_outbound_tls ({domain_policy})"


def test_decide_missing_file_continues(domain_policy, tmp_path):
    missing = tmp_path / "missing.eml"
    result = run_cli(
        "decide",
        "--plugin",
        str(domain_policy),
        str(missing),
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )

    assert result.returncode == 66
    assert f"{missing}: No such file or directory" in result.stderr
    assert "plain.eml: IFAVAILABLE (decided by" in result.stdout


def test_decide_bad_plugin(tmp_path):
    result = run_cli(
        "decide",
        "--plugin",
        str(tmp_path / "nope.so"),
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )

    assert result.returncode == 78
    assert "nope.so" in result.stderr
    assert "does not exist" in result.stderr
    assert result.stdout == ""


def test_decide_bad_python_provider(tmp_path):
    result = run_cli(
        "decide",
        "--python",
        "no_such_module_xyz:f",
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )

    assert result.returncode == 78
    assert "no_such_module_xyz" in result.stderr


def test_decide_python_spec_without_colon(tmp_path):
    result = run_cli(
        "decide", "--python", "justamodule", str(MESSAGES / "plain.eml"), cwd=tmp_path
    )
    assert result.returncode == 64
    assert "MODULE:FUNC" in result.stderr


def test_usage_error_exit_64(tmp_path):
    result = run_cli("decide", cwd=tmp_path)
    assert result.returncode == 64
    assert "usage:" in result.stderr


def test_version(tmp_path):
    result = run_cli("--version", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.strip() == f"ectls {ectls.__version__}"


@pytest.mark.parametrize(
    "module_text, expected",
    [
        ("raise RuntimeError('broken at import')\n", "RuntimeError: broken at import"),
        ("def f(:\n", "SyntaxError"),
        ("import sys\nsys.exit(3)\n", "SystemExit"),
        ("f = 5\n", "f is not callable"),
    ],
    ids=["raises", "syntax-error", "exits", "not-callable"],
)
def test_decide_python_provider_load_failures(tmp_path, module_text, expected):
    (tmp_path / "badpolicy.py").write_text(module_text)
    result = run_cli(
        "decide", "--python", "badpolicy:f", str(MESSAGES / "plain.eml"), cwd=tmp_path
    )
    assert result.returncode == 78, result.stderr
    assert expected in result.stderr
    assert "Traceback" not in result.stderr


def test_decide_invalid_mailfrom_option(tmp_path):
    result = run_cli(
        "decide", "--mailfrom", "<x@y>", str(MESSAGES / "plain.eml"), cwd=tmp_path
    )
    assert result.returncode == 64
    assert "--mailfrom" in result.stderr


def test_decide_device_file_rejected(tmp_path):
    result = run_cli("decide", "/dev/zero", str(MESSAGES / "plain.eml"), cwd=tmp_path)
    assert result.returncode == 66
    assert "/dev/zero: Not a regular file" in result.stderr
    assert "plain.eml: NO" in result.stdout


def test_decide_invalid_message_exit_65(tmp_path):
    bad = tmp_path / "bad.eml"
    bad.write_bytes(b"Return-Path: not an address <<\r\nTo: a@b.example\r\n\r\nx\r\n")
    result = run_cli(
        "decide", "--json", str(bad), str(MESSAGES / "plain.eml"), cwd=tmp_path
    )
    assert result.returncode == 65
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert records[0]["file"] == str(bad)
    assert "invalid Return-Path" in records[0]["error"]
    assert records[1]["decision"] == "NO"


def test_decide_writable_plugin_needs_option(domain_policy, tmp_path):
    domain_policy.chmod(0o777)
    refused = run_cli(
        "decide",
        "--plugin",
        str(domain_policy),
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )
    allowed = run_cli(
        "decide",
        "--allow-writable-plugins",
        "--plugin",
        str(domain_policy),
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )
    assert refused.returncode == 78
    assert "--allow-writable-plugins" in refused.stderr
    assert allowed.returncode == 0, allowed.stderr


def test_decide_reports_provider_fault(tmp_path):
    (tmp_path / "faulty.py").write_text("def none(message):\n    return None\n")
    result = run_cli(
        "decide",
        "--json",
        "--python",
        "faulty:none",
        str(MESSAGES / "plain.eml"),
        cwd=tmp_path,
    )
    item = json.loads(result.stdout)
    assert item["decision"] == "REQUIRED"
    assert "not a decision" in item["providers"][0]["fault"]
    assert any("not a decision" in warning for warning in item["warnings"])


def test_decide_plugin_without_provider_exit_78(compile_plugin, tmp_path):
    idle = compile_plugin("int ectls_plugin_init(void) { return 0; }\n", "idle")
    result = run_cli(
        "decide", "--plugin", str(idle), str(MESSAGES / "plain.eml"), cwd=tmp_path
    )
    assert result.returncode == 78
    assert "registered no provider" in result.stderr
    assert result.stdout == ""
    assert "ectls: warning: init function" in result.stderr
