"""Shared fixtures: every test that takes `backend` runs on both backends; `built_site` and
`browser` are the documentation site, built once per session, and headless Chromium (tests/browser.py)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from browser import NO_BROWSER_ENV, Browser, BrowserUnavailable
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


ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The documentation built once with ``mkdocs build --strict``; the folder of the site."""
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip('MkDocs is not installed: pip install -e ".[test]"')
    site = tmp_path_factory.mktemp("docs") / "site"
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "PYTHONDONTWRITEBYTECODE": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    if result.returncode != 0:
        pytest.fail(f"mkdocs build --strict failed:\n{result.stdout}{result.stderr}", pytrace=False)
    return site


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    """One headless Chromium for the session (tests/browser.py): missing Chromium fails the test,
    unless MATGRAD_NO_BROWSER=1 says to skip browser tests on this machine."""
    if os.environ.get(NO_BROWSER_ENV) == "1":
        pytest.skip(f"{NO_BROWSER_ENV}=1: browser tests skipped")
    try:
        instance = Browser()
    except BrowserUnavailable as exc:
        missing = str(exc)
    else:
        yield instance
        instance.close()
        return
    pytest.fail(missing, pytrace=False)
