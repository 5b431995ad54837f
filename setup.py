"""Build ectls: libectls.so first, then the cffi module linked against it.

The package ships libectls.so beside the cffi module (found through an
rpath of $ORIGIN), libectls_python.so (cdef/build_embed.py) beside both,
and a copy of include/ and ectls.pc (from ectls/ectls.pc.in) for C code
built against an installed ectls.
include/ in the source tree stays the only original.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "cdef"))

from build_embed import build_embedding_library  # noqa: E402

from build import LIBRARY, build_library  # noqa: E402

LIBRARY_DIR = ROOT / "build" / "libectls"


class BuildWithLibrary(build_ext):
    """build_ext that compiles libectls.so and places it and the headers."""

    def run(self) -> None:
        library = build_library(LIBRARY_DIR)

        package_dir = Path(self.get_ext_fullpath("ectls._ectls_cffi")).parent
        package_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy2(library, package_dir / LIBRARY)
        build_embedding_library(package_dir, LIBRARY_DIR, Path(self.build_temp))
        headers = package_dir / "include"
        if headers.exists():
            shutil.rmtree(headers)
        shutil.copytree(ROOT / "include", headers)
        template = (ROOT / "ectls" / "ectls.pc.in").read_text()
        version = self.distribution.get_version()
        (package_dir / "ectls.pc").write_text(template.replace("@VERSION@", version))

        super().run()


setup(
    cffi_modules=["cdef/build_ffi.py:ffibuilder"],
    cmdclass={"build_ext": BuildWithLibrary},
)
