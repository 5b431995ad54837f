"""libectls.so exports exactly the functions declared in include/, and
the Python binding uses that one library."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from pycparser import c_ast, c_parser

import ectls


# cpp output of the installed headers, with <stddef.h> shadowed the way
# the cffi build does it.
def declared_functions(c_compiler: str, tmp_path: Path) -> set:
    (tmp_path / "stddef.h").write_text("")
    text = subprocess.run(
        [
            c_compiler,
            "-E",
            "-P",
            "-std=c99",
            f"-I{tmp_path}",
            f"-I{ectls.get_include()}",
            os.path.join(ectls.get_include(), "ectls.h"),
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    tree = c_parser.CParser().parse(text)
    return {
        node.name
        for node in tree.ext
        if isinstance(node, c_ast.Decl) and isinstance(node.type, c_ast.FuncDecl)
    }


def exported_functions(library: str) -> set:
    output = subprocess.run(
        ["nm", "-D", "--defined-only", library],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {line.split()[2] for line in output.splitlines() if line.split()[1] == "T"}


def test_exports_match_headers(c_compiler, tmp_path):
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not found")
    declared = declared_functions(c_compiler, tmp_path)
    exported = exported_functions(ectls.get_library())

    assert "call_core_use_outbound_tls_hook" in declared
    assert exported - declared == set(), "exported but not declared in include/"
    assert declared - exported == set(), "declared in include/ but not exported"


def test_exports_nothing_but_functions():
    if shutil.which("nm") is None:
        pytest.skip("nm (binutils) not found")
    output = subprocess.run(
        ["nm", "-D", "--defined-only", ectls.get_library()],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    kinds = {line.split()[1] for line in output.splitlines()}
    assert kinds == {"T"}


def test_binding_uses_packaged_library():
    ectls.has_hook()  # the module is loaded by now
    with open("/proc/self/maps") as maps:
        loaded = {
            line.split()[-1] for line in maps if line.rstrip().endswith("/libectls.so")
        }
    assert loaded == {os.path.realpath(ectls.get_library())}


def test_package_ships_headers():
    include = Path(ectls.get_include())
    for name in ("ectls.h", "ec_message.h", "hooks/core/use_outbound_tls.h"):
        assert (include / name).is_file(), name
    source = Path(__file__).resolve().parent.parent / "include"
    for header in source.rglob("*.h"):
        relative = header.relative_to(source)
        assert (include / relative).read_text() == header.read_text(), relative
