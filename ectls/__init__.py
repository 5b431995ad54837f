"""ectls: Momentum's use_outbound_tls hook for C and Python, in one list.

Providers registered here, providers in C plugins and providers that C
code registers in the same process sit in one list, kept in libectls.
A call runs them in order and the first result other than NO decides::

    import ectls

    @ectls.hook
    def require_tls_for_example_org(message):
        if message is not None and message.routing_domain == "example.org":
            return ectls.UseTLS.REQUIRED
        return ectls.UseTLS.NO

    ectls.call(ectls.Message("a@example.com", "b@example.org"))
"""

from __future__ import annotations

from pathlib import Path

from ectls.errors import (
    Error,
    MessageError,
    PluginAlreadyLoadedError,
    PluginError,
    PluginInitError,
    PluginIsADirectoryError,
    PluginLoadError,
    PluginNotFoundError,
    PluginPermissionError,
    PluginSymbolError,
)
from ectls.hooks import (
    Explanation,
    Provider,
    ProviderFunc,
    Registration,
    Step,
    UseTLS,
    call,
    clear,
    explain,
    has_hook,
    hook,
    isolated,
    register_first,
    register_last,
)
from ectls.message import Message
from ectls.plugin import DEFAULT_INIT, DEFAULT_SYMBOL, Plugin, get_library, load_plugin

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_INIT",
    "DEFAULT_SYMBOL",
    "Error",
    "Explanation",
    "Message",
    "MessageError",
    "Plugin",
    "PluginAlreadyLoadedError",
    "PluginError",
    "PluginInitError",
    "PluginIsADirectoryError",
    "PluginLoadError",
    "PluginNotFoundError",
    "PluginPermissionError",
    "PluginSymbolError",
    "Provider",
    "ProviderFunc",
    "Registration",
    "Step",
    "UseTLS",
    "call",
    "clear",
    "explain",
    "get_include",
    "get_library",
    "has_hook",
    "hook",
    "isolated",
    "load_plugin",
    "register_first",
    "register_last",
]

_PACKAGE_DIR = Path(__file__).resolve().parent


def get_include() -> str:
    """Return the directory that contains ectls.h, ec_message.h and
    hooks/core/use_outbound_tls.h, for ``cc -I``."""
    return str(_PACKAGE_DIR / "include")
