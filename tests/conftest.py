"""Load the pack as the package ``idsculpt`` (as ComfyUI loads it, by file location) for tests."""
from __future__ import annotations

import faulthandler
import os
import sys

import pytest

# Real-ComfyUI fixtures (comfy_server, comfy_inprocess, ...): see tests/conftest_comfy.py.
pytest_plugins = ["conftest_comfy"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
PORTRAITS = os.path.join(SHARED, "data", "portraits")
OUTPUT = os.path.join(ROOT, "tests", "output")


sys.path.insert(0, os.path.join(ROOT, "bench"))
import _pack  # noqa: E402  (bench/_pack.py: the one loader of the repo as package ``idsculpt``)

_pack.load()

# A test stuck in C code that holds the GIL (xatlas once did on CI, before it moved to a child process) is
# beyond pytest-timeout, whose signal handler needs the GIL. faulthandler's watchdog is a C thread: past
# HANG_WATCHDOG_S in one test it prints every thread's stack (the stuck test's file and line among them) and
# ends the run, so CI fails in minutes and names the culprit, instead of dying silently at its 90-minute limit.
HANG_WATCHDOG_S = float(os.environ.get("IDSCULPT_HANG_WATCHDOG_S", 900))  # pytest.ini's per-test timeout is 600 s
_real_stderr: list[int] = []


def pytest_configure(config) -> None:
    # here, unlike at import, stderr is not yet redirected into pytest's capture (which vanishes with the run)
    _real_stderr.append(os.dup(2))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    faulthandler.dump_traceback_later(HANG_WATCHDOG_S, exit=True, file=_real_stderr[0])
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def output_dir() -> str:
    os.makedirs(OUTPUT, exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def portraits_dir() -> str:
    if not os.path.isdir(PORTRAITS):
        pytest.skip(f"shared portraits not found at {PORTRAITS}")
    return PORTRAITS
