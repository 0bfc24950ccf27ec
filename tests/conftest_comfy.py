"""pytest fixtures for tests against a real ComfyUI (registered by tests/conftest.py).

* ``comfy_path`` / ``comfy_python``: the ComfyUI checkout and the Python that runs it; every test
  that uses them is skipped with one summary line when no ComfyUI is found.
* ``comfy_sandbox``: temporary input/output/model/custom_nodes dirs for the session's server.
* ``comfy_server``: a headless ComfyUI on CPU with this pack loaded (session-scoped: started once,
  ~20 s on 2 cores, stopped at the end); ``submit(prompt) -> history``, ``interrupt()``, ``object_info()``,
  ``log()``.
* ``comfy_inprocess``: ComfyUI imported into this interpreter on CPU, for calling a node's execute
  directly (with ``run_node``); skipped when this interpreter cannot import ComfyUI (run pytest
  with ComfyUI's Python for those).

Mark such tests ``@pytest.mark.comfy`` so ``-m comfy`` / ``-m "not comfy"`` selects them.
"""
from __future__ import annotations

import types

import pytest

import comfy_harness as ch

INPROCESS_HINT = "ComfyUI not importable in this Python: run pytest with ComfyUI's Python for the in-process node tests"
_FOLD_LINE = 1  # all folded skips point at this file, so pytest -ra groups them into one line


@pytest.fixture(scope="session")
def comfy_path() -> str:
    try:
        path = ch.find_comfyui()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    if path is None:
        pytest.skip(ch.ENABLE_HINT)
    return path


@pytest.fixture(scope="session")
def comfy_python(comfy_path: str) -> str:
    try:
        return ch.find_comfy_python(comfy_path)
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture(scope="session")
def comfy_sandbox(tmp_path_factory) -> ch.ComfySandbox:
    return ch.ComfySandbox(str(tmp_path_factory.mktemp("comfy")))


@pytest.fixture(scope="session")
def comfy_server(comfy_path: str, comfy_python: str, comfy_sandbox: ch.ComfySandbox):
    server = ch.ComfyServer(comfy_path, comfy_python, comfy_sandbox)
    try:
        server.start()
    except RuntimeError as exc:
        pytest.fail(str(exc))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def comfy_inprocess(comfy_path: str, tmp_path_factory):
    """ComfyUI importable here (CPU). Yields a namespace: ``folder_paths``, ``sandbox``, ``run_node``,
    ``load_pack_nodes()`` (our node classes by node id)."""
    sandbox = ch.ComfySandbox(str(tmp_path_factory.mktemp("comfy_inproc")))
    try:
        folder_paths = ch.import_comfy_inprocess(comfy_path, sandbox)
    except Exception as exc:  # ImportError, or torch/torchvision mismatches raising other types
        try:
            hint = f" (e.g. {ch.find_comfy_python(comfy_path)})"
        except RuntimeError:
            hint = ""
        pytest.skip(f"{INPROCESS_HINT}{hint}; here: {type(exc).__name__}: {str(exc)[:200]}")

    def load_pack_nodes() -> dict:
        import asyncio
        import importlib

        pack = importlib.import_module("idsculpt")  # loaded by conftest.py as ComfyUI loads it
        ext = asyncio.run(pack.comfy_entrypoint())
        nodes = asyncio.run(ext.get_node_list())
        return {n.GET_SCHEMA().node_id: n for n in nodes}

    yield types.SimpleNamespace(folder_paths=folder_paths, sandbox=sandbox, run_node=ch.run_node,
                                load_pack_nodes=load_pack_nodes, comfy_path=comfy_path)


@pytest.fixture()
def comfy_clean_output(comfy_server):
    """Empty the server's output dir before a test that counts its files."""
    ch.clean_dir(comfy_server.sandbox.output_dir)
    return comfy_server.sandbox.output_dir


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Fold "no ComfyUI" skips into ONE summary line: pytest reports a fixture's skip at each test's
    own line, which would print the same hint once per test."""
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and isinstance(rep.longrepr, tuple) and len(rep.longrepr) == 3:
        reason = str(rep.longrepr[2])
        for hint in (ch.ENABLE_HINT, INPROCESS_HINT):
            if hint in reason:
                rep.longrepr = (__file__, _FOLD_LINE, reason)


def pytest_report_header(config) -> list[str]:
    try:
        path = ch.find_comfyui()
    except RuntimeError as exc:
        return [f"comfyui: {exc}"]
    if path is None:
        return ["comfyui: none (comfy tests skip; set COMFYUI_PATH)"]
    try:
        py = ch.find_comfy_python(path)
    except RuntimeError as exc:
        py = str(exc)
    return [f"comfyui: {path} {ch.comfyui_version(path)}; python: {py}"]

