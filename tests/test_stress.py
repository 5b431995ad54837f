"""Build tests/stress.c under sanitizers and run it.

The stress program races two calling threads against a thread that
registers and unregisters providers (see its file comment).  It is built
three ways:

- with AddressSanitizer and UndefinedBehaviorSanitizer, libectls' sources
  compiled in, so that a call reaching a freed list version or closure is
  reported;
- with ThreadSanitizer, likewise;
- against the installed libectls.so, as shipped.

Each run lasts ECTLS_STRESS_SECONDS seconds (default 2).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
from pathlib import Path
from types import ModuleType
from typing import Dict, Optional

import pytest

import ectls

REPOSITORY = Path(__file__).resolve().parent.parent
STRESS_SOURCE = REPOSITORY / "tests" / "stress.c"
SUMMARY = re.compile(r"^(\d+) passed, (\d+) failed$")
DEFAULT_SECONDS = 2.0
# Far fewer checks than this means the threads barely ran.
MIN_CHECKS = 1000
# Report headers of the sanitizers, none of which may appear in stderr.
SANITIZER_REPORTS = (
    "ERROR: AddressSanitizer",
    "ERROR: LeakSanitizer",
    "runtime error:",
    "WARNING: ThreadSanitizer",
    "ThreadSanitizer:",
)
SANITIZER_OPTIONS = {
    "ASAN_OPTIONS": "detect_leaks=1:halt_on_error=0",
    "UBSAN_OPTIONS": "print_stacktrace=1",
    "TSAN_OPTIONS": "halt_on_error=0:second_deadlock_stack=1",
}
TRIVIAL_THREADED_PROGRAM = r"""
#include <pthread.h>
static void *run(void *arg) { return arg; }
int main(void) {
  pthread_t thread;
  if (pthread_create(&thread, 0, run, 0) != 0) return 1;
  return pthread_join(thread, 0);
}
"""


def stress_seconds() -> float:
    text = os.environ.get("ECTLS_STRESS_SECONDS", "")
    if not text:
        return DEFAULT_SECONDS
    try:
        seconds = float(text)
    except ValueError:
        pytest.fail(f"ECTLS_STRESS_SECONDS must be a number of seconds, not {text!r}")
    if not 0 < seconds <= 3600:
        pytest.fail(f"ECTLS_STRESS_SECONDS must be in (0, 3600], not {seconds}")
    return seconds


def load_build_recipe() -> ModuleType:
    """Import src/build.py, the library's source list and flags."""
    spec = importlib.util.spec_from_file_location(
        "ectls_build_recipe", REPOSITORY / "src" / "build.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def require_sanitizer(compiler: str, flags: list[str], directory: Path) -> None:
    """Skip unless compiler builds and runs a threaded program with flags."""
    source = directory / "trivial.c"
    program = directory / "trivial"
    source.write_text(TRIVIAL_THREADED_PROGRAM)
    built = subprocess.run(
        [compiler, *flags, str(source), "-o", str(program), "-lpthread"],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        pytest.skip(
            f"{compiler} {' '.join(flags)} cannot build a program (sanitizer "
            f"runtime missing?): {built.stderr.strip()[:300]}"
        )
    ran = subprocess.run([str(program)], capture_output=True, text=True, timeout=60)
    if ran.returncode != 0:
        pytest.skip(
            f"a program built with {' '.join(flags)} does not run here "
            f"(exit status {ran.returncode}): {ran.stderr.strip()[:300]}"
        )


def build_with_sources(
    compiler: str, sanitizer_flags: list[str], output: Path
) -> subprocess.CompletedProcess:
    recipe = load_build_recipe()
    command = [
        compiler,
        *recipe.CFLAGS,
        *sanitizer_flags,
        f"-I{REPOSITORY / 'include'}",
        # stress.c first: its fork handler must be registered before the
        # library's (see run_lock_probe() there).
        str(STRESS_SOURCE),
        *(str(REPOSITORY / "src" / name) for name in recipe.SOURCES),
        "-o",
        str(output),
        *recipe.LIBS,
    ]
    return subprocess.run(command, capture_output=True, text=True)


def build_against_library(compiler: str, output: Path) -> subprocess.CompletedProcess:
    library_dir = os.path.dirname(ectls.get_library())
    command = [
        compiler,
        "-std=c11",
        "-O2",
        "-g",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{ectls.get_include()}",
        str(STRESS_SOURCE),
        "-o",
        str(output),
        f"-L{library_dir}",
        "-lectls",
        f"-Wl,-rpath,{library_dir}",
        "-lpthread",
    ]
    return subprocess.run(command, capture_output=True, text=True)


def run_stress(
    program: Path, seconds: float, extra_env: Optional[Dict[str, str]] = None
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(program), f"{seconds:g}"],
        env={**os.environ, **SANITIZER_OPTIONS, **(extra_env or {})},
        capture_output=True,
        text=True,
        timeout=seconds + 180,
    )


def check_run(
    result: subprocess.CompletedProcess, *, lock_probe_expected: bool
) -> None:
    output = result.stdout + result.stderr
    context = f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}"
    for header in SANITIZER_REPORTS:
        assert header not in result.stderr, f"sanitizer report:\n{context}"
    assert result.returncode == 0, context
    lines = result.stdout.strip().splitlines()
    assert lines, context
    summary = SUMMARY.match(lines[-1])
    assert summary is not None, context
    assert int(summary.group(2)) == 0, context
    assert int(summary.group(1)) >= MIN_CHECKS, context
    if lock_probe_expected:
        assert "lock probe: calls went on while the list lock was held" in output, (
            context
        )


SANITIZERS = {
    "asan-ubsan": ["-fsanitize=address,undefined", "-fno-omit-frame-pointer"],
    "tsan": ["-fsanitize=thread"],
}


@pytest.mark.parametrize("sanitizer", sorted(SANITIZERS))
def test_stress_under_sanitizer(sanitizer, c_compiler, tmp_path):
    flags = SANITIZERS[sanitizer]
    require_sanitizer(c_compiler, flags, tmp_path)
    program = tmp_path / f"stress-{sanitizer}"

    built = build_with_sources(c_compiler, flags, program)

    assert built.returncode == 0, built.stderr
    result = run_stress(program, stress_seconds())
    check_run(result, lock_probe_expected=True)


def test_stress_reader_fence_fallback(c_compiler, tmp_path):
    """Calls that fence themselves, as where membarrier is missing."""
    flags = SANITIZERS["asan-ubsan"]
    require_sanitizer(c_compiler, flags, tmp_path)
    program = tmp_path / "stress-fenced"

    built = build_with_sources(c_compiler, flags, program)

    assert built.returncode == 0, built.stderr
    result = run_stress(program, stress_seconds(), {"ECTLS_READER_FENCE": "1"})
    check_run(result, lock_probe_expected=True)


@pytest.fixture(scope="module")
def installed_stress(c_compiler, tmp_path_factory) -> Path:
    """The stress program built against the installed libectls.so."""
    program = tmp_path_factory.mktemp("stress") / "stress"
    built = build_against_library(c_compiler, program)
    assert built.returncode == 0, built.stderr
    return program


def test_stress_against_installed_library(installed_stress):
    result = run_stress(installed_stress, stress_seconds())
    check_run(result, lock_probe_expected=False)


@pytest.mark.parametrize("arguments", [["0"], ["-1"], ["ten"], ["1", "2", "3"]])
def test_stress_rejects_bad_arguments(installed_stress, arguments):
    result = subprocess.run(
        [str(installed_stress), *arguments], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 2
    assert "usage:" in result.stderr
