"""pytest plugin: the ``ectls_isolated`` fixture.

Installed with ectls (entry point ``pytest11``), so any project's tests
can use it without a conftest.  ectls is imported only when a test requests
the fixture.
"""

from __future__ import annotations

from typing import Iterator

import pytest


@pytest.fixture
def ectls_isolated() -> Iterator[None]:
    """Give the test an empty provider list, and put back the process's
    list afterwards, C providers included."""
    import ectls

    with ectls.isolated():
        yield
