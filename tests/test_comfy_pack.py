"""The pack inside a real ComfyUI: it loads without import errors, every node is registered, every
input has a tooltip. Generic over all node ids starting with "IDSculpt", so nodes added later are
covered too. Needs COMFYUI_PATH (see docs/COMFYUI_TESTING.md); skipped otherwise."""
from __future__ import annotations

import ast
import os
import time

import pytest

import comfy_harness as ch

pytestmark = pytest.mark.comfy

NODES_DIR = os.path.join(ch.ROOT, "nodes")


def declared_node_ids() -> dict[str, str]:
    """node_id -> file for every ``io.Schema(node_id="...")`` in nodes/*.py, read without importing."""
    found: dict[str, str] = {}
    for name in sorted(os.listdir(NODES_DIR)):
        if not name.endswith(".py") or name.startswith("_"):
            continue
        with open(os.path.join(NODES_DIR, name), encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), filename=name)
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Schema":
                for kw in node.keywords:
                    if kw.arg == "node_id" and isinstance(kw.value, ast.Constant) and isinstance(kw.value.value, str):
                        found[kw.value.value] = name
    return found


@pytest.mark.slow  # ~20-30 s: loads every core node once more
def test_quick_test_for_ci_loads_pack(comfy_path, comfy_python, tmp_path):
    """``main.py --cpu --quick-test-for-ci`` with the pack installed exits 0 and logs no import error of ours."""
    sandbox = ch.ComfySandbox(str(tmp_path))
    rc, log = ch.quick_test(comfy_path, comfy_python, sandbox)
    assert rc == 0, f"quick test exited {rc}:\n{log[-4000:]}"
    assert ch.PACK_NAME in log, f"the pack was not picked up from {sandbox.custom_nodes}:\n{log[-4000:]}"
    assert ch.pack_import_errors(log) == [], "\n".join(ch.pack_import_errors(log)) + "\n" + log[-4000:]


def test_server_log_has_no_pack_import_errors(comfy_server):
    errors = ch.pack_import_errors(comfy_server.log())
    assert errors == [], "\n".join(errors) + "\n" + comfy_server.log_tail()


def test_every_declared_node_is_registered(comfy_server):
    declared = declared_node_ids()
    assert declared, "no io.Schema(node_id=...) found in nodes/*.py"
    info = comfy_server.object_info()
    missing = {nid: f for nid, f in declared.items() if nid not in info}
    assert not missing, f"nodes declared but not in /object_info (import error in their file?): {missing}\n{comfy_server.log_tail()}"
    for nid in declared:
        assert nid.startswith(ch.NODE_PREFIX), f"node id {nid!r} must start with {ch.NODE_PREFIX!r}"


def test_every_pack_node_input_has_tooltip_and_category(comfy_server):
    info = comfy_server.object_info()
    ours = {k: v for k, v in info.items() if k.startswith(ch.NODE_PREFIX)}
    assert ours, "no IDSculpt node in /object_info"
    problems = []
    for nid, node in sorted(ours.items()):
        if not str(node.get("category", "")).startswith("IDSculpt"):
            problems.append(f"{nid}: category {node.get('category')!r} does not start with 'IDSculpt'")
        for section in ("required", "optional"):
            for name, spec in (node.get("input", {}).get(section) or {}).items():
                opts = spec[1] if isinstance(spec, (list, tuple)) and len(spec) > 1 and isinstance(spec[1], dict) else {}
                if not str(opts.get("tooltip") or "").strip():
                    problems.append(f"{nid}: input {name!r} has no tooltip")
    assert not problems, "\n".join(problems)


def test_progress_previews_and_interrupt_in_server(comfy_server):
    """The pack's progress adapter (nodes/common.py) works under the real server's progress hook
    (live JPEG previews), and POST /interrupt stops a running loop within about a second."""
    hist = comfy_server.submit({"1": {"class_type": "HarnessProgressLoop", "inputs": {"steps": 5, "seconds_per_step": 0.0}}}, timeout=60)
    assert hist["outputs"]["1"]["text"] == ["5/5"]

    pid = comfy_server.queue({"1": {"class_type": "HarnessProgressLoop", "inputs": {"steps": 3000, "seconds_per_step": 0.01}}})
    deadline = time.monotonic() + 30
    while pid not in comfy_server.running():
        assert time.monotonic() < deadline, "the loop never started"
        time.sleep(0.05)
    time.sleep(0.3)
    t0 = time.monotonic()
    comfy_server.interrupt(pid)
    with pytest.raises(ch.ComfyPromptError, match="interrupted"):
        comfy_server.wait(pid, timeout=30)
    assert time.monotonic() - t0 < 5.0
    # the server is still usable afterwards
    assert comfy_server.submit({"1": {"class_type": "HarnessProgressLoop", "inputs": {"steps": 2, "seconds_per_step": 0.0}}},
                               timeout=60)["outputs"]["1"]["text"] == ["2/2"]
