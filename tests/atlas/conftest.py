"""Fixtures shared by the atlas tests."""

import pytest

from tlatlas.tasks import build_suite


@pytest.fixture(scope="module")
def small_examples():
    return list(build_suite("synthetic", seed=42, per_family=2, families=["ioi", "factual", "code"]))
