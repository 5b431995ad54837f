"""Shared fixtures: a clean provider list per test, and a C compiler that
builds plugins against the installed ectls headers."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
from pathlib import Path
from typing import Callable, Iterator, Optional, Sequence

import pytest

import ectls

REPOSITORY = Path(__file__).resolve().parent.parent
PLUGIN_SOURCES = REPOSITORY / "tests" / "plugins"
EXAMPLES = REPOSITORY / "examples"

CompilePlugin = Callable[..., Path]


@pytest.fixture(autouse=True)
def empty_list() -> Iterator[None]:
    """Start and end every test with an empty provider list."""
    ectls.clear()
    yield
    ectls.clear()


def _compiler() -> Optional[str]:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


@pytest.fixture(scope="session")
def c_compiler() -> str:
    compiler = _compiler()
    if compiler is None:
        pytest.skip("no C compiler (cc) found")
    return compiler


BuildPlugin = Callable[..., Path]


@pytest.fixture(scope="session")
def build_plugin(c_compiler: str) -> BuildPlugin:
    """Return a function that compiles one .c file into a plugin .so.

    The plugin is built the way a Momentum module is: against the headers
    of the installed ectls, not linked to libectls.  A compiler error
    fails the test with the compiler's output.
    """

    def build(source: Path, output: Path, flags: Sequence[str] = ()) -> Path:
        result = subprocess.run(
            [
                c_compiler,
                "-std=c99",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-fPIC",
                "-shared",
                f"-I{ectls.get_include()}",
                *flags,
                str(source),
                "-o",
                str(output),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode != 0:
            pytest.fail(f"compiling {source} failed:\n{result.stderr}")
        return output

    return build


@pytest.fixture
def compile_plugin(build_plugin: BuildPlugin, tmp_path: Path) -> CompilePlugin:
    """Return a function that compiles C source into a new plugin .so.

    Each call makes a new file, so tests never share a loaded plugin
    (plugins stay loaded).  ``source`` is C text, or a Path to a .c file.
    """
    counter = itertools.count()

    def compile_(
        source: str | Path, name: str = "plugin", flags: Sequence[str] = ()
    ) -> Path:
        if isinstance(source, Path):
            source_path = source
        else:
            source_path = tmp_path / f"{name}_{next(counter)}.c"
            source_path.write_text(source)
        output = tmp_path / f"{source_path.stem}_{next(counter)}.so"
        return build_plugin(source_path, output, flags)

    return compile_
