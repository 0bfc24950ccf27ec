// ComfyUI-IDSculpt front-end extension (loaded by ComfyUI from WEB_DIRECTORY = "./js").
//
// (a) Step counter: long IDSculpt nodes (PanoHead inversion, DMTet sculpting, texturing) report
//     progress through comfy.utils.ProgressBar, which the server sends as websocket "progress"
//     messages {value, max, prompt_id, node}. The standard UI draws only a bar; this extension also
//     writes "step value/max" (and the elapsed time) in the title bar of IDSculpt nodes. Live
//     previews need nothing here: ProgressBar previews are shown by ComfyUI itself.
//     In the frontend's Vue-nodes mode ("Nodes 2.0") nodes are DOM components and the canvas does not
//     draw them, so onDrawForeground never runs for them: there the same text goes into the node's own
//     element (the one with class lg-node and data-node-id), at the end of its header's title row, and
//     the saved file under its body. Detected by that element being there, so LiteGraph mode (no
//     such element) is drawn on the canvas exactly as before.
// (b) 3D preview hand-off: "IDSculpt Save Head" returns model_file, a STRING path relative to the
//     output folder, exactly what core "Preview3D" takes as its model_file. Link it to Preview3D's
//     model_file (drop the link on the widget; the frontend turns it into an input). After a run,
//     this extension also shows the saved file name on the Save Head node.
//
// Frontend APIs: app.registerExtension, beforeRegisterNodeDef, api.addEventListener; in Vue-nodes mode
// the node elements' data-node-id / data-testid="node-header-<id>" attributes (read defensively).
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const PREFIX = "IDSculpt";
const state = new Map(); // node id (string) -> {value, max, t0, done}

function findNode(id) {
  if (id === null || id === undefined || !app.graph) return null;
  const key = String(id);
  // subgraph execution ids look like "12:5"; the last part is the node inside the subgraph
  return app.graph.getNodeById(key) ?? app.graph.getNodeById(Number(key.split(":").pop())) ?? null;
}

function isOurs(node) {
  const t = node?.comfyClass ?? node?.type ?? "";
  return typeof t === "string" && t.startsWith(PREFIX);
}

function redraw() {
  app.graph?.setDirtyCanvas(true, false);
}

function fmtTime(s) {
  if (s < 60) return `${s.toFixed(0)} s`;
  const m = Math.floor(s / 60);
  return `${m} min ${Math.floor(s - 60 * m)} s`;
}

// "step k/N · elapsed" of a node (null when there is nothing to show)
function stepText(id) {
  const s = state.get(String(id));
  if (!s || !(s.max > 1)) return null;
  return `step ${s.value}/${s.max}` + (s.done ? "" : ` · ${fmtTime((performance.now() - s.t0) / 1000)}`);
}

// -- Vue-nodes mode: the node's DOM element, when the frontend renders nodes as DOM ------------------
const STEP_CLASS = "idsculpt-step";
const SAVED_CLASS = "idsculpt-saved";
const domIds = new Set(); // nodes whose DOM element carries our text

function domNode(id) {
  const doc = globalThis.document;
  if (!doc?.querySelector) return null;
  const key = String(id).replace(/["\\]/g, "\\$&");
  return doc.querySelector(`.lg-node[data-node-id="${key}"]`);
}

// put `text` in the child of `parent` with class `cls` (created on demand); remove it for null text
function setText(parent, cls, tag, text, style) {
  let el = parent.querySelector(`.${cls}`);
  if (text === null) {
    el?.remove();
    return;
  }
  if (!el) {
    el = globalThis.document.createElement(tag);
    el.className = cls;
    Object.assign(el.style, style);
    parent.appendChild(el);
  }
  if (el.textContent !== text) el.textContent = text;
}

function syncDom(node) {
  const root = node ? domNode(node.id) : null;
  if (!root) return; // LiteGraph mode: the canvas draws it (onDrawForeground)
  domIds.add(String(node.id));
  const header = root.querySelector(`[data-testid="node-header-${node.id}"]`) ?? root.querySelector(".lg-node-header");
  const row = header?.firstElementChild ?? header ?? root;
  setText(row, STEP_CLASS, "span", stepText(node.id),
    { fontSize: "12px", color: "#9fd", marginLeft: "auto", whiteSpace: "nowrap" });
  setText(root, SAVED_CLASS, "div", node.idsculptSaved ?? null,
    { fontSize: "12px", color: "#9fd", padding: "0 12px 8px" });
}

function clearDom() {
  for (const id of domIds) {
    const root = domNode(id);
    root?.querySelector(`.${STEP_CLASS}`)?.remove();
    root?.querySelector(`.${SAVED_CLASS}`)?.remove();
  }
  domIds.clear();
}

// Register once. ComfyUI serves this folder under two URLs when the install folder's name differs from
// pyproject.toml's [project] name (WEB_DIRECTORY registers /extensions/<folder>/, [tool.comfy] web
// /extensions/<project name>/; e.g. "ComfyUI-IDSculpt" vs "comfyui-idsculpt"), and the frontend then
// imports this file twice: a second registerExtension throws "Extension named ... already registered"
// (seen in a real browser, tests/test_js_browser.py). pyproject.toml no longer sets web = "js", but a
// user's copy may still be installed under both names.
const NAME = "IDSculpt.StepCounter";
if (!app.extensions?.some?.((e) => e.name === NAME)) app.registerExtension({
  name: NAME,

  async setup() {
    api.addEventListener("execution_start", () => {
      state.clear();
      clearDom();
      redraw();
    });
    api.addEventListener("progress", ({ detail }) => {
      const node = findNode(detail?.node);
      if (!isOurs(node)) return;
      const id = String(node.id);
      const prev = state.get(id);
      const t0 = prev && !prev.done && detail.value >= prev.value ? prev.t0 : performance.now();
      state.set(id, { value: detail.value, max: detail.max, t0, done: detail.value >= detail.max });
      syncDom(node);
      redraw();
    });
    api.addEventListener("executed", ({ detail }) => {
      const node = findNode(detail?.display_node ?? detail?.node);
      if (!isOurs(node)) return;
      const files = detail?.output?.["3d"];
      if (Array.isArray(files) && files.length) {
        const f = files[0];
        node.idsculptSaved = [f.subfolder, f.filename].filter(Boolean).join("/");
      }
      const s = state.get(String(node.id));
      if (s) s.done = true;
      syncDom(node);
      redraw();
    });
    api.addEventListener("execution_interrupted", () => {
      for (const s of state.values()) s.done = true;
      for (const id of state.keys()) syncDom(findNode(id));
      redraw();
    });
  },

  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!nodeData?.name?.startsWith(PREFIX)) return;
    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      const r = onDrawForeground?.apply(this, arguments);
      if (this.flags?.collapsed) return r;
      const step = stepText(this.id);
      if (!step && !this.idsculptSaved) return r;
      ctx.save();
      ctx.font = "12px sans-serif";
      ctx.fillStyle = "#9fd";
      if (step) { // in the title bar, right-aligned
        const titleH = globalThis.LiteGraph?.NODE_TITLE_HEIGHT ?? 30;
        ctx.textAlign = "right";
        ctx.fillText(step, this.size[0] - 8, -titleH / 2 + 4);
      }
      if (this.idsculptSaved) { // the saved file, just under the node
        ctx.textAlign = "left";
        ctx.fillText(this.idsculptSaved, 4, this.size[1] + 14);
      }
      ctx.restore();
      return r;
    };
  },
});
