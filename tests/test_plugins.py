"""load_plugin: entry points, and every way a load can fail."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

import pytest

import ectls
from ectls import UseTLS
from ectls._binding import lib

HEADER = Path(__file__).resolve().parent.parent / "include" / "ectls.h"

# A provider under the default name, plus named ones.  Not linked against
# libectls: it is built the way a Momentum module is.
PROVIDERS = r"""
#include <hooks/core/use_outbound_tls.h>

int use_outbound_tls(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_REQUIRED; }

int decide_ifavailable(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_IFAVAILABLE; }
"""

# Registers two static providers from the default init function; one is
# declared with the function typedef.
SELF_REGISTERING = r"""
#include <hooks/core/use_outbound_tls.h>

static ec_hook_core_use_outbound_tls_func_t head_policy;

static int head_policy(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_NO; }

static int use_outbound_tls(void *closure, email_message *message)
{ (void)message; return *(const int *)closure; }

static const int decision = EC_USE_TLS_IFAVAILABLE;

int ectls_plugin_init(void)
{
    ec_hook_core_use_outbound_tls_func_t *hook = use_outbound_tls;
    register_core_use_outbound_tls_hook_last(hook, (void *)&decision);
    register_core_use_outbound_tls_hook_first(head_policy, NULL);
    return 0;
}

int other_init(void)
{
    register_core_use_outbound_tls_hook_last(use_outbound_tls, (void *)&decision);
    return 0;
}
"""

# An init function that registers one provider and then fails.
FAILING_INIT = r"""
#include <hooks/core/use_outbound_tls.h>

static int stray(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_REQUIRED; }

int ectls_plugin_init(void)
{
    register_core_use_outbound_tls_hook_first(stray, NULL);
    return -5;
}
"""

NO_ENTRY_POINT = r"""
int unrelated(void) { return 0; }
"""


def step_names():
    return [step.provider.name for step in ectls.explain(None).steps]


def test_default_symbol_registered_last(compile_plugin):
    ectls.register_last(lambda m: UseTLS.NO)
    path = compile_plugin(PROVIDERS, "providers")

    plugin = ectls.load_plugin(path)

    assert plugin.path == str(path)
    assert ectls.call(None) is UseTLS.REQUIRED
    assert step_names()[-1] == "use_outbound_tls"
    assert ectls.explain(None).decided_by.plugin == str(path)


def test_default_init_registers_static_providers(compile_plugin):
    path = compile_plugin(SELF_REGISTERING, "self_registering")

    ectls.load_plugin(path)

    explanation = ectls.explain(None)
    assert explanation.decision is UseTLS.IFAVAILABLE
    assert len(explanation.steps) == 2
    # Static functions have no exported name; the plugin path still shows.
    assert all(step.provider.plugin == str(path) for step in explanation.steps)


def test_default_init_preferred_over_default_symbol(compile_plugin):
    source = PROVIDERS + "\nint ectls_plugin_init(void) { return 0; }\n"
    path = compile_plugin(source, "both_defaults")
    ectls.load_plugin(path)
    assert ectls.has_hook() is False


def test_named_init(compile_plugin):
    path = compile_plugin(SELF_REGISTERING, "self_registering")
    ectls.load_plugin(path, init="other_init")
    assert ectls.call(None) is UseTLS.IFAVAILABLE
    assert len(step_names()) == 1


@pytest.mark.parametrize("first", [True, False], ids=["first", "last"])
def test_symbol_first_or_last(compile_plugin, first):
    ectls.register_last(lambda m: UseTLS.REQUIRED)
    path = compile_plugin(PROVIDERS, "providers")

    ectls.load_plugin(path, symbol="decide_ifavailable", first=first)

    expected = UseTLS.IFAVAILABLE if first else UseTLS.REQUIRED
    assert ectls.call(None) is expected
    assert ("decide_ifavailable" == step_names()[0]) is first


def test_plugin_not_linked_against_libectls(compile_plugin):
    path = compile_plugin(SELF_REGISTERING, "self_registering")
    needed = path.read_bytes()
    assert b"libectls.so" not in needed
    ectls.load_plugin(path)
    assert ectls.has_hook()


def test_default_names_match_header():
    header = HEADER.read_text()
    init = re.search(r'#define ECTLS_PLUGIN_DEFAULT_INIT "(\w+)"', header)
    symbol = re.search(r'#define ECTLS_PLUGIN_DEFAULT_SYMBOL "(\w+)"', header)
    assert init is not None and init.group(1) == ectls.DEFAULT_INIT
    assert symbol is not None and symbol.group(1) == ectls.DEFAULT_SYMBOL


# ---- Failures: each leaves the list unchanged --------------------------


@pytest.fixture
def sentinel():
    """One Python provider that every failed load must leave in place."""
    registration = ectls.register_last(lambda m: UseTLS.NO)
    yield registration
    assert len(step_names()) == 1


def test_missing_path(tmp_path, sentinel):
    path = tmp_path / "missing.so"
    with pytest.raises(ectls.PluginNotFoundError) as raised:
        ectls.load_plugin(path)
    assert isinstance(raised.value, FileNotFoundError)
    assert isinstance(raised.value, ectls.PluginError)
    assert str(path) in str(raised.value)
    assert raised.value.path == str(path)


def test_directory(tmp_path, sentinel):
    with pytest.raises(ectls.PluginIsADirectoryError) as raised:
        ectls.load_plugin(tmp_path)
    assert isinstance(raised.value, IsADirectoryError)
    assert str(tmp_path) in str(raised.value)


def test_text_file(tmp_path, sentinel):
    path = tmp_path / "notes.so"
    path.write_text("not a shared object\n")
    with pytest.raises(ectls.PluginLoadError) as raised:
        ectls.load_plugin(path)
    assert isinstance(raised.value, OSError)
    message = str(raised.value)
    assert str(path) in message
    assert "unable to open shared library" in message
    # The dynamic linker's own words follow.
    assert "invalid ELF header" in message or "too short" in message


@pytest.mark.parametrize(
    "offset, value, linker_text",
    [(4, 1, "wrong ELF class"), (18, 183, "machine 183")],
    ids=["elf-class-32", "machine-aarch64"],
)
def test_wrong_elf(compile_plugin, offset, value, linker_text, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    data = bytearray(path.read_bytes())
    data[offset] = value
    path.write_bytes(bytes(data))

    with pytest.raises(ectls.PluginLoadError) as raised:
        ectls.load_plugin(path)
    assert str(path) in str(raised.value)
    assert linker_text in str(raised.value)


def test_missing_symbol(compile_plugin, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    with pytest.raises(ectls.PluginSymbolError) as raised:
        ectls.load_plugin(path, symbol="no_such_provider")
    assert isinstance(raised.value, LookupError)
    assert "no_such_provider" in str(raised.value)
    assert str(path) in str(raised.value)
    assert "undefined symbol" in str(raised.value)
    assert raised.value.symbol == "no_such_provider"


def test_missing_init(compile_plugin, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    with pytest.raises(ectls.PluginSymbolError, match="no_such_init"):
        ectls.load_plugin(path, init="no_such_init")


def test_no_entry_point(compile_plugin, sentinel):
    path = compile_plugin(NO_ENTRY_POINT, "empty")
    with pytest.raises(ectls.PluginSymbolError) as raised:
        ectls.load_plugin(path)
    message = str(raised.value)
    assert ectls.DEFAULT_INIT in message
    assert ectls.DEFAULT_SYMBOL in message


def test_failing_init_unregisters_its_hooks(compile_plugin, sentinel):
    path = compile_plugin(FAILING_INIT, "failing")
    with pytest.raises(ectls.PluginInitError) as raised:
        ectls.load_plugin(path)
    assert isinstance(raised.value, RuntimeError)
    assert "returned -5" in str(raised.value)
    assert str(path) in str(raised.value)
    assert ectls.call(None) is UseTLS.NO


def test_failing_init_may_be_retried(compile_plugin, sentinel):
    path = compile_plugin(FAILING_INIT, "failing")
    for _ in range(2):
        with pytest.raises(ectls.PluginInitError):
            ectls.load_plugin(path)


def test_same_plugin_twice(compile_plugin, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    ectls.load_plugin(path, symbol="decide_ifavailable")
    with pytest.raises(ectls.PluginAlreadyLoadedError) as raised:
        ectls.load_plugin(path, symbol="decide_ifavailable")
    assert "already loaded" in str(raised.value)
    assert step_names().count("decide_ifavailable") == 1
    ectls.clear()
    ectls.register_last(lambda m: UseTLS.NO)


def test_same_plugin_through_symlink(compile_plugin, tmp_path, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    link = tmp_path / "link.so"
    link.symlink_to(path)
    ectls.load_plugin(path)
    with pytest.raises(ectls.PluginAlreadyLoadedError):
        ectls.load_plugin(link)
    assert step_names().count("use_outbound_tls") == 1
    ectls.clear()
    ectls.register_last(lambda m: UseTLS.NO)


def test_same_plugin_other_symbol_allowed(compile_plugin):
    path = compile_plugin(PROVIDERS, "providers")
    ectls.load_plugin(path, symbol="decide_ifavailable")
    ectls.load_plugin(path, symbol="use_outbound_tls")
    assert lib.ectls_count_core_use_outbound_tls_hook() == 2


def test_writable_plugin_refused(compile_plugin, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    os.chmod(path, 0o775)
    with pytest.raises(ectls.PluginPermissionError) as raised:
        ectls.load_plugin(path)
    assert isinstance(raised.value, PermissionError)
    assert "writable by group or others" in str(raised.value)
    assert "allow_writable=True" in str(raised.value)


def test_writable_directory_refused(compile_plugin, tmp_path, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    shared = tmp_path / "shared"
    shared.mkdir()
    moved = shared / "providers.so"
    shutil.move(str(path), moved)
    os.chmod(shared, 0o777)
    with pytest.raises(ectls.PluginPermissionError, match="directory"):
        ectls.load_plugin(moved)


def test_writable_plugin_allowed_on_request(compile_plugin):
    path = compile_plugin(PROVIDERS, "providers")
    os.chmod(path, 0o777)
    ectls.load_plugin(path, allow_writable=True)
    assert ectls.call(None) is UseTLS.REQUIRED


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"symbol": "a", "init": "b"}, "not both"),
        ({"symbol": "not-an-identifier"}, "C identifier"),
        ({"init": "1abc"}, "C identifier"),
    ],
    ids=["symbol-and-init", "bad-symbol", "bad-init"],
)
def test_bad_arguments(compile_plugin, kwargs, match, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    with pytest.raises(ValueError, match=match):
        ectls.load_plugin(path, **kwargs)


def test_empty_path(sentinel):
    with pytest.raises(ValueError, match="empty"):
        ectls.load_plugin("")


def test_relative_path_is_a_file_path(compile_plugin, monkeypatch):
    path = compile_plugin(PROVIDERS, "providers")
    monkeypatch.chdir(path.parent)
    ectls.load_plugin(path.name)
    assert ectls.call(None) is UseTLS.REQUIRED


def test_symbol_from_dependency_rejected(compile_plugin, sentinel):
    # The plugin uses strcmp, so dlsym() would find it in libc.
    source = PROVIDERS + (
        "\n#include <string.h>\n"
        "int same(const char *a, const char *b) { return strcmp(a, b) == 0; }\n"
    )
    path = compile_plugin(source, "uses_libc")
    with pytest.raises(ectls.PluginSymbolError) as raised:
        ectls.load_plugin(path, symbol="strcmp")
    message = str(raised.value)
    assert "strcmp" in message
    assert "libc" in message
    assert "which the plugin uses" in message


def test_init_registering_nothing_warns(compile_plugin, caplog):
    path = compile_plugin("int ectls_plugin_init(void) { return 0; }\n", "idle")
    with caplog.at_level(logging.WARNING, logger="ectls"):
        ectls.load_plugin(path)
    assert ectls.has_hook() is False
    messages = [record.getMessage() for record in caplog.records]
    assert any("registered no provider" in text for text in messages), messages


def test_writable_ancestor_directory_refused(compile_plugin, tmp_path, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    shared = tmp_path / "shared"
    nested = shared / "nested"
    nested.mkdir(parents=True)
    moved = nested / "providers.so"
    shutil.move(str(path), moved)
    os.chmod(shared, 0o777)
    with pytest.raises(ectls.PluginPermissionError) as raised:
        ectls.load_plugin(moved)
    assert f"directory [{shared}]" in str(raised.value)


def test_symlink_in_writable_directory_refused(compile_plugin, tmp_path, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    links = tmp_path / "links"
    links.mkdir()
    link = links / "provider.so"
    link.symlink_to(path)
    os.chmod(links, 0o777)
    with pytest.raises(ectls.PluginPermissionError, match="links"):
        ectls.load_plugin(link)


def test_dotdot_through_writable_directory_refused(compile_plugin, tmp_path, sentinel):
    path = compile_plugin(PROVIDERS, "providers")
    (tmp_path / "open" / "sub").mkdir(parents=True)
    os.chmod(tmp_path / "open", 0o777)
    through = tmp_path / "open" / "sub" / ".." / ".." / path.name
    with pytest.raises(ectls.PluginPermissionError, match="open"):
        ectls.load_plugin(str(through))


@pytest.mark.parametrize("symbol", ["stdout", "environ"])
def test_data_symbol_rejected(compile_plugin, symbol, sentinel):
    source = PROVIDERS + (
        "\n#include <stdio.h>\n"
        "extern char **environ;\n"
        "void *touch(void) { return stdout == NULL ? (void *)environ : NULL; }\n"
        f"void *{symbol}_here = 0;\n"
    )
    path = compile_plugin(source, "data_symbols")
    with pytest.raises(ectls.PluginSymbolError) as raised:
        ectls.load_plugin(path, symbol=f"{symbol}_here")
    assert "not a function" in str(raised.value)


def test_constructor_providers_removed_on_failed_init(compile_plugin, sentinel):
    source = r"""
#include <hooks/core/use_outbound_tls.h>

static int early(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_IFAVAILABLE; }

__attribute__((constructor)) static void at_load(void)
{ register_core_use_outbound_tls_hook_first(early, NULL); }

int ectls_plugin_init(void) { return 1; }
"""
    path = compile_plugin(source, "constructor")
    with pytest.raises(ectls.PluginInitError, match="removed the 1 provider"):
        ectls.load_plugin(path)
    assert ectls.call(None) is UseTLS.NO
