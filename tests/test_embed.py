"""libectls_python.so (include/ectls_python.h): Python providers registered
from C.

The C programs are built as a user would build them, with the flags that
``python -m ectls config`` prints for the installed package, and run as
subprocesses, so Python starts inside them on first use.  The last tests
load the library with ctypes into a Python process that imported ectls.
No test loads it into the pytest process, which would keep it loaded.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any, Dict, List, NamedTuple, Optional

import pytest

import ectls
from ectls import UseTLS

OK = 0
ERR_ARGUMENT = 1
ERR_START = 2
ERR_IMPORT = 3
ERR_ATTRIBUTE = 4
ERR_NOT_CALLABLE = 5
ERR_NOT_FOUND = 6
ERR_PYTHON = 8

# Runs its arguments as commands and prints one tab-separated line per
# command: the command, the status or decision, the id, the error text.
DRIVER = r"""
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <ectls.h>
#include <ectls_python.h>

static int decide_no(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_NO;
}

static int decide_ifavailable(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_IFAVAILABLE;
}

static void print_status(const char *command, int status, ectls_python_id id) {
  printf("%s\t%d\t%lld\t%s\n", command, status, id,
         status == ECTLS_PYTHON_OK ? "" : ectls_python_last_error());
  fflush(stdout);
}

static void print_value(const char *command, int value) {
  printf("%s\t%d\t0\t\n", command, value);
  fflush(stdout);
}

static const char *thread_spec;

static void *register_in_thread(void *unused) {
  ectls_python_id id = 0;
  int status = ectls_python_register_provider(thread_spec, 0, &id);
  (void)unused;
  print_status("thread", status, id);
  return NULL;
}

static int run_threads(const char *argument) {
  pthread_t threads[16];
  char *rest;
  long count = strtol(argument, &rest, 10);
  long i;
  if (*rest != ':' || count < 1 || count > 16)
    return 0;
  thread_spec = rest + 1;
  for (i = 0; i < count; i++)
    if (pthread_create(&threads[i], NULL, register_in_thread, NULL) != 0)
      return 0;
  for (i = 0; i < count; i++)
    pthread_join(threads[i], NULL);
  return 1;
}

int main(int argc, char **argv) {
  ec_message *message = ectls_message_new();
  ectls_python_id id;
  int i, status;

  if (message == NULL || !ectls_message_set_rcptto(message, "bob@bank.example"))
    return 3;
  for (i = 1; i < argc; i++) {
    const char *command = argv[i];
    /* Failed registrations must set the id to 0. */
    id = -1;
    if (strcmp(command, "c-no") == 0) {
      register_core_use_outbound_tls_hook_last(decide_no, NULL);
    } else if (strcmp(command, "c-ifavailable") == 0) {
      register_core_use_outbound_tls_hook_last(decide_ifavailable, NULL);
    } else if (strncmp(command, "last=", 5) == 0) {
      status = ectls_python_register_provider(command + 5, 0, &id);
      print_status("last", status, id);
    } else if (strncmp(command, "first=", 6) == 0) {
      status = ectls_python_register_provider(command + 6, 1, &id);
      print_status("first", status, id);
    } else if (strncmp(command, "no-id=", 6) == 0) {
      status = ectls_python_register_provider(command + 6, 0, NULL);
      print_status("no-id", status, 0);
    } else if (strcmp(command, "null-spec") == 0) {
      status = ectls_python_register_provider(NULL, 0, &id);
      print_status("null-spec", status, id);
    } else if (strncmp(command, "unregister=", 11) == 0) {
      status = ectls_python_unregister_provider(atoll(command + 11));
      print_status("unregister", status, 0);
    } else if (strcmp(command, "last-error") == 0) {
      printf("last-error\t0\t0\t%s\n", ectls_python_last_error());
      fflush(stdout);
    } else if (strcmp(command, "start") == 0) {
      print_status("start", ectls_python_start(), 0);
    } else if (strncmp(command, "threads=", 8) == 0) {
      if (!run_threads(command + 8))
        return 4;
    } else if (strcmp(command, "call") == 0) {
      print_value("call", call_core_use_outbound_tls_hook(message));
    } else if (strcmp(command, "call-null") == 0) {
      print_value("call-null", call_core_use_outbound_tls_hook(NULL));
    } else if (strcmp(command, "count") == 0) {
      print_value("count", ectls_count_core_use_outbound_tls_hook());
    } else {
      fprintf(stderr, "unknown command: %s\n", command);
      return 2;
    }
  }
  ectls_message_free(message);
  return 0;
}
"""

POLICY_MODULE = """
import json
import os
import sys

import ectls
from ectls import UseTLS

calls = []


def if_available(message):
    calls.append(message)
    if message is None:
        return UseTLS.NO
    if isinstance(message, ectls.Message) and message.rcptto == "bob@bank.example":
        return UseTLS.IFAVAILABLE
    return UseTLS.REQUIRED


def no_opinion(message):
    calls.append(message)
    return UseTLS.NO


def raises(message):
    raise ValueError("policy failed on purpose")


def report(message):
    with open(os.environ["EMBED_REPORT"], "w") as output:
        json.dump({"prefix": sys.prefix, "path": sys.path}, output)
    return UseTLS.NO


class Policies:
    @staticmethod
    def required(message):
        return UseTLS.REQUIRED


not_callable = 42
"""


class Line(NamedTuple):
    command: str
    value: int
    id: int
    error: str


class Result(NamedTuple):
    returncode: int
    lines: List[Line]
    stderr: str


def embedding_library() -> Path:
    return Path(ectls.get_library()).with_name("libectls_python.so")


def config_flags(*options: str, cwd: Path) -> List[str]:
    # Run outside the repository so the installed package is imported.
    result = subprocess.run(
        [sys.executable, "-m", "ectls", "config", *options],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


@pytest.fixture(scope="module")
def driver(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Build DRIVER with the flags of ``python -m ectls config``."""
    compiler = os.environ.get("CC", "cc")
    directory = tmp_path_factory.mktemp("driver")
    flags = config_flags("--cflags", "--embed-libs", cwd=directory)
    (directory / "driver.c").write_text(DRIVER)
    command = [
        *shlex.split(compiler),
        "-std=c99",
        "-Wall",
        "-Wextra",
        "-Werror",
        "driver.c",
        "-o",
        "driver",
        *flags,
        "-lpthread",
    ]
    try:
        built = subprocess.run(
            command, cwd=directory, capture_output=True, text=True, timeout=120
        )
    except FileNotFoundError:
        pytest.skip(f"no C compiler ({compiler}) found; set CC")
    assert built.returncode == 0, f"{shlex.join(command)}\n{built.stderr}"
    return directory / "driver"


@pytest.fixture
def modules(tmp_path: Path) -> Path:
    """A directory with the module ``policy``, for PYTHONPATH."""
    directory = tmp_path / "modules"
    directory.mkdir()
    (directory / "policy.py").write_text(POLICY_MODULE)
    return directory


def run(
    driver: Path,
    *commands: str,
    pythonpath: Optional[Path] = None,
    cwd: Optional[Path] = None,
    extra_env: Optional[Dict[str, str]] = None,
) -> Result:
    environment = {
        name: value
        for name, value in os.environ.items()
        if name not in ("LD_LIBRARY_PATH", "LD_PRELOAD", "PYTHONPATH", "PYTHONHOME")
    }
    if pythonpath is not None:
        environment["PYTHONPATH"] = str(pythonpath)
    environment.update(extra_env or {})
    completed = subprocess.run(
        [str(driver), *commands],
        cwd=cwd or driver.parent,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )
    lines = []
    for text in completed.stdout.splitlines():
        command, value, id_text, error = text.split("\t", 3)
        lines.append(Line(command, int(value), int(id_text), error))
    return Result(completed.returncode, lines, completed.stderr)


def test_config_embed_libs_links_both_libraries(tmp_path):
    words = config_flags("--embed-libs", cwd=tmp_path)
    library_dir = str(Path(ectls.get_library()).parent)

    assert words[:4] == [
        f"-L{library_dir}",
        "-lectls_python",
        "-lectls",
        f"-Wl,-rpath,{library_dir}",
    ]
    assert any(word.startswith("-lpython3") for word in words[4:])
    assert embedding_library().is_file()


def test_c_and_python_providers_decide(driver, modules):
    result = run(
        driver,
        "c-no",
        "last=policy:if_available",
        "call",
        "call-null",
        pythonpath=modules,
    )

    assert result.returncode == 0, result.stderr
    register, call, call_null = result.lines
    assert register == Line("last", OK, 1, "")
    # The C provider returns NO.  The Python provider gets a Message with
    # the C message's recipient, and None for a NULL message.
    assert call.value == UseTLS.IFAVAILABLE
    assert call_null.value == UseTLS.NO


def test_raising_provider_fails_closed(driver, modules):
    result = run(driver, "c-no", "last=policy:raises", "call", pythonpath=modules)

    assert result.returncode == 0, result.stderr
    assert result.lines[0].value == OK
    assert result.lines[1] == Line("call", UseTLS.REQUIRED, 0, "")
    assert "policy.raises raised" in result.stderr
    assert "policy failed on purpose" in result.stderr


def test_first_and_last_order(driver, modules):
    first = run(
        driver,
        "c-ifavailable",
        "first=policy:Policies.required",
        "call",
        pythonpath=modules,
    )
    last = run(
        driver,
        "c-ifavailable",
        "last=policy:Policies.required",
        "call",
        pythonpath=modules,
    )

    assert first.lines[-1].value == UseTLS.REQUIRED
    assert last.lines[-1].value == UseTLS.IFAVAILABLE


def test_missing_module_reported_and_program_continues(driver, modules):
    result = run(
        driver,
        "last=no_such_module:f",
        "c-ifavailable",
        "call",
        "count",
        pythonpath=modules,
    )

    assert result.returncode == 0, result.stderr
    register, call, count = result.lines
    assert register.value == ERR_IMPORT
    assert register.id == 0
    assert "'no_such_module'" in register.error
    assert "not found" in register.error
    assert call.value == UseTLS.IFAVAILABLE
    assert count.value == 1


def test_module_failing_on_import_reported(driver, modules):
    (modules / "broken.py").write_text("raise RuntimeError('cannot configure')\n")

    result = run(driver, "last=broken:f", pythonpath=modules)

    assert result.lines[0].value == ERR_IMPORT
    assert "RuntimeError: cannot configure" in result.lines[0].error


def test_module_exiting_on_import_reported(driver, modules):
    (modules / "exits.py").write_text("raise SystemExit(3)\n")

    result = run(driver, "last=exits:f", "c-ifavailable", "call", pythonpath=modules)

    assert result.returncode == 0, result.stderr
    register, call = result.lines
    assert register.value == ERR_PYTHON
    assert "SystemExit: 3" in register.error
    assert call.value == UseTLS.IFAVAILABLE


def test_missing_attribute_reported(driver, modules):
    result = run(
        driver,
        "last=policy:no_such_function",
        "last=policy:Policies.absent",
        "count",
        pythonpath=modules,
    )

    missing, missing_nested, count = result.lines
    assert missing.value == ERR_ATTRIBUTE
    assert "'no_such_function'" in missing.error
    assert missing_nested.value == ERR_ATTRIBUTE
    assert "'policy.Policies' has no attribute 'absent'" in missing_nested.error
    assert count.value == 0


def test_not_callable_reported(driver, modules):
    result = run(driver, "last=policy:not_callable", "count", pythonpath=modules)

    register, count = result.lines
    assert register.value == ERR_NOT_CALLABLE
    assert "'policy.not_callable' is not callable" in register.error
    assert count.value == 0


@pytest.mark.parametrize(
    "spec", ["policy", "policy:", ":if_available", "policy:if available", "a b:c"]
)
def test_invalid_spec_rejected(driver, modules, spec):
    result = run(driver, f"last={spec}", pythonpath=modules)

    assert result.lines[0].value == ERR_ARGUMENT
    assert repr(spec) in result.lines[0].error


def test_null_spec_rejected(driver):
    result = run(driver, "null-spec")

    assert result.lines[0].value == ERR_ARGUMENT
    assert result.lines[0].id == 0
    assert "NULL" in result.lines[0].error


def test_last_error_survives_success(driver, modules):
    result = run(
        driver,
        "last-error",
        "last=policy:missing",
        "start",
        "last=policy:no_opinion",
        "last-error",
        "last=policy:not_callable",
        "last-error",
        pythonpath=modules,
    )

    before, failed, started, registered, after_success, failed_again, replaced = (
        result.lines
    )
    assert before.error == ""
    assert failed.value == ERR_ATTRIBUTE
    assert started.value == OK
    assert registered.value == OK
    assert after_success.error == failed.error
    assert failed_again.value == ERR_NOT_CALLABLE
    assert replaced.error == failed_again.error


def test_unregister_removes_provider(driver, modules):
    result = run(
        driver,
        "c-ifavailable",
        "first=policy:Policies.required",
        "call",
        "unregister=1",
        "call",
        "unregister=1",
        "unregister=99",
        "count",
        pythonpath=modules,
    )

    register, call_before, removed, call_after, again, unknown, count = result.lines
    assert register == Line("first", OK, 1, "")
    assert call_before.value == UseTLS.REQUIRED
    assert removed.value == OK
    assert call_after.value == UseTLS.IFAVAILABLE
    assert again.value == ERR_NOT_FOUND
    assert "id 1" in again.error
    assert unknown.value == ERR_NOT_FOUND
    assert count.value == 1


def test_register_without_id(driver, modules):
    result = run(driver, "no-id=policy:Policies.required", "call", pythonpath=modules)

    assert result.lines[0].value == OK
    assert result.lines[1].value == UseTLS.REQUIRED


def test_module_in_current_directory_not_searched(driver, modules):
    result = run(driver, "last=policy:if_available", cwd=modules)

    assert result.lines[0].value == ERR_IMPORT
    assert "PYTHONPATH" in result.lines[0].error


def test_python_that_cannot_start_reports_error(driver, modules, tmp_path):
    # No standard library under this PYTHONHOME, so initialization fails.
    result = run(
        driver,
        "last=policy:if_available",
        "c-ifavailable",
        "call",
        "unregister=1",
        "start",
        pythonpath=modules,
        extra_env={"PYTHONHOME": str(tmp_path / "no_python_here")},
    )

    assert result.returncode == 0, result.stderr
    register, call, unregister, start = result.lines
    assert register.value == ERR_START
    assert register.error.startswith("Python could not start")
    assert call.value == UseTLS.IFAVAILABLE
    # A failed start is not retried, and every call reports it.
    assert unregister.value == ERR_START
    assert start.value == ERR_START
    assert start.error == register.error


def test_concurrent_first_use_starts_once(driver, modules):
    result = run(driver, "threads=8:policy:no_opinion", "count", pythonpath=modules)

    assert result.returncode == 0, result.stderr
    registered = [line for line in result.lines if line.command == "thread"]
    assert [line.value for line in registered] == [OK] * 8
    assert sorted(line.id for line in registered) == list(range(1, 9))
    assert result.lines[-1] == Line("count", 8, 0, "")


def test_interpreter_uses_installed_environment(driver, modules, tmp_path):
    report = tmp_path / "report.json"

    result = run(
        driver,
        "last=policy:report",
        "call",
        pythonpath=modules,
        extra_env={"EMBED_REPORT": str(report)},
    )

    assert result.lines[1].value == UseTLS.NO, result.stderr
    environment = json.loads(report.read_text())
    site_packages = str(Path(ectls.__file__).resolve().parent.parent)
    assert site_packages in environment["path"]
    assert environment["path"][0] == str(modules)
    if sys.prefix != sys.base_prefix:
        # Installed in a virtual environment: Python runs in it.
        assert environment["prefix"] == sys.prefix


# ---- Loaded into a Python process ---------------------------------------

# Run by a Python that imported ectls: loads libectls_python.so with
# ctypes, registers through its C API and prints what it saw as JSON.
CTYPES_SCRIPT = """
import ctypes
import json
import sys
from pathlib import Path

import ectls

plugin, modules = sys.argv[1], sys.argv[2]
sys.path.insert(0, modules)
library_path = Path(ectls.get_library()).with_name("libectls_python.so")
library = ctypes.CDLL(str(library_path))
library.ectls_python_register_provider.argtypes = [
    ctypes.c_char_p, ctypes.c_int, ctypes.POINTER(ctypes.c_longlong)
]
library.ectls_python_unregister_provider.argtypes = [ctypes.c_longlong]
library.ectls_python_last_error.restype = ctypes.c_char_p

ectls.load_plugin(plugin)
provider_id = ctypes.c_longlong()
status = library.ectls_python_register_provider(
    b"policy:no_opinion", 1, ctypes.byref(provider_id)
)
message = ectls.Message("alice@example.com", "bob@bank.example")
explanation = ectls.explain(message)
steps = [[step.provider.language, step.provider.name] for step in explanation.steps]

import policy

report = {
    "status": status,
    "id": provider_id.value,
    "steps": steps,
    "decision": explanation.decision.name,
    "calls": len(policy.calls),
    "same_message": bool(policy.calls) and policy.calls[0] is message,
    "embedding_module": "ectls._ectls_python_cffi" in sys.modules,
    "libpython": sorted(
        {line.split()[-1] for line in open("/proc/self/maps") if "libpython" in line}
    ),
    "unregister": library.ectls_python_unregister_provider(provider_id),
    "after": [step.provider.language for step in ectls.explain(None).steps],
}
other_id = ctypes.c_longlong(-1)
report["not_callable"] = library.ectls_python_register_provider(
    b"policy:not_callable", 0, ctypes.byref(other_id)
)
report["not_callable_id"] = other_id.value
report["not_callable_error"] = library.ectls_python_last_error().decode()
print(json.dumps(report))
"""

PLUGIN = r"""
#include <hooks/core/use_outbound_tls.h>

int use_outbound_tls(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_IFAVAILABLE;
}
"""


@pytest.fixture
def ctypes_report(compile_plugin, modules, tmp_path) -> Dict[str, Any]:
    """Run CTYPES_SCRIPT outside the repository and return its report."""
    plugin = compile_plugin(PLUGIN)
    script = tmp_path / "load_with_ctypes.py"
    script.write_text(CTYPES_SCRIPT)
    completed = subprocess.run(
        [sys.executable, str(script), str(plugin), str(modules)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    report: Dict[str, Any] = json.loads(completed.stdout)
    return report


def test_ctypes_load_joins_running_interpreter(ctypes_report):
    assert ctypes_report["status"] == OK
    assert ctypes_report["id"] == 1
    # One list: explain() in Python names the C plugin's provider and the
    # Python provider registered through the C API.
    assert ctypes_report["steps"] == [
        ["python", "policy.no_opinion"],
        ["c", "use_outbound_tls"],
    ]
    assert ctypes_report["decision"] == "IFAVAILABLE"
    # One interpreter: the provider ran in the script's own module and got
    # the script's own Message, and no second libpython was loaded.
    assert ctypes_report["calls"] == 1
    assert ctypes_report["same_message"] is True
    assert ctypes_report["embedding_module"] is True
    assert len(ctypes_report["libpython"]) <= 1
    assert ctypes_report["unregister"] == OK
    assert ctypes_report["after"] == ["c"]


def test_ctypes_errors_reach_caller(ctypes_report):
    assert ctypes_report["not_callable"] == ERR_NOT_CALLABLE
    assert ctypes_report["not_callable_id"] == 0
    assert "not callable" in ctypes_report["not_callable_error"]
