"""Exceptions raised by ectls.

Each one derives from Error and from the built-in exception that fits the
failure, so callers may catch either.
"""

from __future__ import annotations

from typing import Optional, Type, TypeVar


class Error(Exception):
    """Base class of every exception ectls raises."""


class MessageError(Error, ValueError):
    """An envelope, routing domain or context value that C cannot store."""


class PluginError(Error):
    """A plugin failed to load; the provider list is unchanged.

    :ivar path: the plugin path as given.
    :ivar symbol: the provider or init symbol involved, or None.
    """

    path: str
    symbol: Optional[str]


class PluginNotFoundError(PluginError, FileNotFoundError):
    """The plugin path does not exist."""


class PluginIsADirectoryError(PluginError, IsADirectoryError):
    """The plugin path is a directory."""


class PluginPermissionError(PluginError, PermissionError):
    """The plugin, or its directory, may be replaced by other users."""


class PluginLoadError(PluginError, OSError):
    """The dynamic linker rejected the file (not a shared object, wrong
    architecture, unresolved symbols)."""


class PluginSymbolError(PluginError, LookupError):
    """The provider or init symbol is not exported by the plugin."""


class PluginInitError(PluginError, RuntimeError):
    """The plugin's init function returned non-zero."""


class PluginAlreadyLoadedError(PluginError, ValueError):
    """The same file was already loaded with the same entry point."""


_E = TypeVar("_E", bound=PluginError)


def plugin_error(cls: Type[_E], message: str, path: str, symbol: Optional[str]) -> _E:
    """Build a plugin exception; OSError subclasses take one argument only,
    since OSError reads (errno, strerror, filename) from several."""
    error = cls(message)
    error.path = path
    error.symbol = symbol
    return error
