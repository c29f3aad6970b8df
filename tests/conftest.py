"""Shared fixtures: every test that takes `backend` runs on both backends."""

from __future__ import annotations

import os

import pytest
from hypothesis import HealthCheck, settings

import matgrad

# Deterministic in CI (same examples every run), no deadlines anywhere (the machine is noisy).
# The `backend` fixture only selects the default backend, so reusing it across examples is safe.
settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.register_profile(
    "dev",
    deadline=None,
    max_examples=40,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

BACKENDS = ["python", "numpy"]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend name; also made the default for the duration of the test."""
    previous = matgrad.get_backend()
    matgrad.set_backend(request.param)
    yield request.param
    matgrad.set_backend(previous)


@pytest.fixture(autouse=True)
def _seed_and_grad_mode():
    """Every test starts seeded, with grad mode on."""
    matgrad.manual_seed(0)
    yield
    assert matgrad.is_grad_enabled(), "a test left grad mode off"
