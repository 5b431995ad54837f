"""ectls.isolated() and the ectls_isolated pytest fixture."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap
import weakref

import ectls
from ectls import UseTLS
from ectls._binding import lib

C_PROVIDERS = r"""
#include <hooks/core/use_outbound_tls.h>

int c_required(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_REQUIRED; }
"""


def provider_count() -> int:
    return int(lib.ectls_count_core_use_outbound_tls_hook())


def test_isolated_empties_then_restores_order(compile_plugin):
    def python_first(message):
        return UseTLS.NO

    ectls.register_first(python_first)
    ectls.load_plugin(compile_plugin(C_PROVIDERS), symbol="c_required")
    before = [step.provider.name for step in ectls.explain(None).steps]

    with ectls.isolated():
        assert ectls.has_hook() is False
        ectls.register_last(lambda m: UseTLS.IFAVAILABLE)
        assert ectls.call(None) is UseTLS.IFAVAILABLE

    assert [step.provider.name for step in ectls.explain(None).steps] == before
    assert ectls.call(None) is UseTLS.REQUIRED
    assert provider_count() == 2


def test_isolated_restores_after_exception():
    ectls.register_last(lambda m: UseTLS.REQUIRED)
    try:
        with ectls.isolated():
            ectls.register_last(lambda m: UseTLS.NO)
            raise KeyError("inside")
    except KeyError:
        pass
    assert provider_count() == 1
    assert ectls.call(None) is UseTLS.REQUIRED


def test_isolated_unregistered_inside_comes_back():
    registration = ectls.register_last(lambda m: UseTLS.IFAVAILABLE)
    with ectls.isolated():
        registration.unregister()
    assert ectls.call(None) is UseTLS.IFAVAILABLE


def test_isolated_keeps_saved_callbacks_alive():
    def make():
        return lambda m: UseTLS.REQUIRED

    saved_policy = make()
    reference = weakref.ref(saved_policy)
    ectls.register_last(saved_policy)
    del saved_policy

    with ectls.isolated():
        lib.ectls_reclaim_core_use_outbound_tls_hook()
        gc.collect()
        assert reference() is not None

    assert ectls.call(None) is UseTLS.REQUIRED


def test_isolated_releases_inner_callbacks():
    def make():
        return lambda m: UseTLS.NO

    with ectls.isolated():
        inner = make()
        reference = weakref.ref(inner)
        ectls.register_last(inner)
        del inner

    lib.ectls_reclaim_core_use_outbound_tls_hook()
    gc.collect()
    assert reference() is None


def test_fixture_isolates_other_project(tmp_path):
    test_file = tmp_path / "test_user_project.py"
    test_file.write_text(
        textwrap.dedent(
            """
            import ectls
            from ectls import UseTLS

            BASELINE = ectls.register_last(lambda m: UseTLS.IFAVAILABLE)

            def test_inside(ectls_isolated):
                assert not ectls.has_hook()
                ectls.register_first(lambda m: UseTLS.REQUIRED)
                assert ectls.call(None) is UseTLS.REQUIRED

            def test_after():
                assert ectls.call(None) is UseTLS.IFAVAILABLE
                assert [s.provider.name for s in ectls.explain(None).steps] == [
                    BASELINE.name
                ]
            """
        )
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "no:cacheprovider",
            "-q",
            str(test_file),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_isolated_blocks_in_threads_take_turns():
    import threading

    ectls.register_last(lambda m: UseTLS.REQUIRED)
    inside: list = []

    def worker() -> None:
        for _ in range(50):
            with ectls.isolated():
                ectls.register_last(lambda m: UseTLS.IFAVAILABLE)
                inside.append(ectls.call(None))

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    assert inside == [UseTLS.IFAVAILABLE] * 200
    assert provider_count() == 1
    assert ectls.call(None) is UseTLS.REQUIRED
