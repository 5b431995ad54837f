"""Compile libectls.so; the one recipe that setup.py and build.sh share."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ["dispatch.c", "message.c", "plugin.c", "log.c"]
LIBRARY = "libectls.so"

# Only functions marked ECTLS_EXPORT leave the library; nodelete keeps it
# mapped for the life of the process, as plugins and reader records
# point into it.
CFLAGS = [
    "-std=c11",
    "-O2",
    "-g",
    "-fPIC",
    "-fvisibility=hidden",
    "-Wall",
    "-Wextra",
    "-Wpedantic",
]
LDFLAGS = ["-shared", "-Wl,-z,nodelete", f"-Wl,-soname,{LIBRARY}"]
LIBS = ["-ldl", "-lpthread"]


def build_library(output_dir: Path, extra_cflags: list[str] | None = None) -> Path:
    """Compile and link libectls.so into output_dir; return its path."""
    compiler = shlex.split(os.environ.get("CC", "cc"))
    output_dir.mkdir(parents=True, exist_ok=True)
    target = output_dir / LIBRARY
    command = [
        *compiler,
        *CFLAGS,
        *(extra_cflags or []),
        f"-I{ROOT / 'include'}",
        *(str(ROOT / "src" / name) for name in SOURCES),
        *LDFLAGS,
        "-o",
        str(target),
        *LIBS,
    ]
    subprocess.run(command, check=True)
    return target


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(f"usage: {sys.argv[0]} OUTPUT_DIR")
    print(build_library(Path(sys.argv[1])))
