"""Load the pack as the package ``idsculpt`` (as ComfyUI loads it, by file location) for tests."""
from __future__ import annotations

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


@pytest.fixture(scope="session")
def output_dir() -> str:
    os.makedirs(OUTPUT, exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def portraits_dir() -> str:
    if not os.path.isdir(PORTRAITS):
        pytest.skip(f"shared portraits not found at {PORTRAITS}")
    return PORTRAITS
