"""Compile the public headers alone, together and in plugin-like code.

Each case is one translation unit, compiled as C99, C11 and C++17 with
-Wall -Wextra -Wpedantic -Werror, so a header that depends on another
header, breaks in one include order, or is not valid C++ fails here.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

INCLUDE_DIR = Path(__file__).resolve().parent.parent / "include"

HOOK = '#include "hooks/core/use_outbound_tls.h"\n'
MESSAGE = '#include "ec_message.h"\n'
ECTLS = '#include "ectls.h"\n'

WARNINGS = ["-Wall", "-Wextra", "-Wpedantic", "-Werror"]
C_WARNINGS = ["-Wstrict-prototypes"]

# A plugin as Momentum modules write one: providers declared with the
# function type, pointed at through it, and a static use_outbound_tls.
PLUGIN = """
#include <stddef.h>

int plugin_init(void);

static ec_hook_core_use_outbound_tls_func_t my_hook;

static int my_hook(void *closure, email_message *message) {
  (void)closure;
  (void)message;
  return EC_USE_TLS_IFAVAILABLE;
}

static int use_outbound_tls(void *closure, email_message *message) {
  (void)closure;
  return message == NULL ? EC_USE_TLS_NO : EC_USE_TLS_REQUIRED;
}

int plugin_init(void) {
  ec_hook_core_use_outbound_tls_func_t *p = my_hook;
  register_core_use_outbound_tls_hook_first(p, NULL);
  register_core_use_outbound_tls_hook_last(use_outbound_tls, NULL);
  return has_core_use_outbound_tls_hook() ? 0 : -1;
}
"""

# A provider that reads the message through ec_message.h.
MESSAGE_PROVIDER = """
#include <stddef.h>

int by_domain(void *closure, email_message *message);

int by_domain(void *closure, email_message *message) {
  char domain[ECTLS_DOMAIN_BUFLEN];
  ec_message *same = message;

  (void)closure;
  if (!ec_message_get_routing_domain(same, domain, ECTLS_DOMAIN_BUFLEN))
    return EC_USE_TLS_NO;
  if (ec_message_context_exists(message, ECMESS_CTX_MESS, domain))
    return EC_USE_TLS_REQUIRED;
  return ec_message_get_rcptto(message)[0] != '\\0' ? EC_USE_TLS_IFAVAILABLE
                                                    : EC_USE_TLS_NO;
}
"""

# A tool that uses what ectls.h adds.
ECTLS_TOOL = """
#include <stddef.h>

int explain_first_step(email_message *message, char *errbuf, int errlen);

int explain_first_step(email_message *message, char *errbuf, int errlen) {
  ectls_trace *trace = ectls_explain_core_use_outbound_tls_hook(message);
  const char *symbol = NULL, *object = NULL;
  int decision = EC_USE_TLS_REQUIRED;

  if (ectls_load_plugin("plugin.so", NULL, ECTLS_PLUGIN_DEFAULT_INIT, 0,
                        errbuf, errlen) != ECTLS_PLUGIN_OK)
    return -1;
  if (trace != NULL && trace->count > 0) {
    ectls_describe_hook(trace->steps[0].hook, &symbol, &object);
    decision = trace->steps[0].decision;
  }
  ectls_trace_free(trace);
  return decision;
}
"""

CASES = {
    "hook_alone": HOOK,
    "message_alone": MESSAGE,
    "ectls_alone": ECTLS,
    "hook_then_message": HOOK + MESSAGE,
    "message_then_hook": MESSAGE + HOOK,
    "ectls_then_others": ECTLS + HOOK + MESSAGE,
    "others_then_ectls": MESSAGE + HOOK + ECTLS,
    "each_twice": HOOK + MESSAGE + ECTLS + ECTLS + MESSAGE + HOOK,
    "plugin_with_hook": HOOK + PLUGIN,
    "plugin_with_ectls": ECTLS + PLUGIN,
    "message_provider": MESSAGE + HOOK + MESSAGE_PROVIDER,
    "message_provider_reversed": HOOK + MESSAGE + MESSAGE_PROVIDER,
    "ectls_tool": ECTLS + ECTLS_TOOL,
}

LANGUAGES = {
    "c99": ("c", "-std=c99"),
    "c11": ("c", "-std=c11"),
    "cxx17": ("c++", "-std=c++17"),
}


def find_compiler(language: str) -> list[str] | None:
    """Return the compiler command for "c" or "c++", or None."""
    variable, names = ("CC", ["cc", "gcc", "clang"])
    if language == "c++":
        variable, names = ("CXX", ["c++", "g++", "clang++"])
    if os.environ.get(variable):
        return shlex.split(os.environ[variable])
    for name in names:
        path = shutil.which(name)
        if path is not None:
            return [path]
    return None


def compile_unit(tmp_path: Path, source: str, language_id: str) -> Path:
    """Compile source to an object file and return its path."""
    language, standard = LANGUAGES[language_id]
    compiler = find_compiler(language)
    if compiler is None:
        pytest.skip(f"no {language} compiler found (set CC or CXX)")
    suffix = ".c" if language == "c" else ".cpp"
    source_path = tmp_path / f"unit{suffix}"
    object_path = tmp_path / "unit.o"
    source_path.write_text(source)
    command = [
        *compiler,
        "-x",
        language,
        standard,
        *WARNINGS,
        *(C_WARNINGS if language == "c" else []),
        f"-I{INCLUDE_DIR}",
        "-c",
        str(source_path),
        "-o",
        str(object_path),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, (
        f"{shlex.join(command)} failed:\n{result.stderr}\n--- source ---\n{source}"
    )
    return object_path


@pytest.mark.parametrize("language_id", list(LANGUAGES))
@pytest.mark.parametrize("case", list(CASES))
def test_header_compiles(tmp_path: Path, case: str, language_id: str) -> None:
    compile_unit(tmp_path, CASES[case], language_id)


def test_cxx_references_unmangled_names(tmp_path: Path) -> None:
    """A C++ plugin must call the C functions, not C++-mangled ones."""
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found; it lists the object file's symbols")
    object_path = compile_unit(tmp_path, HOOK + PLUGIN, "cxx17")
    result = subprocess.run(
        [nm, "-u", str(object_path)], capture_output=True, text=True, check=True
    )
    undefined = result.stdout.split()
    for name in (
        "register_core_use_outbound_tls_hook_first",
        "register_core_use_outbound_tls_hook_last",
        "has_core_use_outbound_tls_hook",
    ):
        assert name in undefined, result.stdout
