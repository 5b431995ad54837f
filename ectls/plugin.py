"""Loading C provider plugins into the shared list."""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

from ectls._binding import ffi, lib
from ectls.errors import (
    PluginAlreadyLoadedError,
    PluginError,
    PluginInitError,
    PluginIsADirectoryError,
    PluginLoadError,
    PluginNotFoundError,
    PluginPermissionError,
    PluginSymbolError,
    plugin_error,
)

__all__ = ["DEFAULT_INIT", "DEFAULT_SYMBOL", "Plugin", "load_plugin"]

DEFAULT_INIT = "ectls_plugin_init"
"""Init function the loader calls when given neither symbol nor init."""
DEFAULT_SYMBOL = "use_outbound_tls"
"""Provider the loader registers when the plugin has no DEFAULT_INIT."""

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ERROR_BUFFER_SIZE = 1024

_STATUS_ERRORS: Dict[int, Type[PluginError]] = {
    lib.ECTLS_PLUGIN_ERR_OPEN: PluginLoadError,
    lib.ECTLS_PLUGIN_ERR_SYMBOL: PluginSymbolError,
    lib.ECTLS_PLUGIN_ERR_INIT: PluginInitError,
    lib.ECTLS_PLUGIN_ERR_LOADED: PluginAlreadyLoadedError,
}

StrPath = Union[str, "os.PathLike[str]"]


def get_library() -> str:
    """Return the path of libectls.so, for C code to link against."""
    return os.path.join(os.path.dirname(os.path.abspath(__file__)), "libectls.so")


@dataclass(frozen=True)
class Plugin:
    """A loaded plugin.  Plugins stay loaded for the life of the process."""

    path: str
    symbol: Optional[str] = None
    """The provider registered by name, if one was given."""
    init: Optional[str] = None
    """The init function called by name, if one was given."""
    first: bool = False


def _check_identifier(value: Optional[str], what: str) -> None:
    if value is not None and not _IDENTIFIER.match(value):
        raise ValueError(f"{what} must be a C identifier, not {value!r}")


def _check_file(path: str, symbol: Optional[str], allow_writable: bool) -> None:
    """Reject what the dynamic linker would load unsafely or explain badly."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise plugin_error(
            PluginNotFoundError, f"plugin [{path}] does not exist", path, symbol
        ) from None
    if stat.S_ISDIR(info.st_mode):
        raise plugin_error(
            PluginIsADirectoryError,
            f"plugin [{path}] is a directory; give the path of a .so file",
            path,
            symbol,
        )
    if allow_writable:
        return
    problem = _writable_by_others(path, info)
    if problem is not None:
        raise plugin_error(
            PluginPermissionError,
            f"{problem}, so others could replace the code this process runs; "
            "fix the permissions (chmod go-w), or opt in with "
            "allow_writable=True (ectls --allow-writable-plugins)",
            path,
            symbol,
        )


def _writable_by_others(path: str, info: os.stat_result) -> Optional[str]:
    """Describe the first of the plugin and the directories on its path
    that group or others may write, or return None.

    Both the path as given and the path with symlinks resolved are
    checked: a symlink, or a directory passed through with "..", in a
    directory that others may write could be swapped just as the file
    could.  A sticky directory such as /tmp lets others add files but
    not replace anyone else's, so it passes.
    """
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"plugin [{path}] is writable by group or others"
    # Not os.path.abspath(), which would resolve ".." away.
    given = os.path.dirname(os.path.join(os.getcwd(), path))
    for directory in _directories_on(given) + _directories_on(
        os.path.dirname(os.path.realpath(path))
    ):
        mode = os.stat(directory).st_mode
        if mode & (stat.S_IWGRP | stat.S_IWOTH) and not mode & stat.S_ISVTX:
            return (
                f"directory [{directory}] on the path of plugin [{path}] is "
                "writable by group or others"
            )
    return None


def _directories_on(directory: str) -> List[str]:
    """Return directory and each directory above it, as written (".."
    components are kept, not resolved)."""
    parts = [part for part in directory.split("/") if part]
    return ["/" + "/".join(parts[:end]) for end in range(len(parts), -1, -1)]


def _elf_identity(path: str) -> Optional[Tuple[int, int]]:
    """Return (ELF class, machine) of an ELF file, or None."""
    try:
        with open(path, "rb") as file:
            header = file.read(20)
    except OSError:
        return None
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    byte_order: Literal["little", "big"] = "little" if header[5] == 1 else "big"
    return header[4], int.from_bytes(header[18:20], byte_order)


def _elf_mismatch(path: str) -> str:
    """Explain an ELF class or machine mismatch, which glibc reports as
    "No such file or directory"; return "" when there is none."""
    plugin = _elf_identity(path)
    process = _elf_identity(get_library())
    if plugin is None or process is None or plugin == process:
        return ""
    return (
        f" (the plugin is ELF class {plugin[0]} for machine {plugin[1]}, but this "
        f"process is ELF class {process[0]} for machine {process[1]}; rebuild "
        "the plugin for this machine)"
    )


def load_plugin(
    path: StrPath,
    *,
    symbol: Optional[str] = None,
    init: Optional[str] = None,
    first: bool = False,
    allow_writable: bool = False,
) -> Plugin:
    """Load a C plugin and register what it provides.

    - ``symbol=NAME``: register provider NAME, at the head of the list
      when ``first`` is true, else at the tail; no init function runs.
    - ``init=NAME``: call ``int NAME(void)``, which registers providers
      itself and returns 0 on success.
    - neither: call ``ectls_plugin_init`` if the plugin exports it, else
      register the provider ``use_outbound_tls`` as with ``symbol``.

    The plugin needs not link against libectls.  Loading the same file
    (under any path) with the same entry point twice raises
    PluginAlreadyLoadedError.  A plugin file or directory writable by
    group or others raises PluginPermissionError unless
    ``allow_writable`` is true.  Every failure leaves the list unchanged
    and raises a PluginError subclass whose message names the path, the
    symbol and the dynamic linker's text.
    """
    text_path = os.fspath(path)
    if not isinstance(text_path, str):
        raise TypeError(f"path must be a str or os.PathLike[str], not {path!r}")
    if symbol is not None and init is not None:
        raise ValueError(
            "give symbol (a provider to register) or init (a function that "
            "registers providers), not both"
        )
    _check_identifier(symbol, "symbol")
    _check_identifier(init, "init")
    if not text_path:
        raise ValueError("plugin path is empty")
    _check_file(text_path, symbol or init, allow_writable)

    # dlopen() searches its library path for a name without '/'; this
    # function takes a file path, as the checks above did.
    linker_path = text_path if "/" in text_path else "./" + text_path
    error_buffer = ffi.new("char[]", _ERROR_BUFFER_SIZE)
    status = lib.ectls_load_plugin(
        os.fsencode(linker_path),
        symbol.encode() if symbol is not None else ffi.NULL,
        init.encode() if init is not None else ffi.NULL,
        int(first),
        error_buffer,
        _ERROR_BUFFER_SIZE,
    )
    if status == lib.ECTLS_PLUGIN_OK:
        return Plugin(text_path, symbol, init, first)

    message = ffi.string(error_buffer).decode("utf-8", "replace")
    if status == lib.ECTLS_PLUGIN_ERR_OPEN:
        message += _elf_mismatch(text_path)
    if status == lib.ECTLS_PLUGIN_ERR_NOMEM:
        raise MemoryError(message)
    if status == lib.ECTLS_PLUGIN_ERR_ARGUMENT:
        raise ValueError(message)
    raise plugin_error(
        _STATUS_ERRORS.get(status, PluginError), message, text_path, symbol or init
    )
