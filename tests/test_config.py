"""``python -m ectls config`` and ectls.pc, used as a C programmer would:
a plugin and a program built with the printed flags against the
installed package, and the program run without LD_LIBRARY_PATH."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import pytest

import ectls
from ectls import config

PLUGIN = r"""
#include <string.h>
#include <hooks/core/use_outbound_tls.h>
#include <ec_message.h>

int use_outbound_tls(void *closure, email_message *message) {
  char domain[ECTLS_DOMAIN_BUFLEN];
  (void)closure;
  if (ec_message_get_routing_domain(message, domain, sizeof domain) &&
      strcmp(domain, "bank.example") == 0)
    return EC_USE_TLS_REQUIRED;
  return EC_USE_TLS_IFAVAILABLE;
}
"""

PROGRAM = r"""
#include <stdio.h>
#include <ectls.h>

static int program_calls;

/* Registered first, so it runs before the plugin's provider. */
static int count_calls(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  program_calls++;
  return EC_USE_TLS_NO;
}

static int decide(const char *recipient) {
  ec_message *message = ectls_message_new();
  int decision;
  if (message == NULL || !ectls_message_set_rcptto(message, recipient))
    return -1;
  decision = call_core_use_outbound_tls_hook(message);
  ectls_message_free(message);
  return decision;
}

int main(int argc, char **argv) {
  char error[512];
  if (argc != 2) {
    fprintf(stderr, "usage: %s PLUGIN\n", argv[0]);
    return 2;
  }
  register_core_use_outbound_tls_hook_first(count_calls, NULL);
  if (ectls_load_plugin(argv[1], NULL, NULL, 0, error, (int)sizeof error) !=
      ECTLS_PLUGIN_OK) {
    fprintf(stderr, "%s\n", error);
    return 1;
  }
  printf("providers=%d\n", ectls_count_core_use_outbound_tls_hook());
  printf("bank=%d\n", decide("alice@bank.example"));
  printf("other=%d\n", decide("bob@other.example"));
  printf("program_calls=%d\n", program_calls);
  return 0;
}
"""

EXPECTED_OUTPUT = {
    "providers": "2",
    "bank": "2",  # EC_USE_TLS_REQUIRED
    "other": "1",  # EC_USE_TLS_IFAVAILABLE
    "program_calls": "2",
}


def run_config(*options: str, cwd: Path) -> subprocess.CompletedProcess:
    # Run outside the repository so the installed package is imported.
    return subprocess.run(
        [sys.executable, "-m", "ectls", "config", *options],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def flags_from_config(*options: str, cwd: Path) -> List[str]:
    result = run_config(*options, cwd=cwd)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def build_and_run(
    compiler: str, directory: Path, cflags: List[str], libs: List[str]
) -> Dict[str, str]:
    """Build the plugin and the program with the given flags, run the
    program on the plugin and return its key=value output."""
    (directory / "plugin.c").write_text(PLUGIN)
    (directory / "program.c").write_text(PROGRAM)
    plugin = directory / "plugin.so"
    program = directory / "program"
    warnings = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
    commands = [
        [
            compiler,
            *warnings,
            "-fPIC",
            "-shared",
            *cflags,
            "plugin.c",
            "-o",
            str(plugin),
        ],
        [compiler, *warnings, *cflags, "program.c", "-o", str(program), *libs],
    ]
    for command in commands:
        built = subprocess.run(
            command, cwd=directory, capture_output=True, text=True, timeout=120
        )
        assert built.returncode == 0, f"{shlex.join(command)}\n{built.stderr}"

    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("LD_LIBRARY_PATH", "LD_PRELOAD")
    }
    ran = subprocess.run(
        [str(program), str(plugin)],
        cwd=directory,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ran.returncode == 0, ran.stderr
    return dict(line.split("=", 1) for line in ran.stdout.splitlines())


def test_config_prints_installed_paths(tmp_path):
    include_dir = Path(ectls.get_include())
    library_dir = Path(ectls.get_library()).parent

    words = flags_from_config(
        "--includedir", "--libdir", "--pkgconfigdir", "--cflags", "--libs", cwd=tmp_path
    )

    assert words == [
        str(include_dir),
        str(library_dir),
        str(library_dir),
        f"-I{include_dir}",
        f"-L{library_dir}",
        "-lectls",
        f"-Wl,-rpath,{library_dir}",
    ]
    assert (include_dir / "ectls.h").is_file()
    assert (library_dir / "libectls.so").is_file()
    assert (library_dir / "ectls.pc").is_file()


def test_config_keeps_option_order(tmp_path):
    assert flags_from_config("--libdir", "--includedir", cwd=tmp_path) == [
        config.library_dir(),
        config.include_dir(),
    ]


def test_config_without_option_is_usage_error(tmp_path):
    result = run_config(cwd=tmp_path)

    assert result.returncode == 64
    assert "--cflags" in result.stderr
    assert result.stdout == ""


def test_program_built_with_config_flags(c_compiler, tmp_path):
    cflags = flags_from_config("--cflags", cwd=tmp_path)
    libs = flags_from_config("--libs", cwd=tmp_path)

    output = build_and_run(c_compiler, tmp_path, cflags, libs)

    assert output == EXPECTED_OUTPUT


def test_combined_flags_build_program(c_compiler, tmp_path):
    # The usual one-liner: cc $(python -m ectls config --cflags --libs) ...
    flags = flags_from_config("--cflags", "--libs", cwd=tmp_path)

    output = build_and_run(c_compiler, tmp_path, flags, flags)

    assert output == EXPECTED_OUTPUT


@pytest.fixture
def pkg_config(tmp_path) -> List[str]:
    """Return the pkg-config command with PKG_CONFIG_PATH set as the
    README documents it; skip when pkg-config is not installed."""
    binary = shutil.which("pkg-config")
    if binary is None:
        pytest.skip("pkg-config is not installed")
    [directory] = flags_from_config("--pkgconfigdir", cwd=tmp_path)
    return ["env", f"PKG_CONFIG_PATH={directory}", binary]


def run_pkg_config(command: List[str], *options: str) -> List[str]:
    result = subprocess.run(
        [*command, *options, "ectls"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def test_pkg_config_matches_config(pkg_config, tmp_path):
    assert run_pkg_config(pkg_config, "--cflags") == flags_from_config(
        "--cflags", cwd=tmp_path
    )
    assert run_pkg_config(pkg_config, "--libs") == flags_from_config(
        "--libs", cwd=tmp_path
    )
    assert run_pkg_config(pkg_config, "--modversion") == [ectls.__version__]


def test_program_built_with_pkg_config(pkg_config, c_compiler, tmp_path):
    cflags = run_pkg_config(pkg_config, "--cflags")
    libs = run_pkg_config(pkg_config, "--libs")

    output = build_and_run(c_compiler, tmp_path, cflags, libs)

    assert output == EXPECTED_OUTPUT
