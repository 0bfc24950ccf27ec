"""js/idsculpt.js under Node with stand-ins for ComfyUI's ``app`` and ``api`` modules.

Not a browser test: it checks the extension's logic against the frontend API shapes it uses
(registerExtension, beforeRegisterNodeDef, api events with ``detail``, LiteGraph's getNodeById /
onDrawForeground). Skipped when ``node`` is not installed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NODE = shutil.which("node")

MOCK_APP = """
export const registered = [];
const nodes = {};
export const app = {
  graph: { getNodeById: (id) => nodes[String(id)] ?? null, setDirtyCanvas: () => { app.dirty += 1; } },
  dirty: 0,
  registerExtension: (ext) => registered.push(ext),
  _nodes: nodes,
};
"""
MOCK_API = """
const listeners = {};
export const api = {
  addEventListener: (type, fn) => { (listeners[type] ??= []).push(fn); },
  emit: (type, detail) => (listeners[type] ?? []).forEach((fn) => fn({ detail })),
};
"""
DRIVER = """
import { app, registered } from "./scripts/app.js";
import { api } from "./scripts/api.js";
await import("./extensions/pack/idsculpt.js");
const ext = registered[0];
await ext.setup();
function makeType(name) {
  function T() {}
  T.prototype.onDrawForeground = function () { this.baseDrawn = (this.baseDrawn ?? 0) + 1; };
  return T;
}
const Ours = makeType("IDSculptDMTetSculpt"), Theirs = makeType("KSampler"), Save = makeType("IDSculptSaveHead");
await ext.beforeRegisterNodeDef(Ours, { name: "IDSculptDMTetSculpt" });
await ext.beforeRegisterNodeDef(Theirs, { name: "KSampler" });
await ext.beforeRegisterNodeDef(Save, { name: "IDSculptSaveHead" });
const mk = (T, id, cls) => { const n = new T(); n.id = id; n.comfyClass = cls; n.size = [300, 200]; app._nodes[String(id)] = n; return n; };
const sculpt = mk(Ours, 7, "IDSculptDMTetSculpt"), ks = mk(Theirs, 8, "KSampler"), save = mk(Save, 9, "IDSculptSaveHead");
function draw(n) {
  const texts = [];
  const ctx = { save() {}, restore() {}, fillText: (t, x, y) => texts.push({ t, x, y }), set font(v) {}, set fillStyle(v) {}, set textAlign(v) {} };
  n.onDrawForeground(ctx);
  return texts;
}
const out = {};
api.emit("execution_start", { prompt_id: "p" });
api.emit("progress", { value: 250, max: 6000, node: "7", prompt_id: "p" });
api.emit("progress", { value: 3, max: 20, node: "8", prompt_id: "p" });
out.sculpt = draw(sculpt);
out.ks = draw(ks);
out.base = sculpt.baseDrawn;
api.emit("progress", { value: 6000, max: 6000, node: "7", prompt_id: "p" });
out.sculptDone = draw(sculpt);
api.emit("executed", { node: "9", display_node: "9", output: { "3d": [{ filename: "head_00001_.glb", subfolder: "IDSculpt", type: "output" }] } });
out.save = draw(save);
api.emit("execution_start", { prompt_id: "q" });
out.afterReset = draw(sculpt);
out.dirty = app.dirty;
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="node (Node.js) not installed")
def test_step_counter_and_saved_path(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "extensions" / "pack").mkdir(parents=True)
    (tmp_path / "scripts" / "app.js").write_text(MOCK_APP)
    (tmp_path / "scripts" / "api.js").write_text(MOCK_API)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    # ComfyUI serves the pack's js/ at /extensions/<pack>/, so "../../scripts/app.js" resolves to /scripts/app.js
    shutil.copyfile(os.path.join(ROOT, "js", "idsculpt.js"), tmp_path / "extensions" / "pack" / "idsculpt.js")
    (tmp_path / "driver.mjs").write_text(DRIVER)
    r = subprocess.run([NODE, "driver.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["sculpt"][0]["t"].startswith("step 250/6000")
    assert out["sculpt"][0]["x"] == 300 - 8  # right-aligned in the title bar
    assert out["base"] == 1  # the node's own onDrawForeground still runs
    assert out["ks"] == []  # other packs' nodes are left alone
    assert out["sculptDone"][0]["t"] == "step 6000/6000"
    assert out["save"] == [{"t": "IDSculpt/head_00001_.glb", "x": 4, "y": 214}]
    assert out["afterReset"] == []
    assert out["dirty"] >= 4


# Vue-nodes mode ("Nodes 2.0"): nodes are DOM components, the canvas never calls onDrawForeground for
# them. A minimal DOM in the shape the frontend renders (LGraphNode.vue: div.lg-node[data-node-id] >
# NodeHeader.vue: div.lg-node-header[data-testid="node-header-<id>"] > title row div).
FAKE_DOM = """
class El {
  constructor(tag, cls = "", attrs = {}) { this.tagName = tag; this.className = cls; this.attrs = attrs; this.children = [];
    this.parent = null; this.style = {}; this.textContent = ""; }
  appendChild(c) { c.parent = this; this.children.push(c); return c; }
  remove() { if (this.parent) { this.parent.children = this.parent.children.filter((x) => x !== this); this.parent = null; } }
  get firstElementChild() { return this.children[0] ?? null; }
  matches(sel) {
    const m = /^(?:\\.([\\w-]+))?(?:\\[([\\w-]+)="([^"]*)"\\])?$/.exec(sel);
    if (!m) throw new Error("selector not supported by the fake DOM: " + sel);
    return (!m[1] || this.className.split(" ").includes(m[1])) && (!m[2] || this.attrs[m[2]] === m[3]);
  }
  querySelector(sel) {
    for (const c of this.children) { if (c.matches(sel)) return c; const d = c.querySelector(sel); if (d) return d; }
    return null;
  }
}
const body = new El("body");
globalThis.document = { createElement: (tag) => new El(tag), querySelector: (sel) => body.querySelector(sel) };
export function vueNode(id) {
  const root = body.appendChild(new El("div", "bg-node-component-surface lg-node absolute", { "data-node-id": String(id) }));
  const header = root.appendChild(new El("div", "lg-node-header p-4", { "data-testid": `node-header-${id}` }));
  const row = header.appendChild(new El("div", "flex items-center justify-between"));
  row.appendChild(new El("div", "title"));
  return { root, row };
}
"""

VUE_DRIVER = """
import { vueNode } from "./fakedom.js";
import { app, registered } from "./scripts/app.js";
import { api } from "./scripts/api.js";
await import("./extensions/pack/idsculpt.js");
const ext = registered[0];
await ext.setup();
function T() {}
await ext.beforeRegisterNodeDef(T, { name: "IDSculptDMTetSculpt" });
const mk = (id, cls) => { const n = new T(); n.id = id; n.comfyClass = cls; n.size = [300, 200]; app._nodes[String(id)] = n; return n; };
mk(7, "IDSculptDMTetSculpt"); mk(8, "KSampler"); mk(9, "IDSculptSaveHead");
const dom = { 7: vueNode(7), 8: vueNode(8), 9: vueNode(9) };
const text = (el, cls) => el.querySelector("." + cls)?.textContent ?? null;
const out = {};
api.emit("execution_start", { prompt_id: "p" });
api.emit("progress", { value: 250, max: 6000, node: "7", prompt_id: "p" });
api.emit("progress", { value: 3, max: 20, node: "8", prompt_id: "p" });
out.step = text(dom[7].row, "idsculpt-step");
out.stepLast = dom[7].row.children.at(-1).className;
out.ks = [text(dom[8].root, "idsculpt-step"), dom[8].row.children.length];
api.emit("progress", { value: 6000, max: 6000, node: "7", prompt_id: "p" });
out.done = text(dom[7].row, "idsculpt-step");
out.count = dom[7].row.children.length;
api.emit("executed", { node: "9", display_node: "9", output: { "3d": [{ filename: "head_00001_.glb", subfolder: "IDSculpt", type: "output" }] } });
out.saved = text(dom[9].root, "idsculpt-saved");
out.savedParent = dom[9].root.children.at(-1).className;
api.emit("execution_start", { prompt_id: "q" });
out.afterReset = [text(dom[7].root, "idsculpt-step"), text(dom[9].root, "idsculpt-saved"), dom[7].row.children.length];
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(NODE is None, reason="node (Node.js) not installed")
def test_step_counter_in_vue_nodes_mode(tmp_path):
    (tmp_path / "scripts").mkdir()
    (tmp_path / "extensions" / "pack").mkdir(parents=True)
    (tmp_path / "scripts" / "app.js").write_text(MOCK_APP)
    (tmp_path / "scripts" / "api.js").write_text(MOCK_API)
    (tmp_path / "fakedom.js").write_text(FAKE_DOM)
    (tmp_path / "package.json").write_text('{"type": "module"}')
    shutil.copyfile(os.path.join(ROOT, "js", "idsculpt.js"), tmp_path / "extensions" / "pack" / "idsculpt.js")
    (tmp_path / "driver.mjs").write_text(VUE_DRIVER)
    r = subprocess.run([NODE, "driver.mjs"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["step"].startswith("step 250/6000 · ")  # in the header's title row ...
    assert out["stepLast"] == "idsculpt-step"  # ... at its end
    assert out["ks"] == [None, 1]  # other packs' nodes are left alone
    assert out["done"] == "step 6000/6000" and out["count"] == 2  # updated in place, not appended again
    assert out["saved"] == "IDSculpt/head_00001_.glb" and out["savedParent"] == "idsculpt-saved"
    assert out["afterReset"] == [None, None, 1]  # a new run clears it
