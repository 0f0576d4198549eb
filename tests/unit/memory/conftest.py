"""The memory reader tests' shared fixture (its inputs live in tests/helpers/memory_samples.py)."""

import pytest

from tests.helpers.memory_samples import complete_stream


@pytest.fixture
def stream():
    return complete_stream()
