"""Build libectls, the plugins and the C harness with build.sh, then run
the harness directly and under valgrind's memcheck."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

REPOSITORY = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPOSITORY / "build.sh"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")
# The harness makes several hundred checks, so fewer means groups were skipped.
MIN_CHECKS = 100

# The temporary build directory and build.sh's result.
Built = tuple[Path, subprocess.CompletedProcess]


def last_line(output: str) -> str:
    lines = output.strip().splitlines()
    return lines[-1] if lines else ""


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Run build.sh into a temporary BUILD_DIR and return the directory and result."""
    if shutil.which(os.environ.get("CC", "cc").split()[0]) is None:
        pytest.skip("no C compiler found (set CC)")
    build_dir = tmp_path_factory.mktemp("build")
    environment = dict(os.environ, BUILD_DIR=str(build_dir), TMPDIR=str(build_dir))
    result = subprocess.run(
        [str(BUILD_SCRIPT)],
        env=environment,
        capture_output=True,
        text=True,
        timeout=600,
    )
    return build_dir, result


def run_harness(
    build_dir: Path, *prefix: str, plugin_dir: Path | None = None
) -> subprocess.CompletedProcess:
    command = [
        *prefix,
        str(build_dir / "tests" / "harness"),
        str(plugin_dir or build_dir / "tests" / "plugins"),
        str(build_dir / "examples"),
    ]
    return subprocess.run(
        command,
        env=dict(os.environ, TMPDIR=str(build_dir)),
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_build_script_passes(built: Built) -> None:
    build_dir, result = built
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert (build_dir / "libectls" / "libectls.so").is_file()
    assert (build_dir / "examples" / "domain_policy.so").is_file()
    assert (build_dir / "tests" / "plugins" / "named_decisions.so").is_file()
    assert SUMMARY.match(last_line(result.stdout)), output


def test_harness_all_checks_pass(built: Built) -> None:
    build_dir, build = built
    assert build.returncode == 0, build.stdout + build.stderr
    result = run_harness(build_dir)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    match = SUMMARY.match(last_line(result.stdout))
    assert match, output
    assert match.group(2) == "0", output
    assert int(match.group(1)) > MIN_CHECKS, output


def test_harness_reports_failure(built: Built) -> None:
    build_dir, build = built
    assert build.returncode == 0, build.stdout + build.stderr
    result = run_harness(build_dir, plugin_dir=build_dir / "missing")
    match = SUMMARY.match(last_line(result.stdout))
    assert result.returncode == 1, result.stdout + result.stderr
    assert match, result.stdout
    assert int(match.group(2)) > 0, result.stdout


def test_harness_under_valgrind(built: Built) -> None:
    valgrind = shutil.which("valgrind")
    if valgrind is None:
        pytest.skip("valgrind is not installed")
    build_dir, build = built
    assert build.returncode == 0, build.stdout + build.stderr
    result = run_harness(
        build_dir,
        valgrind,
        "--quiet",
        "--tool=memcheck",
        "--error-exitcode=1",
        "--leak-check=full",
        "--errors-for-leak-kinds=definite",
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert SUMMARY.match(last_line(result.stdout)), output
    assert last_line(result.stdout).endswith(" 0 failed"), output


def test_build_script_rejects_unknown_option() -> None:
    result = subprocess.run(
        [str(BUILD_SCRIPT), "--bogus"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "--bogus" in result.stderr
