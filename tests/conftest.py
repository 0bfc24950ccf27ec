"""Load the pack as the package ``idsculpt`` (as ComfyUI loads it, by file location) for tests."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

# Real-ComfyUI fixtures (comfy_server, comfy_inprocess, ...): see tests/conftest_comfy.py.
pytest_plugins = ["conftest_comfy"]

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")
PORTRAITS = os.path.join(SHARED, "data", "portraits")
OUTPUT = os.path.join(ROOT, "tests", "output")


def _load_pack() -> None:
    if "idsculpt" in sys.modules:
        return
    spec = importlib.util.spec_from_file_location("idsculpt", os.path.join(ROOT, "__init__.py"), submodule_search_locations=[ROOT])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["idsculpt"] = mod
    spec.loader.exec_module(mod)


_load_pack()


@pytest.fixture(scope="session")
def output_dir() -> str:
    os.makedirs(OUTPUT, exist_ok=True)
    return OUTPUT


@pytest.fixture(scope="session")
def portraits_dir() -> str:
    if not os.path.isdir(PORTRAITS):
        pytest.skip(f"shared portraits not found at {PORTRAITS}")
    return PORTRAITS
