#!/usr/bin/env python3
"""Write the shareable workflows: ``workflows/<name>.json`` (UI format, what users load in the ComfyUI
editor) and ``workflows/api/<name>.json`` (API format, what ``POST /prompt``, the tests and
``scripts/run_pipeline.py`` take), both from ONE Python description per workflow (below).

Only UI files sit directly in ``workflows/``: ComfyUI lists ``<pack>/workflows/*.json`` (not subfolders) in
its template browser, so the API twins and the ``/object_info`` snapshot live in ``workflows/api/``.

    python scripts/make_workflows.py                       # write every workflow from the cached snapshot
    python scripts/make_workflows.py --check               # exit 1 if a file on disk differs from what it would write
                                                           # (or a stray .json sits in workflows/ beside the UI files)
    python scripts/make_workflows.py --refresh-object-info # re-read /object_info from a headless ComfyUI first
        [--comfyui /path/to/ComfyUI] [--python /path/to/comfy/python]
    python scripts/make_workflows.py --quick geometry [--template] --quick-out geometry_quick_api.json
        # an API twin with steps/resolutions lowered (QUICK_TEST) for a smoke run, e.g. with run_pipeline.py

Why a snapshot: the UI format stores widget values by position (``widgets_values``) and sockets by
type, so the generator needs every node's input order, widget kinds and output types: ComfyUI's
``/object_info``. ``workflows/api/_object_info.json`` caches the entries of the node types the workflows
use, so this script runs without a server (plain Python, no torch). Regenerate it whenever a node's
inputs or outputs change (``--refresh-object-info`` starts ComfyUI through tests/comfy_harness.py,
with this repo as a custom node pack and empty model folders; ~10-20 s). The comfy-marked test in
tests/test_workflows.py fails when the snapshot or the files are stale.

How the ComfyUI frontend (1.27) serialises widgets, reproduced here (see ``widget_values``):
  * widgets follow the node's inputs in ``input_order`` (required, then optional); sockets (MODEL,
    IMAGE, our IDSCULPT_* types, ...) are not widgets;
  * an INT with ``control_after_generate`` -- or, by the frontend's legacy rule, any INT named
    ``seed``/``noise_seed`` -- gets a second widget right after it ("fixed"/"increment"/"randomize"):
    its value is stored too (we ship "fixed", so re-queueing reuses cached stages);
  * an ``image_upload`` COMBO (LoadImage) is followed by the upload button's value ``"image"``;
  * Preview3D carries one more frontend widget (the 3D viewer) whose stored value is ``""``;
  * a widget fed by a link (e.g. CLIPTextEncode.text from a StringConcatenate) keeps its value in
    ``widgets_values`` and gets an input slot ``{"name", "type", "widget": {"name"}, "link"}`` after
    the socket inputs; optional sockets are marked ``"shape": 7``.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import sys
import tempfile
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional, Union

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
WORKFLOW_DIR = os.path.join(ROOT, "workflows")
#: API twins and the snapshot: a subfolder, which ComfyUI's template listing (``workflows/*.json``) does not reach
API_SUBDIR = "api"
API_DIR = os.path.join(WORKFLOW_DIR, API_SUBDIR)
SNAPSHOT = os.path.join(API_DIR, "_object_info.json")
NODE_PREFIX = "IDSculpt"


def _load_schedules():
    """core/schedules.py by path: this script runs without torch, and importing the pack's ``core`` package
    would import it."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("idsculpt_schedules", os.path.join(ROOT, "core", "schedules.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolves the module of its classes
    spec.loader.exec_module(mod)
    return mod


SCHEDULES = _load_schedules()
#: the shipped workflows run the fast schedule; ``full_paper`` runs the paper's (core/schedules.py)
DEFAULT_SCHEDULE = SCHEDULES.FAST

#: Frontend-only node types (no Python class, never sent to /prompt): allowed in UI files only.
FRONTEND_ONLY = {"MarkdownNote", "Note"}
#: Extra widget values the frontend appends for some core nodes (viewer widgets), by node type.
FRONTEND_TRAILING_WIDGETS = {"Preview3D": [""], "SaveGLB": [""]}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_NAMES = ("seed", "noise_seed")
SEED_CONTROL = "fixed"

#: inputs whose COMBO lists files of the user's install: their values are not checked against the snapshot
FILE_INPUTS = {
    ("LoadImage", "image"), ("CheckpointLoaderSimple", "ckpt_name"), ("ControlNetLoader", "control_net_name"),
    ("VAELoader", "vae_name"), ("IDSculptIDAdapterLoader", "adapter_name"), ("IDSculptPanoHeadLoader", "checkpoint"),
    ("IDSculptPanoHeadLoader", "vgg16"), ("IDSculptTextureRefine", "perceptual_model"),
    ("IDSculptInsightFaceLoader", "model_name"), ("IDSculptLandmarkRender", "landmarker_model"),
    ("UpscaleModelLoader", "model_name"), ("IDSculptLoadHead", "file"),
}

# --------------------------------------------------------------------------- model file names
# The common public names (README "Models", core/models.py canonical rows). Keep in sync with both.
PORTRAIT = "portrait.jpg"
NORMAL_SD15 = "normal-adapted-sd1.5.safetensors"
DEPTH_SD15 = "depth-adapted-sd1.5.safetensors"
TEXTURE_SD15 = "Realistic_Vision_V4.0.safetensors"
STYLISED_SD15 = "DreamShaper_8_pruned.safetensors"
CN_CANNY = "control_v11p_sd15_canny.pth"
CN_NORMALBAE = "control_v11p_sd15_normalbae.pth"
CN_FACE = "control_v2p_sd15_mediapipe_face.safetensors"
ID_ADAPTER = "ip-adapter-faceid-portrait-v11_sd15.bin"
PANOHEAD = "easy-khair-180-gpc0.8-trans10-025000.pkl"
VGG16 = "vgg16-397923af.pth"
VAE_FT_MSE = "vae-ft-mse-840000-ema-pruned.safetensors"
REALESRGAN_X2 = "RealESRGAN_x2.pth"
INSIGHTFACE = "buffalo_l"

#: ``properties.models`` entries: the frontend's missing-model dialog offers these (on the user's click).
MODEL_URLS = {
    CN_CANNY: ("https://huggingface.co/lllyasviel/ControlNet-v1-1/resolve/main/control_v11p_sd15_canny.pth", "controlnet"),
    CN_NORMALBAE: ("https://huggingface.co/lllyasviel/ControlNet-v1-1/resolve/main/control_v11p_sd15_normalbae.pth", "controlnet"),
    CN_FACE: ("https://huggingface.co/CrucibleAI/ControlNetMediaPipeFace/resolve/main/control_v2p_sd15_mediapipe_face.safetensors",
              "controlnet"),
    ID_ADAPTER: ("https://huggingface.co/h94/IP-Adapter-FaceID/resolve/main/ip-adapter-faceid-portrait-v11_sd15.bin", "ipadapter"),
    STYLISED_SD15: ("https://huggingface.co/Lykon/DreamShaper/resolve/main/DreamShaper_8_pruned.safetensors", "checkpoints"),
    VAE_FT_MSE: ("https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main/vae-ft-mse-840000-ema-pruned.safetensors",
                 "vae"),
    REALESRGAN_X2: ("https://huggingface.co/ai-forever/Real-ESRGAN/resolve/main/RealESRGAN_x2.pth", "upscale_models"),
}

# --------------------------------------------------------------------------- defaults (docs REFERENCE.md)
CAPTION = "a woman with long dark brown hair"
# kornia's Canny (ComfyUI's Canny node) on 0..1 images ~ OpenCV Canny(100, 200) on 0..255 (the authors'):
# measured on the shared portraits at 512 px, (0.2, 0.4) matches best (F1 0.88 of edge pixels within 1 px;
# the node's 0.4/0.8 default keeps only ~40% of OpenCV's edges).
CANNY_LOW, CANNY_HIGH = 0.2, 0.4
REF_STEPS, REF_CFG = 30, 7.5
REF_ID_WEIGHT_NORMAL, REF_ID_WEIGHT_DEPTH = 0.5, 0.1
ISD_ID_WEIGHT, TEXTURE_ID_WEIGHT = 1.0, 1.0
# The reference maps (preprocess/get_facenormal.py, get_facedepth.py): "<caption>black background, normal map, head
# only" (their code joins without a separator; we keep ", ") and IP-Adapter's default negative (negative_prompt=None).
REF_SUFFIX = {"normal": "black background, normal map, head only", "depth": "black background, depth map, head only"}
REF_NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"
# View-dependent negatives of the authors' prompt processor (prompt_processors/base.py): they REPLACE the negative
# for views from behind and above; front and side views keep the plain negative.
BACK_NEGATIVE = "face, nose, eyes, mouth, front face, facial"
OVERHEAD_NEGATIVE = BACK_NEGATIVE + ", overexposure, Warm light"
VIEW_SUFFIX = {"front": "front view", "side": "side view", "back": "back view", "overhead": "overhead view"}
SAMPLER, SCHEDULER = "ddim", "ddim_uniform"
TEXTURE_STYLE_PAINTERLY = "digital painting, painterly brush strokes, stylized, vibrant colors, artstation"
# The authors' texture negative (their run script, passed to the texture prompt processor). Their diffusers text
# encoder reads "(...:1.4)" as plain text; ComfyUI's CLIPTextEncode would read it as a 1.4 weight, so the
# parentheses are escaped to send the same tokens.
AUTHORS_TEXTURE_NEGATIVE = (r"\(face painting, artifact, flag, decorative design,deformed iris, dark, white hair, deformed pupils, "
                            r"semi-realistic, cgi, 3d, render, sketch, cartoon, drawing, anime:1.4\), worst quality, low quality, "
                            r"jpeg artifacts, bad anatomy")
# The stylised variant drops the photo-only terms (cgi, render, drawing, ...) that would fight the style.
STYLISED_NEGATIVE = "low quality, blurry, deformed, strong shadows, oversaturated, watermark, text"

COLORS = {  # litegraph's palette (title colour, body colour)
    "positive": ("#232", "#353"), "negative": ("#322", "#533"), "caption": ("#432", "#653"), "loader": ("#223", "#335"),
}
GROUP_COLORS = ("#3f789e", "#8A8", "#b58b2a")


# --------------------------------------------------------------------------- description objects
@dataclass(frozen=True)
class Out:
    """Output ``name`` (or index) of ``node``: a link source."""

    node: "Node"
    name: Union[str, int]


@dataclass
class Node:
    id: int
    type: str
    inputs: dict
    title: Optional[str] = None
    group: Optional[int] = None
    col: int = 0
    color: Optional[str] = None
    width: Optional[int] = None
    height: Optional[int] = None
    widgets: Optional[list] = None  # frontend-only nodes (notes): widgets_values as given

    def __getitem__(self, name: Union[str, int]) -> Out:
        return Out(self, name)


@dataclass
class Workflow:
    name: str
    description: str
    nodes: list = field(default_factory=list)
    groups: list = field(default_factory=list)  # titles; a node's ``group`` indexes this list

    def group(self, title: str) -> int:
        self.groups.append(title)
        return len(self.groups) - 1

    def add(self, type_: str, title: Optional[str] = None, group: Optional[int] = None, col: int = 0,
            color: Optional[str] = None, width: Optional[int] = None, height: Optional[int] = None, **inputs) -> Node:
        node = Node(len(self.nodes) + 1, type_, inputs, title, group, col, color, width, height)
        self.nodes.append(node)
        return node

    def note(self, text: str, group: Optional[int] = None, col: int = 0, width: int = 360, height: int = 220,
             title: Optional[str] = None) -> Node:
        node = Node(len(self.nodes) + 1, "MarkdownNote", {}, title, group, col, "caption", width, height, [text])
        self.nodes.append(node)
        return node

    def by_id(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]


# --------------------------------------------------------------------------- object_info helpers
def ordered_inputs(spec: dict) -> list[tuple[str, Any, dict, bool]]:
    """(name, type, options, optional) in the frontend's order: ``input_order`` required, then optional."""
    out = []
    order = spec.get("input_order") or {}
    for section in ("required", "optional"):
        entries = (spec.get("input") or {}).get(section) or {}
        names = order.get(section) or list(entries)
        for name in names:
            if name not in entries:
                continue
            entry = entries[name]
            kind = entry[0]
            opts = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            out.append((name, kind, opts, section == "optional"))
    return out


def is_widget(kind: Any, opts: dict) -> bool:
    if isinstance(kind, list):  # V1 COMBO: the option list itself
        return True
    return kind in WIDGET_TYPES and not opts.get("forceInput", False)


def combo_options(kind: Any, opts: dict) -> Optional[list]:
    if isinstance(kind, list):
        return kind
    if kind == "COMBO":
        return opts.get("options")
    return None


def socket_type(kind: Any) -> str:
    return "COMBO" if isinstance(kind, list) else str(kind)


def has_seed_control(name: str, kind: Any, opts: dict) -> bool:
    """The frontend's rule (useIntWidget): ``control_after_generate`` when given, else the legacy names."""
    if kind != "INT":
        return False
    flag = opts.get("control_after_generate")
    return bool(flag) if flag is not None else name in SEED_NAMES


def default_value(kind: Any, opts: dict) -> Any:
    if "default" in opts:
        return opts["default"]
    options = combo_options(kind, opts)
    if options is not None:
        return options[0] if options else ""
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def output_slot(spec: dict, name: Union[str, int], node: Node) -> int:
    names = list(spec.get("output_name") or spec.get("output") or [])
    if isinstance(name, int):
        if not 0 <= name < len(names):
            raise ValueError(f"node {node.id} ({node.type}) has no output {name}")
        return name
    if name in names:
        return names.index(name)
    types = list(spec.get("output") or [])
    if types.count(name) == 1:
        return types.index(name)
    raise ValueError(f"node {node.id} ({node.type}) has no output {name!r}; outputs: {names}")


def display_name(spec: dict, type_: str) -> str:
    return spec.get("display_name") or type_


# --------------------------------------------------------------------------- resolution
@dataclass
class Resolved:
    """A node with every input resolved against /object_info: links (node id, slot) and widget values."""

    node: Node
    spec: dict
    links: dict  # input name -> (from node id, from slot)
    widgets: dict  # widget input name -> value (incl. linked widgets: their stored value)


def resolve(wf: Workflow, oi: dict) -> list[Resolved]:
    out = []
    for node in wf.nodes:
        if node.type in FRONTEND_ONLY:
            out.append(Resolved(node, {}, {}, {}))
            continue
        spec = oi.get(node.type)
        if spec is None:
            raise KeyError(f"{wf.name}: node type {node.type!r} is not in the object_info snapshot; "
                           "run with --refresh-object-info (is the node defined and importable?)")
        known = {name for name, *_ in ordered_inputs(spec)}
        unknown = set(node.inputs) - known
        if unknown:
            raise ValueError(f"{wf.name}: node {node.id} ({node.type}) has no input(s) {sorted(unknown)}; inputs: {sorted(known)}")
        links, widgets = {}, {}
        for name, kind, opts, optional in ordered_inputs(spec):
            value = node.inputs.get(name, None)
            if isinstance(value, Out):
                src_spec = oi[value.node.type]
                links[name] = (value.node.id, output_slot(src_spec, value.name, value.node))
                if is_widget(kind, opts):
                    widgets[name] = default_value(kind, opts)
                continue
            if is_widget(kind, opts):
                if name not in node.inputs:
                    value = default_value(kind, opts)
                options = combo_options(kind, opts)
                if options and value not in options and (node.type, name) not in FILE_INPUTS:
                    raise ValueError(f"{wf.name}: node {node.id} ({node.type}).{name} = {value!r} is not one of {options}")
                widgets[name] = value
            elif not optional:
                raise ValueError(f"{wf.name}: node {node.id} ({node.type}) needs its input {name!r} connected")
        out.append(Resolved(node, spec, links, widgets))
    return out


def title_of(r: Resolved) -> str:
    return r.node.title or display_name(r.spec, r.node.type)


# --------------------------------------------------------------------------- API format
def to_api(wf: Workflow, oi: dict) -> dict:
    """API format: {id: {"inputs", "class_type", "_meta": {"title"}}}, as the editor's "Export (API)" writes it."""
    api = {}
    for r in resolve(wf, oi):
        if r.node.type in FRONTEND_ONLY:
            continue
        inputs = {}
        for name, kind, opts, _optional in ordered_inputs(r.spec):
            if name in r.links:
                src, slot = r.links[name]
                inputs[name] = [str(src), slot]
            elif name in r.widgets:
                inputs[name] = r.widgets[name]
        api[str(r.node.id)] = {"inputs": inputs, "class_type": r.node.type, "_meta": {"title": title_of(r)}}
    return api


# --------------------------------------------------------------------------- UI format
def widget_values(r: Resolved) -> list:
    """``widgets_values`` as the frontend stores them (see the module docstring)."""
    if r.node.type in FRONTEND_ONLY:
        return list(r.node.widgets or [])
    vals = []
    for name, kind, opts, _optional in ordered_inputs(r.spec):
        if name not in r.widgets:
            continue
        vals.append(r.widgets[name])
        if has_seed_control(name, kind, opts):
            vals.append(SEED_CONTROL)
        if opts.get("image_upload"):
            vals.append("image")
    return vals + list(FRONTEND_TRAILING_WIDGETS.get(r.node.type, []))


def _multiline(r: Resolved) -> int:
    return sum(1 for name, kind, opts, _ in ordered_inputs(r.spec)
               if name in r.widgets and kind == "STRING" and opts.get("multiline") and name not in r.links)


def node_size(r: Resolved) -> list[float]:
    """A size at least as large as litegraph computes (title 30, slots 20, widgets 24, text boxes ~90)."""
    n = r.node
    if n.type in FRONTEND_ONLY:
        return [n.width or 360, n.height or 200]
    sockets = sum(1 for name, kind, opts, _ in ordered_inputs(r.spec) if not is_widget(kind, opts) or name in r.links)
    outs = len(r.spec.get("output") or [])
    n_widgets = len(widget_values(r))
    h = 10 + 22 * max(sockets, outs) + 26 * n_widgets + 70 * _multiline(r)
    if n.type in ("PreviewImage", "SaveImage", "LoadImage", "Preview3D"):
        h = max(h, 320)
    w = n.width or (400 if _multiline(r) else 330)
    return [w, n.height or max(h, 60)]


def layout(wf: Workflow, resolved: list[Resolved]) -> tuple[dict, list]:
    """Positions: groups left to right, columns inside a group, nodes stacked in declaration order."""
    pos: dict[int, list[float]] = {}
    sizes = {r.node.id: node_size(r) for r in resolved}
    groups = []
    x0 = 0.0
    gap_x, gap_y, title_h, pad = 40.0, 50.0, 30.0, 30.0
    for g, title in enumerate(wf.groups):
        members = [r for r in resolved if r.node.group == g]
        cols = sorted({r.node.col for r in members})
        x = x0 + pad
        bottom = 0.0
        for c in cols:
            in_col = [r for r in members if r.node.col == c]
            width = max(sizes[r.node.id][0] for r in in_col)
            y = 80.0 + title_h
            for r in in_col:
                pos[r.node.id] = [x, y]
                y += sizes[r.node.id][1] + title_h + gap_y * 0.5
            bottom = max(bottom, y)
            x += width + gap_x
        right = x - gap_x + pad
        groups.append({"id": g + 1, "title": title, "bounding": [x0, 0.0, right - x0, bottom + pad],
                       "color": GROUP_COLORS[g % len(GROUP_COLORS)], "font_size": 24, "flags": {}})
        x0 = right + 80.0
    loose = [r for r in resolved if r.node.group is None]
    y = 0.0
    for r in loose:  # e.g. notes outside every group: a column left of the first group
        pos[r.node.id] = [-(sizes[r.node.id][0] + 80.0), y + title_h]
        y += sizes[r.node.id][1] + title_h + gap_y
    return {k: (pos[k], sizes[k]) for k in pos}, groups


def topo_order(resolved: list[Resolved]) -> dict[int, int]:
    deps = {r.node.id: {src for src, _ in r.links.values()} for r in resolved}
    order, done = {}, set()
    while len(done) < len(deps):
        ready = sorted(n for n, d in deps.items() if n not in done and d <= done)
        if not ready:
            raise ValueError("the workflow has a cycle")
        for n in ready:
            order[n] = len(order)
            done.add(n)
    return order


def to_ui(wf: Workflow, oi: dict) -> dict:
    resolved = resolve(wf, oi)
    geom, groups = layout(wf, resolved)
    order = topo_order(resolved)
    links = []
    in_link: dict[tuple[int, str], int] = {}
    out_links: dict[tuple[int, int], list[int]] = {}
    for r in resolved:
        for name, kind, opts, _ in ordered_inputs(r.spec):
            if name not in r.links:
                continue
            src, slot = r.links[name]
            src_type = oi[wf.by_id(src).type]["output"][slot]
            link_id = len(links) + 1
            in_link[(r.node.id, name)] = link_id
            out_links.setdefault((src, slot), []).append(link_id)
            links.append([link_id, src, slot, r.node.id, None, src_type])  # target slot filled below
    nodes = []
    for r in resolved:
        n = r.node
        inputs, widget_inputs = [], []
        for name, kind, opts, optional in ordered_inputs(r.spec):
            entry: dict[str, Any] = {"name": name, "type": socket_type(kind)}
            if optional:
                entry["shape"] = 7
            if is_widget(kind, opts):
                if name in r.links:
                    entry["widget"] = {"name": name}
                    entry["link"] = in_link[(n.id, name)]
                    widget_inputs.append(entry)
                continue
            entry["link"] = in_link.get((n.id, name))
            inputs.append(entry)
        inputs += widget_inputs
        for slot, entry in enumerate(inputs):
            if entry["link"] is not None:
                links[entry["link"] - 1][4] = slot
        outputs = []
        if n.type not in FRONTEND_ONLY:
            names = r.spec.get("output_name") or r.spec.get("output") or []
            for slot, (oname, otype) in enumerate(zip(names, r.spec.get("output") or [])):
                outputs.append({"name": oname, "type": otype, "links": out_links.get((n.id, slot), []), "slot_index": slot})
        (x, y), size = geom[n.id]
        props: dict[str, Any] = {} if n.type in FRONTEND_ONLY else {"Node name for S&R": n.type}
        if not n.type.startswith(NODE_PREFIX) and n.type not in FRONTEND_ONLY:
            props["cnr_id"] = "comfy-core"
        models = [{"name": v, "url": MODEL_URLS[v][0], "directory": MODEL_URLS[v][1]}
                  for v in r.widgets.values() if isinstance(v, str) and v in MODEL_URLS]
        if models:
            props["models"] = models
        entry = {"id": n.id, "type": n.type, "pos": [x, y], "size": size, "flags": {}, "order": order[n.id], "mode": 0,
                 "inputs": inputs, "outputs": outputs, "properties": props, "widgets_values": widget_values(r)}
        if n.title:
            entry["title"] = n.title
        if n.color:
            entry["color"], entry["bgcolor"] = COLORS[n.color]
        nodes.append(entry)
    return {
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"comfyui-idsculpt/workflows/{wf.name}")),
        "revision": 0,
        "last_node_id": max(n.id for n in wf.nodes),
        "last_link_id": len(links),
        "nodes": nodes,
        "links": links,
        "groups": groups,
        "config": {},
        "extra": {"ds": {"scale": 0.45, "offset": [120, 80]}, "idsculpt": {"workflow": wf.name, "description": wf.description}},
        "version": 0.4,
    }


# --------------------------------------------------------------------------- the workflows
def _concat(wf: Workflow, a, b, delimiter: str, group: int, col: int, title: str) -> Node:
    return wf.add("StringConcatenate", title, group, col, string_a=a, string_b=b, delimiter=delimiter)


def view_prompts(wf: Workflow, prompt, clip, group: int, col: int, stage: str) -> dict:
    """The authors' view-dependent prompting as graph inputs: ``positive_<d>`` = prompt + ", <d> view" for the four
    directions, ``negative_back`` / ``negative_overhead`` = their replacement negatives (front and side views keep
    the node's plain negative). Returns the keyword inputs for the node."""
    out = {}
    for d, suffix in VIEW_SUFFIX.items():
        text = _concat(wf, prompt, suffix, ", ", group, col - 1, f"prompt: {stage} {suffix}")
        out[f"positive_{d}"] = wf.add("CLIPTextEncode", f"{stage} prompt ({d})", group, col, color="positive",
                                      text=text["STRING"], clip=clip)["CONDITIONING"]
    for d, text in (("back", BACK_NEGATIVE), ("overhead", OVERHEAD_NEGATIVE)):
        out[f"negative_{d}"] = wf.add("CLIPTextEncode", f"{stage} negative ({d})", group, col, color="negative",
                                      text=text, clip=clip)["CONDITIONING"]
    return out


def _reference_map(wf: Workflow, g: int, kind: str, ckpt: str, weight: float, text, aligned, canny, cn, adapter, face_id, col: int):
    """Canny -> canny ControlNet on the normal- (or depth-) adapted SD1.5 with the ID adapter -> KSampler -> image."""
    loader = wf.add("CheckpointLoaderSimple", f"{kind.capitalize()}-adapted SD1.5 (HumanNorm)", g, col, color="loader", ckpt_name=ckpt)
    model = wf.add("IDSculptApplyIDAdapter", f"ID adapter ({kind} map, weight {weight})", g, col, model=loader["MODEL"],
                   id_adapter=adapter, face_id=face_id, weight=weight, start_percent=0.0, end_percent=1.0, negative_branch="zero_id")
    pos = wf.add("CLIPTextEncode", f"{kind} map prompt", g, col + 1, color="positive", text=text, clip=loader["CLIP"])
    neg = wf.add("CLIPTextEncode", f"{kind} map negative", g, col + 1, color="negative", text=REF_NEGATIVE, clip=loader["CLIP"])
    ctl = wf.add("ControlNetApplyAdvanced", f"Canny control ({kind})", g, col + 1, positive=pos["CONDITIONING"],
                 negative=neg["CONDITIONING"], control_net=cn, image=canny, strength=1.0, start_percent=0.0, end_percent=1.0)
    latent = wf.add("EmptyLatentImage", f"{kind} map size (= aligned portrait, 512)", g, col + 2, width=512, height=512, batch_size=1)
    sampler = wf.add("KSampler", f"Reference {kind} map", g, col + 2, model=model["model"], seed=0, steps=REF_STEPS, cfg=REF_CFG,
                     sampler_name=SAMPLER, scheduler=SCHEDULER, positive=ctl["positive"], negative=ctl["negative"],
                     latent_image=latent["LATENT"], denoise=1.0)
    image = wf.add("VAEDecode", f"Decode {kind} map", g, col + 2, samples=sampler["LATENT"], vae=loader["VAE"])
    wf.add("PreviewImage", f"Reference {kind} map", g, col + 2, images=image["IMAGE"])
    return loader, image


def geometry_stages(wf: Workflow, schedule=DEFAULT_SCHEDULE) -> dict:
    """Stages 1 and 2 (portrait -> sculpted head) at ``schedule``'s step counts; returns the values the texture
    stage needs."""
    g1 = wf.group("1 · ID-aware initialisation: portrait → identity, PanoHead head mesh, 3D landmarks")
    wf.note(
        "## ID-Sculpt: portrait → 3D head\n\n"
        "1. **Load your portrait** (roughly frontal; with several faces, pick one with *ID Embed*'s face_index).\n"
        "2. **Describe the person** in *Caption* (hair, age, ...): every prompt is built from it.\n"
        "3. Models: `scripts/install_models.py` fetches them (docs/MODELS.md; or run the *IDSculpt Model Check* node).\n"
        "   Without PanoHead the *PanoHead Loader*'s `auto` starts from the template head (its info says so).\n\n"
        "Quick test: lower *DMTet Sculpt* steps / grid, *PanoHead Invert* steps and the KSampler steps "
        "(docs/WORKFLOWS.md).", g1, 0, width=360, height=300, title="Read me")
    caption = wf.add("PrimitiveStringMultiline", "Caption (describe the person)", g1, 0, color="caption", value=CAPTION)
    portrait = wf.add("LoadImage", "Portrait", g1, 0, image=PORTRAIT)
    insight = wf.add("IDSculptInsightFaceLoader", None, g1, 1, color="loader", model_name=INSIGHTFACE, provider="CPU")
    id_embed = wf.add("IDSculptIDEmbed", None, g1, 1, image=portrait["IMAGE"], insightface=insight["insightface"], face_index=0)
    wf.add("PreviewImage", "ArcFace crop", g1, 1, images=id_embed["aligned_face"])
    # auto: PanoHead when its release file is installed, else the procedural template head (the info says which)
    pano = wf.add("IDSculptPanoHeadLoader", None, g1, 2, color="loader", checkpoint="auto", vgg16="auto", lpips_weights="auto")
    invert = wf.add("IDSculptPanoHeadInvert", None, g1, 2, portrait=portrait["IMAGE"], panohead=pano["panohead"], init="auto",
                    w_steps=schedule.w_steps, pti_steps=schedule.pti_steps, mesh_resolution=512, mesh_level=20.0, view_resolution=256, seed=0,
                    face_index=0, face_id=id_embed["face_id"], landmarker_model="(none)")  # the face ID Embed chose
    wf.add("PreviewImage", "Aligned portrait (PanoHead crop)", g1, 2, images=invert["aligned_portrait"])
    lms = wf.add("IDSculptLandmarkRender", None, g1, 3, image=invert["aligned_portrait"], head_mesh=invert["head"],
                 reference_camera=invert["reference_camera"], face_index=0, preview_resolution=512, landmarker_model="(none)",
                 occlusion=False)
    wf.add("PreviewImage", "Landmarks on the head (ControlNet hints)", g1, 3, images=lms["preview"])
    adapter = wf.add("IDSculptIDAdapterLoader", None, g1, 3, color="loader", adapter_name=ID_ADAPTER)

    g2 = wf.group("2 · Geometry sculpting: reference normal + depth (ID-adapted SD1.5) → ISD guidance → DMTet")
    # prompts from the caption (docs/REFERENCE.md: "<caption>, black background, normal map" for the reference
    # maps; "a DSLR portrait of <caption>, black background, normal map" + view suffixes for ISD)
    p_normal = _concat(wf, caption["STRING"], REF_SUFFIX["normal"], ", ", g2, 0, "prompt: reference normal")
    p_depth = _concat(wf, caption["STRING"], REF_SUFFIX["depth"], ", ", g2, 0, "prompt: reference depth")
    subject = _concat(wf, "a DSLR portrait of", caption["STRING"], " ", g2, 0, "prompt: subject")
    p_isd = _concat(wf, subject["STRING"], "black background, normal map", ", ", g2, 0, "prompt: ISD")
    canny_cn = wf.add("ControlNetLoader", "Canny ControlNet", g2, 1, color="loader", control_net_name=CN_CANNY)
    canny = wf.add("Canny", "Canny edges (≈ OpenCV 100/200)", g2, 1, image=invert["aligned_portrait"],
                   low_threshold=CANNY_LOW, high_threshold=CANNY_HIGH)
    wf.add("PreviewImage", "Canny edges", g2, 1, images=canny["IMAGE"])
    normal_loader, normal_map = _reference_map(wf, g2, "normal", NORMAL_SD15, REF_ID_WEIGHT_NORMAL, p_normal["STRING"],
                                               invert["aligned_portrait"], canny["IMAGE"], canny_cn["CONTROL_NET"],
                                               adapter["id_adapter"], id_embed["face_id"], 2)
    _depth_loader, depth_map = _reference_map(wf, g2, "depth", DEPTH_SD15, REF_ID_WEIGHT_DEPTH, p_depth["STRING"],
                                              invert["aligned_portrait"], canny["IMAGE"], canny_cn["CONTROL_NET"],
                                              adapter["id_adapter"], id_embed["face_id"], 2)
    geo = wf.add("IDSculptGeoSupervision", None, g2, 5, portrait=invert["aligned_portrait"], reference_camera=invert["reference_camera"],
                 normal_map=normal_map["IMAGE"], depth_map=depth_map["IMAGE"], landmarks=lms["landmarks"],
                 depth_convention="near_is_bright", head_mask_source="portrait")
    wf.add("PreviewImage", "Reference geometry (normal, depth, masks)", g2, 5, images=geo["preview"])
    face_cn = wf.add("ControlNetLoader", "Landmark ControlNet (MediaPipe face)", g2, 6, color="loader", control_net_name=CN_FACE)
    isd_model = wf.add("IDSculptApplyIDAdapter", f"ID adapter (ISD, weight {ISD_ID_WEIGHT})", g2, 6, model=normal_loader["MODEL"],
                       id_adapter=adapter["id_adapter"], face_id=id_embed["face_id"], weight=ISD_ID_WEIGHT, start_percent=0.0,
                       end_percent=1.0, negative_branch="zero_id")
    isd_pos = wf.add("CLIPTextEncode", "ISD prompt", g2, 7, color="positive", text=p_isd["STRING"], clip=normal_loader["CLIP"])
    isd_neg = wf.add("CLIPTextEncode", "ISD negative", g2, 7, color="negative", text="", clip=normal_loader["CLIP"])
    views = view_prompts(wf, p_isd["STRING"], normal_loader["CLIP"], g2, 7, "ISD")
    vae = wf.add("VAELoader", "VAE sd-vae-ft-mse (ISD, as the authors)", g2, 6, color="loader", vae_name=VAE_FT_MSE)
    isd = wf.add("IDSculptISDGuidance", None, g2, 8, model=isd_model["model"], positive=isd_pos["CONDITIONING"],
                 negative=isd_neg["CONDITIONING"], vae=vae["VAE"], cfg=50.0, t_min=20, t_max=500, id_azimuth_limit=70.0,
                 control_net=face_cn["CONTROL_NET"], landmarks=lms["landmarks"], control_strength=1.0, anneal="none",
                 t_max_final=200, grad_clip=0.0, resolution=512, seed=0, estimator="authors", vae_posterior="sample", **views)
    sculpt = wf.add("IDSculptDMTetSculpt", None, g2, 8, head_mesh=invert["head"], reference_geometry=geo["reference_geometry"],
                    gan_views=invert["gan_views"], guidance=isd["guidance"], steps=schedule.sculpt_steps,
                    gan_steps=schedule.gan_steps, guidance_views=schedule.guidance_views, lr=schedule.sculpt_lr, seed=0)
    return {"caption": caption, "subject": subject, "portrait": portrait, "invert": invert, "id_embed": id_embed,
            "adapter": adapter, "sculpt": sculpt, "geo": geo, "g2": g2, "vae": vae}


#: The sculpt node's 8 views are shown, not saved: the saved GLB is the result, and scripts/run_pipeline.py renders
#: ``<glb>_turntable.png/.gif`` from it (a SaveImage here wrote 8 more files a run, numbered apart from the GLB's).
SCULPT_VIEWS_TITLE = "Sculpted head: 8 views (preview)"


def build_geometry() -> Workflow:
    wf = Workflow("geometry", "ID-Sculpt stages 1-2: one portrait -> sculpted, untextured head (GLB) + 8-view preview")
    s = geometry_stages(wf)
    g2 = s["g2"]
    wf.add("PreviewImage", SCULPT_VIEWS_TITLE, g2, 9, images=s["sculpt"]["preview"])
    save = wf.add("IDSculptSaveHead", None, g2, 9, head=s["sculpt"]["head"], filename_prefix="IDSculpt/head_geometry",
                  save_obj=False, reference_camera=s["sculpt"]["reference_camera"])
    wf.add("Preview3D", "3D view", g2, 9, model_file=save["model_file"])
    return wf


def build_full(name: str = "full", texture_ckpt: str = TEXTURE_SD15, style: Optional[str] = None,
               negative: str = AUTHORS_TEXTURE_NEGATIVE,
               description: str = "ID-Sculpt end to end: one portrait -> textured head (GLB)",
               schedule=DEFAULT_SCHEDULE) -> Workflow:
    """Stages 1-3. ``style`` None = the authors' texture prompt ("a DSLR portrait of <caption>") and negative.
    ``schedule``: the step counts (core/schedules.py)."""
    wf = Workflow(name, description)
    s = geometry_stages(wf, schedule)
    g2 = s["g2"]
    wf.add("PreviewImage", SCULPT_VIEWS_TITLE, g2, 9, images=s["sculpt"]["preview"])
    wf.add("IDSculptSaveHead", "Save sculpted head (untextured)", g2, 9, head=s["sculpt"]["head"],
           filename_prefix="IDSculpt/head_geometry", save_obj=False, reference_camera=s["sculpt"]["reference_camera"])

    g3 = wf.group("3 · Texture: progressive inpainting (ID adapter + normal ControlNet) → deblur → refinement → GLB")
    if style is None:
        p_tex = s["subject"]
    else:
        p_tex = _concat(wf, s["subject"]["STRING"], style, ", ", g3, 0, "prompt: texture (edit the style here)")
    loader = wf.add("CheckpointLoaderSimple", "Texture model (any SD1.5: swap it to restyle)", g3, 1, color="loader", ckpt_name=texture_ckpt)
    model = wf.add("IDSculptApplyIDAdapter", f"ID adapter (texture, weight {TEXTURE_ID_WEIGHT})", g3, 1, model=loader["MODEL"],
                   id_adapter=s["adapter"]["id_adapter"], face_id=s["id_embed"]["face_id"], weight=TEXTURE_ID_WEIGHT,
                   start_percent=0.0, end_percent=1.0, negative_branch="zero_id")
    cn = wf.add("ControlNetLoader", "Normal ControlNet (normalbae)", g3, 1, color="loader", control_net_name=CN_NORMALBAE)
    upscaler = wf.add("UpscaleModelLoader", "RealESRGAN x2 (texture deblur)", g3, 1, color="loader", model_name=REALESRGAN_X2)
    pos = wf.add("CLIPTextEncode", "Texture prompt", g3, 2, color="positive", text=p_tex["STRING"], clip=loader["CLIP"])
    neg = wf.add("CLIPTextEncode", "Texture negative", g3, 2, color="negative", text=negative, clip=loader["CLIP"])
    views = view_prompts(wf, p_tex["STRING"], loader["CLIP"], g3, 2, "texture")
    sculpt = s["sculpt"]
    # the sculpted head and the portrait's camera in the authors' normalised frame: every texture camera
    # (radius 3.8 / 2.5-3.5) assumes a head of max |coordinate| 0.9
    common = dict(model=model["model"], positive=pos["CONDITIONING"], negative=neg["CONDITIONING"], vae=s["vae"]["VAE"],
                  control_net=cn["CONTROL_NET"], reference_image=s["invert"]["aligned_portrait"],
                  reference_camera=sculpt["reference_camera"], reference_mask=s["geo"]["head_mask"],
                  seed=0, steps=20, cfg=10.0, sampler_name=SAMPLER, scheduler=SCHEDULER, control_strength=1.0, resolution=512,
                  **views)
    inpaint = wf.add("IDSculptProgressiveInpaint", None, g3, 3, head=sculpt["head"], denoise=0.95, texture_size="1024",
                     max_faces=100000, view_plan="default", erode_iterations=8, cos_threshold=0.0, policy="first",
                     upscale_model=upscaler["UPSCALE_MODEL"], **common)
    wf.add("PreviewImage", "Inpainted views", g3, 3, images=inpaint["views"])
    refine = wf.add("IDSculptTextureRefine", None, g3, 4, head=inpaint["head"], refine_steps=schedule.refine_steps, denoise_batch=schedule.denoise_batch, t_min=50, t_max=200,
                    learning_rate=0.02, perceptual_model=VGG16, lpips_weights="auto", **{**common, "steps": schedule.refine_sampler_steps})
    wf.add("PreviewImage", "Texture (UV)", g3, 4, images=refine["texture"])
    save = wf.add("IDSculptSaveHead", "Save textured head", g3, 5, head=refine["head"], filename_prefix=f"IDSculpt/head_{name}",
                  save_obj=False, reference_camera=sculpt["reference_camera"])
    wf.add("Preview3D", "3D view", g3, 5, model_file=save["model_file"])
    return wf


def build_full_paper() -> Workflow:
    """``full`` at the paper's step schedule (core/schedules.py PAPER: 6000 sculpt steps with one view per ISD step):
    the authors' run (four times the sculpt steps)."""
    return build_full("full_paper", description="ID-Sculpt end to end at the paper's step schedule (the authors' run; "
                      "the default full workflow spreads the same ISD views over fewer steps)", schedule=SCHEDULES.PAPER)


def build_full_stylised() -> Workflow:
    return build_full("full_stylised", STYLISED_SD15, TEXTURE_STYLE_PAINTERLY, STYLISED_NEGATIVE,
                      "ID-Sculpt end to end with a stylised texture model (identity kept by the ID adapter)")


def build_full_multiphoto() -> Workflow:
    """The full workflow from three photos of one person (issue 23; beyond the paper): Portrait (the reference
    view) + Photo 2 + Photo 3 joined by core Image Batch nodes (which resize each added photo to the Portrait's
    size) feed ID Embed (same-person check, one set of ID tokens per kept photo) and PanoHead Invert (which
    aligns the photo ID Embed's reference_index marks)."""
    wf = build_full("full_multiphoto", description="ID-Sculpt end to end from several photos of one person "
                    "(Portrait = reference view; FaceID Portrait gets 16 ID tokens per photo) -> textured head (GLB)")
    portrait = next(n for n in wf.nodes if n.type == "LoadImage" and n.title == "Portrait")
    g1 = portrait.group
    # the extra photos, in ComfyUI's input folder like PORTRAIT
    photo2 = wf.add("LoadImage", "Photo 2 (same person)", g1, 0, image="portrait_2.jpg")
    photo3 = wf.add("LoadImage", "Photo 3 (same person)", g1, 0, image="portrait_3.jpg")
    batch2 = wf.add("ImageBatch", "Portrait + photo 2", g1, 0, image1=portrait["IMAGE"], image2=photo2["IMAGE"])
    photos = wf.add("ImageBatch", "Photos (Portrait first)", g1, 0, image1=batch2["IMAGE"], image2=photo3["IMAGE"])
    for node in wf.nodes:
        if node.type == "IDSculptIDEmbed":
            node.inputs.update(image=photos["IMAGE"], reference_index=0, same_person_threshold=0.3)
        elif node.type == "IDSculptPanoHeadInvert":
            node.inputs.update(portrait=photos["IMAGE"])  # picks face_id's reference photo from the batch
    return wf



def build_full_from_mesh() -> Workflow:
    """``full`` started from a head mesh the user brings (beyond the paper, docs/PANOHEAD.md "Starting from any
    head mesh"): Load Head takes the PanoHead Loader's place and Place Head Mesh PanoHead Invert's, with the same
    outputs, so stages 2-3 are unchanged. A core MESH (another generator, Load 3D) goes into Place Head Mesh's
    ``mesh`` input instead."""
    head_glb = "head_mesh.glb"
    wf = build_full("full_from_mesh", description="ID-Sculpt end to end from your own head mesh (GLB/OBJ, or a core MESH "
                    "from another generator) placed on the portrait by its face landmarks -> textured head (GLB)")
    loader = next(n for n in wf.nodes if n.type == "IDSculptPanoHeadLoader")
    invert = next(n for n in wf.nodes if n.type == "IDSculptPanoHeadInvert")
    loader.type, loader.title, loader.inputs = "IDSculptLoadHead", f"Your head mesh (put {head_glb} into input/)", {"file": head_glb}
    invert.type, invert.title = "IDSculptPlaceHeadMesh", None
    invert.inputs = {"portrait": invert.inputs["portrait"], "head": loader["head"], "up_axis": "+y", "front_axis": "+z",
                     "view_resolution": 256, "face_index": 0, "face_id": invert.inputs["face_id"], "landmarker_model": "(none)"}
    wf.groups[invert.group] = "1 · Initialisation from your head mesh: portrait → identity, mesh placed by its face landmarks"
    note = next(n for n in wf.nodes if n.type == "MarkdownNote")
    note.widgets = [note.widgets[0].replace(
        "   Without PanoHead the *PanoHead Loader*'s `auto` starts from the template head (its info says so).\n",
        f"4. **Your head mesh**: put a GLB/OBJ into ComfyUI's input folder and pick it in *Load Head* ({head_glb} here), "
        "or feed a core MESH (TRELLIS, Hunyuan3D, Load 3D) into *Place Head Mesh*'s `mesh`. Its face must look along "
        "`front_axis` with the top of the head toward `up_axis` (glTF: +z, +y).\n")]
    return wf



WORKFLOWS = {"geometry": build_geometry, "full": build_full, "full_paper": build_full_paper, "full_stylised": build_full_stylised,
             "full_multiphoto": build_full_multiphoto, "full_from_mesh": build_full_from_mesh}


# --------------------------------------------------------------------------- quick-test patching
#: Inputs lowered for a smoke run (CPU, random-weight models): every stage runs, in seconds to minutes.
QUICK_TEST = {
    "IDSculptPanoHeadInvert": {"w_steps": 1, "pti_steps": 1, "mesh_resolution": 64, "view_resolution": 32},
    "IDSculptPlaceHeadMesh": {"view_resolution": 32},
    "EmptyLatentImage": {"width": 64, "height": 64},
    "KSampler": {"steps": 2},
    "IDSculptLandmarkRender": {"preview_resolution": 64},
    "IDSculptISDGuidance": {"resolution": 64},
    "IDSculptDMTetSculpt": {"steps": 4, "gan_steps": 2, "grid_resolution": 32, "render_resolution": 64},
    "IDSculptProgressiveInpaint": {"steps": 2, "texture_size": "512", "resolution": 64, "max_faces": 5000,
                                   "view_plan": "-15, 0; -15, 90; -15, -90; -15, 180"},
    "IDSculptTextureRefine": {"steps": 2, "refine_steps": 2, "resolution": 64},
}
TEMPLATE_HEAD = {"IDSculptPanoHeadLoader": {"checkpoint": "none (template head)", "vgg16": "none"},
                 "IDSculptPanoHeadInvert": {"init": "template"}}


def patch_inputs(api: dict, by_class: dict) -> list[str]:
    """Set ``{class_type: {input: value}}`` on every node of that class in an API prompt (in place);
    returns ``NODE_ID.INPUT=VALUE`` lines (the same edits as ``scripts/run_pipeline.py --set``).
    Only literal inputs are replaced: an input fed by a link is an error (the graph would change)."""
    edits = []
    for nid, node in sorted(api.items(), key=lambda kv: int(kv[0]) if kv[0].isdigit() else kv[0]):
        for name, value in by_class.get(node.get("class_type"), {}).items():
            old = node["inputs"].get(name)
            if isinstance(old, list):
                raise ValueError(f"node {nid} ({node['class_type']}).{name} is a link; patching it would change the graph")
            node["inputs"][name] = value
            edits.append(f"{nid}.{name}={json.dumps(value)}")
    return edits


def quick_test_prompt(api: dict, template: bool = False, extra: Optional[dict] = None) -> dict:
    """A copy of an API workflow with steps and resolutions lowered (``QUICK_TEST``), optionally with the
    template head instead of PanoHead (``TEMPLATE_HEAD``) and more ``{class_type: {input: value}}`` edits."""
    out = copy.deepcopy(api)
    patch_inputs(out, QUICK_TEST)
    if template:
        patch_inputs(out, TEMPLATE_HEAD)
    if extra:
        patch_inputs(out, extra)
    return out


# --------------------------------------------------------------------------- snapshot + I/O
def needed_types() -> list[str]:
    types = set()
    for build in WORKFLOWS.values():
        types |= {n.type for n in build().nodes}
    return sorted(types - FRONTEND_ONLY)


def load_snapshot(path: str = SNAPSHOT) -> dict:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise SystemExit(f"{path} missing: run `python scripts/make_workflows.py --refresh-object-info` with a ComfyUI") from None
    return data["nodes"]


def snapshot_entry(spec: dict) -> dict:
    """What the generator and the tests use of one /object_info entry (tooltips and descriptions dropped)."""
    keep = {k: copy.deepcopy(spec[k]) for k in ("input", "input_order", "output", "output_name", "output_is_list",
                                                "output_node", "display_name", "category", "python_module") if k in spec}
    for section in ("required", "optional"):
        for name, entry in (keep.get("input", {}).get(section) or {}).items():
            if len(entry) > 1 and isinstance(entry[1], dict):
                entry[1] = {k: v for k, v in entry[1].items() if k not in ("tooltip",)}
    if "input" in keep:
        keep["input"] = {k: v for k, v in keep["input"].items() if k in ("required", "optional")}
    return keep


def refresh_snapshot(comfy_path: Optional[str], python: Optional[str]) -> dict:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    import comfy_harness as ch

    comfy_path = comfy_path or ch.find_comfyui()  # COMFYUI_PATH, else the ComfyUI this pack is installed in
    if comfy_path is None:
        raise SystemExit("--refresh-object-info needs a ComfyUI checkout: pass --comfyui /path/to/ComfyUI or set "
                         "COMFYUI_PATH (or install this pack under <ComfyUI>/custom_nodes)")
    py = python or ch.find_comfy_python(comfy_path)
    root = tempfile.mkdtemp(prefix="idsculpt_wf_")
    try:
        server = ch.ComfyServer(comfy_path, py, ch.ComfySandbox(root)).start()
        try:
            oi = server.object_info()
            errors = ch.pack_import_errors(server.log())
        finally:
            server.stop()
    finally:
        shutil.rmtree(root, ignore_errors=True)  # the sandbox (base directory, model folders, the pack's link)
    if errors:
        raise SystemExit("the pack did not import cleanly:\n" + "\n".join(errors))
    types = needed_types()
    missing = [t for t in types if t not in oi]
    if missing:
        raise SystemExit(f"ComfyUI has no node type(s) {missing}: are the node files in place?")
    snap = {"comfyui": ch.comfyui_version(comfy_path), "note": "entries of /object_info the workflows use; "
            "regenerate: python scripts/make_workflows.py --refresh-object-info",
            "nodes": {t: snapshot_entry(oi[t]) for t in types}}
    os.makedirs(API_DIR, exist_ok=True)
    with open(SNAPSHOT, "w", encoding="utf-8") as fh:
        json.dump(snap, fh, indent=1, ensure_ascii=False, sort_keys=True)
        fh.write("\n")
    return snap["nodes"]


def api_path(name: str, folder: str = WORKFLOW_DIR) -> str:
    """The API twin of workflow ``name`` (``workflows/api/<name>.json``)."""
    return os.path.join(folder, API_SUBDIR, f"{name}.json")


def render_all(oi: dict) -> dict[str, str]:
    """path relative to workflows/ -> text, for every workflow (UI + API)."""
    files = {}
    for name, build in WORKFLOWS.items():
        wf = build()
        files[f"{name}.json"] = json.dumps(to_ui(wf, oi), indent=1, ensure_ascii=False) + "\n"
        files[f"{API_SUBDIR}/{name}.json"] = json.dumps(to_api(wf, oi), indent=1, ensure_ascii=False) + "\n"
    return files


def stray_templates(folder: str = WORKFLOW_DIR) -> list[str]:
    """``.json`` files directly in ``folder`` that are not generated UI workflows: ComfyUI would list them as
    templates (e.g. the ``<name>_api.json`` twins and ``_object_info.json`` of the old layout)."""
    if not os.path.isdir(folder):
        return []
    ui = {f"{name}.json" for name in WORKFLOWS}
    return sorted(f for f in os.listdir(folder) if f.endswith(".json") and f not in ui and os.path.isfile(os.path.join(folder, f)))


#: what the old layout wrote directly in workflows/ (removed when the files are written)
def _old_layout(fname: str) -> bool:
    return fname == "_object_info.json" or any(fname == f"{name}_api.json" for name in WORKFLOWS)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--refresh-object-info", action="store_true", help="re-read /object_info from a headless ComfyUI first")
    ap.add_argument("--comfyui", default=None, help="ComfyUI checkout for --refresh-object-info (default: COMFYUI_PATH, "
                    "else the ComfyUI this pack is installed in)")
    ap.add_argument("--python", default=None, help="ComfyUI's Python (default: found like the test harness does)")
    ap.add_argument("--check", action="store_true", help="write nothing; exit 1 when a workflow file is out of date")
    ap.add_argument("--out", default=WORKFLOW_DIR, help="output folder (default workflows/)")
    ap.add_argument("--quick", choices=sorted(WORKFLOWS), help="write a lowered copy of this API twin instead (see QUICK_TEST)")
    ap.add_argument("--template", action="store_true", help="with --quick: the template head instead of PanoHead")
    ap.add_argument("--quick-out", help="with --quick: output file (default: stdout)")
    args = ap.parse_args(argv)
    if args.quick:
        with open(api_path(args.quick), encoding="utf-8") as fh:
            api = quick_test_prompt(json.load(fh), template=args.template)
        text = json.dumps(api, indent=1, ensure_ascii=False) + "\n"
        if args.quick_out:
            with open(args.quick_out, "w", encoding="utf-8") as fh:
                fh.write(text)
        else:
            sys.stdout.write(text)
        return 0
    oi = refresh_snapshot(args.comfyui, args.python) if args.refresh_object_info else load_snapshot()
    files = render_all(oi)
    stale = []
    for fname, text in files.items():
        path = os.path.join(args.out, fname)
        old = open(path, encoding="utf-8").read() if os.path.isfile(path) else None
        if old != text:
            stale.append(fname)
            if not args.check:
                os.makedirs(os.path.dirname(path), exist_ok=True)
                with open(path, "w", encoding="utf-8") as fh:
                    fh.write(text)
    stray = stray_templates(args.out)
    if not args.check:
        for fname in [f for f in stray if _old_layout(f)]:
            os.remove(os.path.join(args.out, fname))
            print(f"removed {fname} (now under {API_SUBDIR}/)")
        stray = stray_templates(args.out)
    if stray:  # ComfyUI would list them in its template browser beside the workflows
        print(f"not a generated UI workflow, but in {args.out} (ComfyUI lists it as a template): {', '.join(stray)}")
    if args.check:
        if stale:
            print("out of date: " + ", ".join(stale) + " (run python scripts/make_workflows.py)")
        if stale or stray:
            return 1
        print("workflows up to date")
        return 0
    print(f"wrote {len(stale)} file(s): {', '.join(stale) or 'none changed'}")
    return 1 if stray else 0


if __name__ == "__main__":
    sys.exit(main())
