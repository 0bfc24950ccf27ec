"""Import helper for the scripts in bench/: load this repository as the package ``idsculpt``.

The pack is a ComfyUI custom-node folder, not an installed package, and its modules use relative
imports; so scripts load it by file location exactly as tests/conftest.py (and ComfyUI) do:

    import _pack                      # bench/ is the script's directory, so this import works
    idsculpt = _pack.load()
    from idsculpt.core.render import render_mesh
"""
from __future__ import annotations

import importlib.util
import os
import sys
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TESTS = os.path.join(ROOT, "tests")


def load(name: str = "idsculpt", tests: bool = False) -> types.ModuleType:
    """Load (once) and return the repository at ROOT as package ``name``.

    ``tests``: also make tests/ importable (``tiny_models`` builds the random-weight SD models)."""
    if tests and TESTS not in sys.path:
        sys.path.insert(0, TESTS)
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "__init__.py"), submodule_search_locations=[ROOT])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load the pack from {ROOT}")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    try:
        spec.loader.exec_module(mod)
    except Exception:
        del sys.modules[name]
        raise
    return mod
