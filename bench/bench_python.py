"""Cost of ectls calls from Python, beside the anchors, in one run.

Rows (each the best of several interleaved rounds, so that all rows meet
the same machine noise and their ratios hold):

  bare cffi call      an out-of-line API-mode cffi call to a C function
                      that takes one pointer and does nothing
  ctypes round trip   a ctypes call to a C function that calls a ctypes
                      CFUNCTYPE Python callback
  pluggy firstresult  a pluggy hook with firstresult=True and one
                      implementation (skipped when pluggy is missing)
  Python loop         a plain loop over a list of one callable
  ectls, 1 C hook     ectls.call(message), one C provider
  ectls, 1 Python     ectls.call(message), one Python provider that
                      receives the caller's Message

Run from outside the source tree (so the installed ectls is imported):
    python bench/bench_python.py [--scale 1.0]
It needs a C compiler for the anchors and the C provider.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import os
import shutil
import subprocess
import sys
import tempfile
import timeit
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import cffi

import ectls
from ectls import UseTLS
from ectls._binding import lib

ROUNDS = 7

NOOP_SOURCE = "void bench_noop(void *pointer) { (void)pointer; }\n"

CALLBACK_SOURCE = """
int bench_call_back(int (*callback)(void *), void *argument)
{ return callback(argument); }
"""

C_PROVIDER_SOURCE = r"""
#include <hooks/core/use_outbound_tls.h>

int bench_no(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_NO; }
"""


def compiler() -> List[str]:
    return (os.environ.get("CC") or shutil.which("cc") or "cc").split()


def build_cffi_noop(directory: Path) -> Callable[..., object]:
    """Build an API-mode module with one no-op function; return it."""
    builder = cffi.FFI()
    builder.cdef("void bench_noop(void *pointer);")
    builder.set_source("_bench_noop", NOOP_SOURCE)
    builder.compile(tmpdir=str(directory), verbose=False)
    sys.path.insert(0, str(directory))
    import _bench_noop  # type: ignore[import-not-found]

    return _bench_noop.lib.bench_noop  # type: ignore[no-any-return]


def build_shared(directory: Path, name: str, source: str, *flags: str) -> Path:
    source_path = directory / f"{name}.c"
    source_path.write_text(source)
    output = directory / f"{name}.so"
    subprocess.run(
        [
            *compiler(),
            "-O2",
            "-fPIC",
            "-shared",
            *flags,
            str(source_path),
            "-o",
            str(output),
        ],
        check=True,
    )
    return output


def resident_kib() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def make_rows(
    directory: Path,
) -> Dict[str, Tuple[Callable[[], object], Optional[Callable[[], None]]]]:
    """Return row name -> (statement, set-up run before each round)."""
    message = ectls.Message("sender@example.com", "user@bank.example")
    pointer = message._c_message

    noop = build_cffi_noop(directory)

    callback_library = ctypes.CDLL(
        str(build_shared(directory, "callback", CALLBACK_SOURCE))
    )
    callback_type = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p)
    ctypes_callback = callback_type(lambda argument: 0)
    call_back = callback_library.bench_call_back
    call_back.argtypes = [callback_type, ctypes.c_void_p]
    call_back.restype = ctypes.c_int

    no = UseTLS.NO

    def python_provider(received: object) -> UseTLS:
        return no

    providers = [python_provider]

    def python_loop() -> object:
        for provider in providers:
            result = provider(message)
            if result:
                return result
        return no

    plugin = build_shared(
        directory, "provider", C_PROVIDER_SOURCE, f"-I{ectls.get_include()}"
    )
    call = ectls.call

    # Load the C provider once and save that list: a (file, symbol) pair
    # loads only once, and restoring is how a round gets it back.
    ectls.clear()
    ectls.load_plugin(plugin, symbol="bench_no")
    c_list = lib.ectls_save_core_use_outbound_tls_hook()
    ectls.clear()

    def with_c_provider() -> None:
        lib.ectls_restore_core_use_outbound_tls_hook(c_list)

    def with_python_provider() -> None:
        ectls.clear()
        ectls.register_last(python_provider)

    rows: Dict[str, Tuple[Callable[[], object], Optional[Callable[[], None]]]] = {
        "bare cffi call (anchor)": (lambda: noop(pointer), None),
        "ctypes round trip (anchor)": (lambda: call_back(ctypes_callback, None), None),
        "Python loop, 1 callable (anchor)": (python_loop, None),
        "ectls.call, 1 C provider": (lambda: call(message), with_c_provider),
        "ectls.call, 1 Python provider": (lambda: call(message), with_python_provider),
    }

    try:
        import pluggy
    except ImportError:
        print("pluggy is not installed: its row is skipped (pip install pluggy)")
    else:
        specification = pluggy.HookspecMarker("bench")
        implementation = pluggy.HookimplMarker("bench")

        class Specification:
            @specification(firstresult=True)
            def use_outbound_tls(self, message: object) -> object:
                """Return the decision."""

        class Implementation:
            @implementation
            def use_outbound_tls(self, message: object) -> object:
                return no

        manager = pluggy.PluginManager("bench")
        manager.add_hookspecs(Specification)
        manager.register(Implementation())
        hook = manager.hook.use_outbound_tls
        rows["pluggy firstresult, 1 impl (anchor)"] = (
            lambda: hook(message=message),
            None,
        )
    return rows


def measure(
    rows: Dict[str, Tuple[Callable[[], object], Optional[Callable[[], None]]]],
    number: int,
) -> Dict[str, float]:
    """Return the best ns per call of each row over ROUNDS interleaved rounds."""
    best = {name: float("inf") for name in rows}
    for _ in range(ROUNDS):
        for name, (statement, setup) in rows.items():
            if setup is not None:
                setup()
            timer = timeit.Timer(statement)
            timer.timeit(number // 10 + 1)
            seconds = timer.timeit(number)
            best[name] = min(best[name], seconds * 1e9 / number)
    ectls.clear()
    return best


def memory_cycles(cycles: int) -> Tuple[int, int, float]:
    """Register and unregister a Python provider `cycles` times."""

    def provider(message: object) -> UseTLS:
        return UseTLS.NO

    for _ in range(20000):  # reach the steady state first
        ectls.register_last(provider).unregister()
    gc.collect()
    before = resident_kib()
    start = timeit.default_timer()
    for _ in range(cycles):
        ectls.register_last(provider).unregister()
    elapsed = timeit.default_timer() - start
    gc.collect()
    return before, resident_kib(), elapsed * 1e9 / cycles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="multiply iteration counts (CI uses 0.001)",
    )
    args = parser.parse_args()
    if args.scale <= 0:
        parser.error("--scale must be positive")
    if (
        Path(ectls.__file__).resolve().parent
        == Path(__file__).resolve().parent.parent / "ectls"
    ):
        parser.error("run from outside the source tree so the installed ectls is used")

    number = max(1, int(200_000 * args.scale))
    with tempfile.TemporaryDirectory() as directory:
        os.chmod(directory, 0o700)
        rows = make_rows(Path(directory))
        best = measure(rows, number)

    bare = best["bare cffi call (anchor)"]
    round_trip = best["ctypes round trip (anchor)"]
    version = sys.version.split()[0]
    print(
        f"Python {version}, ns per call "
        f"(best of {ROUNDS} interleaved rounds of {number})"
    )
    for name, ns in best.items():
        print(
            f"  {name:38} {ns:8.1f} ns  {ns / bare:5.2f}x bare cffi"
            f"  {ns / round_trip:5.2f}x ctypes"
        )
    python_ns = best["ectls.call, 1 Python provider"]
    ratios = [
        (
            "ectls 1 C provider / bare cffi call",
            best["ectls.call, 1 C provider"] / bare,
            1.6,
        ),
        ("ectls 1 Python provider / ctypes trip", python_ns / round_trip, 1.5),
    ]
    pluggy_ns = best.get("pluggy firstresult, 1 impl (anchor)")
    if pluggy_ns is not None:
        ratios.append(("ectls 1 Python provider / pluggy", python_ns / pluggy_ns, 0.4))
    print("targets")
    for label, ratio, target in ratios:
        print(f"  {label:40} {ratio:5.2f}  (target <= {target})")

    cycles = max(1, int(1_000_000 * args.scale))
    before, after, per_cycle = memory_cycles(cycles)
    print("memory")
    print(
        f"  {cycles} Python register/unregister cycles: RSS {before} KiB before, "
        f"{after} KiB after ({per_cycle:.0f} ns per cycle)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
