"""Model-based test of the provider list (hypothesis stateful testing).

Random sequences of register (first or last), unregister, load_plugin,
clear and value changes, on C and Python providers, are checked after
every step against a plain Python list: the decision of call() from
Python and from C, what explain() reports, and the complete order of the
list (seen by explaining a call in which every provider returns NO).

C providers come from MODEL_PLUGIN: c_provider_0 .. c_provider_3 return
values settable through ctypes.  They enter the list three ways: by
register_c() in the plugin, which may register the same function many
times with different closures; by load_plugin(path, symbol=...) of the
main plugin file; and by load_plugin() of copies of the file, which are
separate objects with their own functions and values.  A (file, symbol)
pair loads only once per process, so copies are made as needed, up to
MAX_PLUGIN_COPIES.

Size: ECTLS_MODEL_EXAMPLES (default 25) sequences of at most
ECTLS_MODEL_STEPS (default 40) steps.  The test prints how many steps
ran.
"""

from __future__ import annotations

import ctypes
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Dict, List, Optional, Tuple

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    invariant,
    rule,
    run_state_machine_as_test,
)

import ectls
from ectls import Message, UseTLS
from ectls._binding import lib

C_PROVIDERS = 4
PYTHON_PROVIDERS = 4
# Closure tags that register_c() accepts.  -1 stands for a NULL closure.
CLOSURE_TAGS = [-1, 0, 1, 2]
DEFAULT_C_VALUES = [0, 1, 2, 0]
MAX_PLUGIN_COPIES = 64

MODEL_PLUGIN = r"""
#include <stddef.h>
#include <ectls.h>

#define C_PROVIDERS 4

static int values[C_PROVIDERS] = {0, 1, 2, 0};
static int force_no;
static char closure_tags[3];

#define PROVIDER(n)                                          \
  int c_provider_##n(void *closure, email_message *message) { \
    (void)closure;                                           \
    (void)message;                                           \
    return force_no ? EC_USE_TLS_NO : values[n];             \
  }

PROVIDER(0)
PROVIDER(1)
PROVIDER(2)
PROVIDER(3)

static ec_hook_core_use_outbound_tls_func_t *const providers[C_PROVIDERS] = {
    c_provider_0, c_provider_1, c_provider_2, c_provider_3};

/* Exported so the loader makes libectls global for this plugin. */
int ectls_plugin_init(void) { return 0; }

static void *closure_for(int tag) {
  return tag < 0 ? NULL : &closure_tags[tag];
}

int register_c(int index, int first, int tag) {
  return ectls_register_core_use_outbound_tls_hook(providers[index],
                                                   closure_for(tag), first,
                                                   NULL);
}

int unregister_c(int index, int tag) {
  return ectls_unregister_core_use_outbound_tls_hook(providers[index],
                                                     closure_for(tag));
}

void set_value(int index, int value) { values[index] = value; }
void set_force_no(int on) { force_no = on; }
int call_null(void) { return call_core_use_outbound_tls_hook(NULL); }
"""

# Values a C provider may return: the three decisions and faults.
C_VALUES = st.sampled_from([0, 1, 2, 3, 7, -1])


class Raise:
    """Python provider value: raise an exception."""

    def __repr__(self) -> str:
        return "Raise()"


RAISE = Raise()
VALID_PYTHON_RESULTS = {
    id(UseTLS.NO): 0,
    id(UseTLS.IFAVAILABLE): 1,
    id(UseTLS.REQUIRED): 2,
}
PYTHON_VALUES = st.sampled_from(
    [0, 1, 2, UseTLS.NO, UseTLS.IFAVAILABLE, UseTLS.REQUIRED, None, "1", 1.0, 3, RAISE]
)


def python_decision(value: object) -> Tuple[int, bool]:
    """Return (decision, faulty) for a Python provider's result."""
    if id(value) in VALID_PYTHON_RESULTS:
        return VALID_PYTHON_RESULTS[id(value)], False
    if type(value) is int and 0 <= value <= 2:
        return value, False
    return 2, True


@dataclass
class PluginFile:
    """One loaded file of MODEL_PLUGIN: the main one or a copy."""

    path: Path
    library: ctypes.CDLL
    loaded_symbols: set = field(default_factory=set)


def fault_due(count: int) -> bool:
    """Return True when ectls logs the fault with this count."""
    return count <= 10 or (count >= 100 and str(count).rstrip("0") == "1")


@dataclass
class Entry:
    """One registration in the model list."""

    name: str
    plugin: Optional[str]
    # Faults of this registration so far: ectls logs the first 10, then
    # the 100th, 1000th and so on.
    faults: int = field(default=0, compare=False)
    # C: (file number, provider index, closure tag or None for NULL)
    c_key: Optional[Tuple[int, int, Optional[int]]] = None
    registration: Optional[ectls.Registration] = None
    python_index: Optional[int] = None


class ModelPlugins:
    """The compiled plugin, its loaded copies and the step counter."""

    def __init__(self, source_so: Path, directory: Path) -> None:
        self.source_so = source_so
        self.directory = directory
        self.files: List[PluginFile] = []
        self.steps = 0
        self.examples = 0
        main = self.add_file()
        assert main is not None
        # One pair is loaded before any sequence starts, so that every
        # sequence has a pair to try loading again.
        ectls.load_plugin(main.path, symbol=f"c_provider_{C_PROVIDERS - 1}")
        main.loaded_symbols.add(C_PROVIDERS - 1)
        ectls.clear()

    def add_file(self) -> Optional[PluginFile]:
        if len(self.files) >= MAX_PLUGIN_COPIES:
            return None
        path = self.directory / f"model_copy_{len(self.files)}.so"
        shutil.copy(self.source_so, path)
        os.chmod(path, 0o755)
        ectls.load_plugin(path)
        library = ctypes.CDLL(str(path))
        plugin_file = PluginFile(path, library)
        self.files.append(plugin_file)
        return plugin_file

    def free_file(self, index: int, used: set) -> Optional[int]:
        """Return the number of a file outside used whose c_provider_<index>
        is not loaded yet, making a copy when needed.  Returns None once
        MAX_PLUGIN_COPIES files are used up."""
        for number, plugin_file in enumerate(self.files):
            if number not in used and index not in plugin_file.loaded_symbols:
                return number
        if self.add_file() is None:
            return None
        return len(self.files) - 1


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.records: List[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def make_python_provider(index: int, machine_class: type):
    def provider(message):
        if machine_class.force_no:
            return UseTLS.NO
        value = machine_class.python_values[index]
        if value is RAISE:
            raise RuntimeError(f"py_provider_{index} was told to raise")
        return value

    provider.__qualname__ = f"py_provider_{index}"
    provider.__name__ = provider.__qualname__
    return provider


def build_machine(plugins: ModelPlugins, handler: ListHandler) -> type:
    class ProviderListMachine(RuleBasedStateMachine):
        registrations = Bundle("registrations")
        force_no = False
        python_values: ClassVar[Dict[int, object]] = {}

        def __init__(self) -> None:
            super().__init__()
            ectls.clear()
            cls = type(self)
            cls.force_no = False
            cls.python_values = {index: UseTLS.NO for index in range(PYTHON_PROVIDERS)}
            self.funcs = [make_python_provider(i, cls) for i in range(PYTHON_PROVIDERS)]
            # Strategies draw only from state made in this sequence: which
            # plugin files exist depends on earlier sequences, and
            # hypothesis must generate the same steps when it replays one.
            for plugin_file in plugins.files:
                plugin_file.library.set_force_no(0)
                for index in range(C_PROVIDERS):
                    plugin_file.library.set_value(index, DEFAULT_C_VALUES[index])
            # Values of the C providers this sequence uses, by (file, index).
            self.c_values: Dict[Tuple[int, int], int] = {
                (0, index): DEFAULT_C_VALUES[index] for index in range(C_PROVIDERS)
            }
            # Targets of set_c_value.  Every load adds four, whichever file
            # it used, so the list's length depends on this sequence only.
            self.value_targets: List[Tuple[int, int]] = sorted(self.c_values)
            self.loaded_here: List[Tuple[int, int]] = [(0, C_PROVIDERS - 1)]
            self.files_used = {0}
            self.model: List[Entry] = []
            self.message = Message("sender@example.com", "user@example.org")
            plugins.examples += 1

        def teardown(self) -> None:
            ectls.clear()

        # ---- helpers ---------------------------------------------------

        def step(self) -> None:
            plugins.steps += 1

        def insert(self, entry: Entry, first: bool) -> None:
            if first:
                self.model.insert(0, entry)
            else:
                self.model.append(entry)

        def c_entry(self, number: int, index: int, tag: Optional[int]) -> Entry:
            return Entry(
                name=f"c_provider_{index}",
                plugin=str(plugins.files[number].path),
                c_key=(number, index, tag),
            )

        def value_of(self, entry: Entry) -> Tuple[int, int, bool]:
            """Return (returned, decision, faulty) of one entry."""
            if entry.c_key is not None:
                number, index, _ = entry.c_key
                value = self.c_values[number, index]
                faulty = not 0 <= value <= 2
                return value, (2 if faulty else value), faulty
            assert entry.python_index is not None
            decision, faulty = python_decision(
                type(self).python_values[entry.python_index]
            )
            return decision, decision, faulty

        def expected_steps(self) -> List[Tuple[str, Optional[str], int, int]]:
            steps = []
            for entry in self.model:
                returned, decision, _ = self.value_of(entry)
                steps.append((entry.name, entry.plugin, returned, decision))
                if decision != 0:
                    break
            return steps

        # ---- rules -------------------------------------------------------

        @rule(
            target=registrations,
            index=st.integers(0, PYTHON_PROVIDERS - 1),
            first=st.booleans(),
        )
        def register_python(self, index, first):
            self.step()
            func = self.funcs[index]
            if first:
                registration = ectls.register_first(func)
            else:
                registration = ectls.register_last(func)
            entry = Entry(
                name=registration.name,
                plugin=None,
                registration=registration,
                python_index=index,
            )
            assert registration.name.endswith(f".py_provider_{index}")
            self.insert(entry, first)
            return registration

        @rule(registration=registrations)
        def unregister_python(self, registration):
            """Unregister a Python provider.  Doing it twice, or after
            clear(), changes nothing."""
            self.step()
            registration.unregister()
            for position, entry in enumerate(self.model):
                if entry.registration is registration:
                    del self.model[position]
                    break

        @rule(
            index=st.integers(0, C_PROVIDERS - 1),
            first=st.booleans(),
            tag=st.sampled_from(CLOSURE_TAGS),
        )
        def register_c(self, index, first, tag):
            self.step()
            assert plugins.files[0].library.register_c(index, int(first), tag) == 0
            self.insert(self.c_entry(0, index, None if tag < 0 else tag), first)

        @rule(index=st.integers(0, C_PROVIDERS - 1), tag=st.sampled_from(CLOSURE_TAGS))
        def unregister_c(self, index, tag):
            """Removes the match nearest the head, as the model does."""
            self.step()
            key = (0, index, None if tag < 0 else tag)
            removed = plugins.files[0].library.unregister_c(index, tag)
            for position, entry in enumerate(self.model):
                if entry.c_key == key:
                    del self.model[position]
                    assert removed == 1
                    break
            else:
                assert removed == 0

        @rule(first=st.booleans(), index=st.integers(0, C_PROVIDERS - 1))
        def load_plugin_symbol(self, first, index):
            """Load c_provider_<index> from a file that this sequence has
            not used yet, so that its values are the defaults whichever
            file it is.  Once MAX_PLUGIN_COPIES files are used up, register
            the same kind of entry from the main file with register_c()."""
            self.step()
            number = plugins.free_file(index, self.files_used)
            if number is None:
                # NOTE: replays of a sequence may then differ from its first
                # run, and hypothesis reports a failure as FlakyFailure.
                number = 0
                assert plugins.files[0].library.register_c(index, int(first), -1) == 0
            else:
                plugin_file = plugins.files[number]
                ectls.load_plugin(
                    plugin_file.path, symbol=f"c_provider_{index}", first=first
                )
                plugin_file.loaded_symbols.add(index)
                self.loaded_here.append((number, index))
                self.files_used.add(number)
            for other in range(C_PROVIDERS):
                self.c_values.setdefault((number, other), DEFAULT_C_VALUES[other])
                self.value_targets.append((number, other))
            self.insert(self.c_entry(number, index, None), first)

        @rule(choice=st.integers(0, 1000))
        def load_plugin_symbol_again(self, choice):
            """Load a (file, symbol) pair again, which must fail and leave
            the list as it was."""
            self.step()
            number, index = self.loaded_here[choice % len(self.loaded_here)]
            with pytest.raises(ectls.PluginAlreadyLoadedError):
                ectls.load_plugin(
                    plugins.files[number].path, symbol=f"c_provider_{index}"
                )

        @rule(data=st.data(), value=C_VALUES)
        def set_c_value(self, data, value):
            self.step()
            number, index = data.draw(st.sampled_from(self.value_targets))
            plugins.files[number].library.set_value(index, value)
            self.c_values[number, index] = value

        @rule(index=st.integers(0, PYTHON_PROVIDERS - 1), value=PYTHON_VALUES)
        def set_python_value(self, index, value):
            self.step()
            type(self).python_values[index] = value

        @rule()
        def clear(self):
            self.step()
            assert ectls.clear() == len(self.model)
            self.model.clear()

        # ---- checks after every step -----------------------------------

        @invariant()
        def count_matches(self):
            assert lib.ectls_count_core_use_outbound_tls_hook() == len(self.model)
            assert ectls.has_hook() is bool(self.model)

        @invariant()
        def calls_match(self):
            expected = self.expected_steps()
            decision = expected[-1][3] if expected else 0
            decider_faulty = (
                bool(expected) and self.value_of(self.model[len(expected) - 1])[2]
            )
            handler.records.clear()

            assert ectls.call(None) == decision
            assert ectls.call(self.message) == decision
            assert plugins.files[0].library.call_null() == decision
            explanation = ectls.explain(None)

            assert explanation.decision == decision
            assert [
                (
                    step.provider.name,
                    step.provider.plugin,
                    step.returned,
                    int(step.decision),
                )
                for step in explanation.steps
            ] == expected
            # Four calls ran; each fault that is due for a record logs
            # one naming the decider.
            if decider_faulty:
                decider = self.model[len(expected) - 1]
                counts = range(decider.faults + 1, decider.faults + 5)
                decider.faults += 4
                assert len(handler.records) == sum(map(fault_due, counts))
                name = expected[-1][0]
                assert all(name in record.getMessage() for record in handler.records)
            else:
                assert handler.records == []

        @invariant()
        def order_matches(self):
            cls = type(self)
            cls.force_no = True
            for plugin_file in plugins.files:
                plugin_file.library.set_force_no(1)
            try:
                steps = ectls.explain(None).steps
            finally:
                cls.force_no = False
                for plugin_file in plugins.files:
                    plugin_file.library.set_force_no(0)
            assert [(s.provider.name, s.provider.plugin) for s in steps] == [
                (entry.name, entry.plugin) for entry in self.model
            ]

    return ProviderListMachine


def positive_int_from_environment(name: str, default: int) -> int:
    text = os.environ.get(name, "")
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        pytest.fail(f"{name} must be a positive integer, not {text!r}")
    if value < 1:
        pytest.fail(f"{name} must be a positive integer, not {value}")
    return value


def test_provider_list_matches_model(build_plugin, tmp_path, capsys):
    source = tmp_path / "model_plugin.c"
    source.write_text(MODEL_PLUGIN)
    compiled = build_plugin(source, tmp_path / "model_plugin.so")
    plugins = ModelPlugins(compiled, tmp_path)
    handler = ListHandler()
    logger = logging.getLogger("ectls")
    logger.addHandler(handler)
    examples = positive_int_from_environment("ECTLS_MODEL_EXAMPLES", 25)
    steps = positive_int_from_environment("ECTLS_MODEL_STEPS", 40)

    try:
        run_state_machine_as_test(
            build_machine(plugins, handler),
            settings=settings(
                max_examples=examples,
                stateful_step_count=steps,
                deadline=None,
                database=None,
                suppress_health_check=[HealthCheck.too_slow],
            ),
        )
    finally:
        logger.removeHandler(handler)

    with capsys.disabled():
        print(
            f"\nmodel: {plugins.steps} operations in {plugins.examples} "
            f"sequences, {len(plugins.files)} plugin files"
        )
    assert plugins.steps > 0
