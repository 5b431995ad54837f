"""The shared list from Python: order, call rule, fail-closed, explain."""

from __future__ import annotations

import ctypes
import gc
import logging
import weakref

import pytest

import ectls
from ectls import Message, UseTLS
from ectls._binding import lib

# C providers that return a fixed value, one symbol per value.
FIXED_PROVIDERS = r"""
#include <hooks/core/use_outbound_tls.h>

int say_no(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_NO; }

int say_no_again(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_NO; }

int say_ifavailable(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_IFAVAILABLE; }

int say_required(void *closure, email_message *message)
{ (void)closure; (void)message; return EC_USE_TLS_REQUIRED; }

int say_seven(void *closure, email_message *message)
{ (void)closure; (void)message; return 7; }
"""

# Exported C functions that call the list, for Python to reach through
# ctypes; the empty init makes the loader expose libectls to it.
CALLS_THE_LIST = r"""
#include <stddef.h>
#include <ectls.h>

int ectls_plugin_init(void) { return 0; }

int ask_without_message(void)
{ return call_core_use_outbound_tls_hook(NULL); }

int ask_about(const char *rcptto)
{
    ec_message *message = ectls_message_new();
    int decision;

    ectls_message_set_rcptto(message, rcptto);
    ec_message_context_set(message, ECMESS_CTX_MESS, "origin", "C");
    decision = call_core_use_outbound_tls_hook(message);
    ectls_message_free(message);
    return decision;
}
"""


@pytest.fixture
def fixed(compile_plugin):
    """Return a loader of the fixed-value C providers by symbol."""
    path = compile_plugin(FIXED_PROVIDERS, "fixed")

    def load(symbol: str, first: bool = False) -> ectls.Plugin:
        return ectls.load_plugin(path, symbol=symbol, first=first)

    return load


def names(message=None):
    return [step.provider.name for step in ectls.explain(message).steps]


def test_has_hook_empty_list():
    assert ectls.has_hook() is False
    assert lib.has_core_use_outbound_tls_hook() == 0


def test_call_empty_list_is_no():
    assert ectls.call(Message("a@x.example", "b@y.example")) is UseTLS.NO
    assert ectls.call(None) is UseTLS.NO


def test_usetls_values_match_header():
    assert [int(value) for value in UseTLS] == [0, 1, 2]
    assert UseTLS.NO == lib.EC_USE_TLS_NO
    assert UseTLS.IFAVAILABLE == lib.EC_USE_TLS_IFAVAILABLE
    assert UseTLS.REQUIRED == lib.EC_USE_TLS_REQUIRED


def test_order_mixed_last_first_last_first(fixed):
    def py_last(message):
        return UseTLS.NO

    def py_first(message):
        return UseTLS.NO

    fixed("say_no", first=False)  # last:  [say_no]
    ectls.register_first(py_first)  # first: [py_first, say_no]
    ectls.register_last(py_last)  # last:  [py_first, say_no, py_last]
    fixed("say_no_again", first=True)  # first: [say_no_again, py_first, ...]

    assert names() == [
        "say_no_again",
        f"{__name__}.test_order_mixed_last_first_last_first.<locals>.py_first",
        "say_no",
        f"{__name__}.test_order_mixed_last_first_last_first.<locals>.py_last",
    ]
    assert ectls.has_hook() is True


def test_python_call_order_exact():
    calls = []
    for label, first in [("a", False), ("b", True), ("c", False), ("d", True)]:
        register = ectls.register_first if first else ectls.register_last
        register(lambda m, label=label: calls.append(label) or 0)

    assert ectls.call(None) is UseTLS.NO
    assert calls == ["d", "b", "a", "c"]


def test_call_python_no_then_c_required(fixed):
    ectls.register_first(lambda message: UseTLS.NO)
    fixed("say_required")

    explanation = ectls.explain(Message("a@x.example", "b@y.example"))

    assert ectls.call(Message()) is UseTLS.REQUIRED
    assert explanation.decision is UseTLS.REQUIRED
    assert explanation.decided_by is not None
    assert explanation.decided_by.name == "say_required"
    assert explanation.decided_by.language == "c"
    assert explanation.decided_by.plugin is not None
    assert explanation.decided_by.plugin.endswith(".so")


def test_call_python_decides_when_answers_swap(fixed):
    def python_policy(message):
        return UseTLS.REQUIRED

    ectls.register_first(python_policy)
    fixed("say_no")

    explanation = ectls.explain(Message())

    assert ectls.call(Message()) is UseTLS.REQUIRED
    assert explanation.decided_by is not None
    assert explanation.decided_by.name.endswith("python_policy")
    assert explanation.decided_by.language == "python"
    assert [step.provider.name for step in explanation.steps] == [
        explanation.decided_by.name
    ]


def test_call_first_nonzero_stops_walk():
    later = []
    ectls.register_last(lambda m: UseTLS.IFAVAILABLE)
    ectls.register_last(lambda m: later.append(m) or UseTLS.REQUIRED)

    assert ectls.call(None) is UseTLS.IFAVAILABLE
    assert later == []


def test_call_all_no_is_no():
    ran = []
    for _ in range(3):
        ectls.register_last(lambda m: ran.append(1) or 0)
    assert ectls.call(None) is UseTLS.NO
    assert len(ran) == 3


def test_provider_receives_callers_message():
    seen = []
    ectls.register_last(lambda message: seen.append(message) or 0)
    message = Message("a@x.example", "b@y.example")

    ectls.call(message)

    assert seen == [message]
    assert seen[0] is message


def test_provider_receives_none_for_null():
    seen = []
    ectls.register_last(lambda message: seen.append(message) or 0)
    ectls.call(None)
    assert seen == [None]


def test_c_caller_reaches_python_provider(compile_plugin):
    path = compile_plugin(CALLS_THE_LIST, "calls_list")
    ectls.load_plugin(path)
    library = ctypes.CDLL(str(path))
    seen = []

    def policy(message):
        seen.append(message)
        return UseTLS.IFAVAILABLE

    ectls.register_last(policy)

    assert library.ask_without_message() == UseTLS.IFAVAILABLE
    assert seen == [None]


def test_c_message_borrowed_then_released(compile_plugin):
    path = compile_plugin(CALLS_THE_LIST, "calls_list")
    ectls.load_plugin(path)
    library = ctypes.CDLL(str(path))
    library.ask_about.argtypes = [ctypes.c_char_p]
    kept = []

    def policy(message):
        kept.append(message)
        assert message.rcptto == "user@Bank.Example"
        assert message.routing_domain == "bank.example"
        assert message.context["origin"] == "C"
        return UseTLS.REQUIRED

    ectls.register_last(policy)

    assert library.ask_about(b"user@Bank.Example") == UseTLS.REQUIRED
    assert len(kept) == 1
    with pytest.raises(ectls.MessageError, match="no longer valid"):
        _ = kept[0].rcptto


def test_call_rejects_non_message():
    with pytest.raises(TypeError, match="Message or None"):
        ectls.call("not a message")
    with pytest.raises(TypeError, match="Message or None"):
        ectls.explain(42)


# ---- Fail closed ---------------------------------------------------------


@pytest.mark.parametrize(
    "result",
    [None, "REQUIRED", 1.0, 3, -1, True, False, [], object()],
    ids=[
        "none",
        "str",
        "float",
        "three",
        "minus-one",
        "true",
        "false",
        "list",
        "object",
    ],
)
def test_python_invalid_result_is_required(result, caplog):
    def bad_policy(message):
        return result

    ectls.register_last(bad_policy)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        decision = ectls.call(None)

    assert decision is UseTLS.REQUIRED
    assert len(caplog.records) == 1
    record = caplog.records[0]
    assert record.name == "ectls"
    assert "bad_policy" in record.getMessage()
    assert "not a decision" in record.getMessage()


@pytest.mark.parametrize("value", [0, 1, 2, UseTLS.NO, UseTLS.IFAVAILABLE])
def test_python_plain_int_results_accepted(value, caplog):
    ectls.register_last(lambda message: value)
    with caplog.at_level(logging.ERROR, logger="ectls"):
        assert ectls.call(None) == value
    assert caplog.records == []


def test_python_exception_is_required(caplog):
    later = []

    def broken_policy(message):
        raise RuntimeError("policy database unreachable")

    ectls.register_last(broken_policy)
    ectls.register_last(lambda message: later.append(1) or UseTLS.NO)

    with caplog.at_level(logging.ERROR, logger="ectls"):
        decision = ectls.call(Message())

    assert decision is UseTLS.REQUIRED
    assert later == []
    assert len(caplog.records) == 1
    assert "broken_policy" in caplog.records[0].getMessage()
    assert "raised" in caplog.records[0].getMessage()
    assert caplog.records[0].exc_info is not None
    assert caplog.records[0].exc_info[0] is RuntimeError


def test_c_out_of_range_is_required_and_logged(fixed, caplog):
    fixed("say_seven")
    with caplog.at_level(logging.ERROR, logger="ectls"):
        decision = ectls.call(None)

    assert decision is UseTLS.REQUIRED
    assert len(caplog.records) == 1
    text = caplog.records[0].getMessage()
    assert "say_seven" in text
    assert "returned 7" in text


def test_explain_records_raw_out_of_range(fixed):
    fixed("say_no")
    fixed("say_seven")

    explanation = ectls.explain(None)

    assert explanation.decision is UseTLS.REQUIRED
    assert [
        (step.provider.name, step.returned, step.decision) for step in explanation.steps
    ] == [
        ("say_no", 0, UseTLS.NO),
        ("say_seven", 7, UseTLS.REQUIRED),
    ]


def test_explain_runs_each_provider_once():
    runs = []
    ectls.register_last(lambda m: runs.append("a") or 0)
    ectls.register_last(lambda m: runs.append("b") or 0)

    explanation = ectls.explain(None)

    assert runs == ["a", "b"]
    assert explanation.decision is UseTLS.NO
    assert explanation.decided_by is None
    assert len(explanation.steps) == 2
    assert "every provider returned NO" in str(explanation)


def test_explain_empty_list():
    explanation = ectls.explain(Message())
    assert explanation.decision is UseTLS.NO
    assert explanation.steps == ()
    assert explanation.decided_by is None


# ---- Registration lifetime ---------------------------------------------


def test_registration_survives_dropped_references():
    ectls.register_last(lambda message: UseTLS.IFAVAILABLE)
    gc.collect()
    assert ectls.call(None) is UseTLS.IFAVAILABLE


def test_unregister_removes_only_that_registration():
    def policy(message):
        return UseTLS.REQUIRED

    first = ectls.register_last(policy)
    ectls.register_last(policy)

    first.unregister()

    assert len(ectls.explain(None).steps) == 1
    assert ectls.call(None) is UseTLS.REQUIRED


def test_unregister_twice_is_harmless():
    registration = ectls.register_last(lambda m: UseTLS.REQUIRED)
    registration.unregister()
    registration.unregister()
    assert ectls.has_hook() is False


def test_registration_context_manager():
    with ectls.register_first(lambda m: UseTLS.REQUIRED) as registration:
        assert ectls.call(None) is UseTLS.REQUIRED
        assert "registered" in repr(registration)
    assert ectls.call(None) is UseTLS.NO
    assert ectls.has_hook() is False


def test_unregistered_callback_released_after_reclaim():
    def make():
        def policy(message):
            return UseTLS.NO

        return policy

    policy = make()
    reference = weakref.ref(policy)
    registration = ectls.register_last(policy)
    del policy
    registration.unregister()
    del registration

    lib.ectls_reclaim_core_use_outbound_tls_hook()
    gc.collect()

    assert reference() is None


def test_hook_decorator_last_and_first():
    @ectls.hook
    def later(message):
        return UseTLS.NO

    @ectls.hook(first=True)
    def earlier(message):
        return UseTLS.IFAVAILABLE

    assert names() == [earlier.ectls_registration.name]
    assert ectls.call(None) is UseTLS.IFAVAILABLE
    assert isinstance(later.ectls_registration, ectls.Registration)
    later.ectls_registration.unregister()
    earlier.ectls_registration.unregister()
    assert ectls.has_hook() is False


def test_provider_registering_during_call_affects_next_call():
    added = []

    def adds_another(message):
        if not added:
            added.append(ectls.register_first(lambda m: UseTLS.REQUIRED))
        return UseTLS.NO

    ectls.register_last(adds_another)

    assert ectls.call(None) is UseTLS.NO
    assert ectls.call(None) is UseTLS.REQUIRED


def test_provider_calling_list_recursively():
    depth = []

    def recursive(message):
        if not depth:
            depth.append(1)
            inner = ectls.call(message)
            assert inner is UseTLS.IFAVAILABLE
        return UseTLS.IFAVAILABLE

    ectls.register_last(recursive)
    assert ectls.call(None) is UseTLS.IFAVAILABLE
    assert depth == [1]


def test_clear_returns_count_and_empties(fixed):
    fixed("say_required")
    ectls.register_last(lambda m: 0)
    assert ectls.clear() == 2
    assert ectls.has_hook() is False
    assert ectls.call(None) is UseTLS.NO


@pytest.mark.parametrize("value", [5, None, "name"], ids=["int", "none", "str"])
def test_register_non_callable_rejected(value):
    with pytest.raises(TypeError, match="callable"):
        ectls.register_last(value)
    with pytest.raises(TypeError, match="callable"):
        ectls.register_first(value)
    assert ectls.has_hook() is False


def test_hook_on_bound_method_registers_nothing():
    class Policy:
        def decide(self, message):
            return UseTLS.REQUIRED

    with pytest.raises(TypeError, match="register_last"):
        ectls.hook(Policy().decide)
    assert ectls.has_hook() is False


def test_explain_reports_python_faults():
    def returns_none(message):
        return None

    def raises(message):
        raise LookupError("no such domain")

    ectls.register_last(lambda m: UseTLS.NO)
    ectls.register_last(returns_none)
    explanation = ectls.explain(None)
    assert explanation.steps[0].fault is None
    assert explanation.steps[1].fault is not None
    assert "returned None (NoneType)" in explanation.steps[1].fault
    assert "[fault:" in str(explanation)

    ectls.clear()
    ectls.register_last(raises)
    fault = ectls.explain(None).steps[0].fault
    assert fault == "raised LookupError: no such domain"


def test_keyboard_interrupt_reaches_caller():
    def interrupted(message):
        raise KeyboardInterrupt

    ectls.register_last(interrupted)
    with pytest.raises(KeyboardInterrupt):
        ectls.call(None)
    with pytest.raises(KeyboardInterrupt):
        ectls.explain(None)
    ectls.clear()
    assert ectls.call(None) is UseTLS.NO
