#!/usr/bin/env python3
"""One command: portrait in, head GLB + turntable out, through a headless ComfyUI.

    python scripts/run_pipeline.py --comfyui /path/to/ComfyUI --portrait face.jpg --out result/
        [--quick] [--workflow workflows/api/full.json] [--extra-model-paths-config YAML] [--python PYTHON]
        [--set NODE_ID.INPUT=VALUE ...] [--models auto|geometry|full|all|none] [--url http://host:port]
        [--cpu | --gpu]

--quick, the first run for a new user: the whole graph with random-weight stand-ins of every model
(tests/build_test_models.py --size small, built once into --test-models, default
~/.cache/comfyui-idsculpt/test_models: ~2.2 GB, 1-2 min) and lowered steps/resolutions
(scripts/make_workflows.py QUICK_TEST) on the template head; a few minutes on a 2-core CPU. The GLB
shows that everything runs, not a likeness (random weights). Nothing of the real models is needed.

Steps:
 1. picks ComfyUI's Python: --python; else the Python running this script if it imports ComfyUI
    (torch, aiohttp, yaml, PIL, safetensors and the checkout's comfy package); else ComfyUI's venv
    ($IDSCULPT_COMFY_PYTHON, <ComfyUI>/../comfyvenv, <ComfyUI>/venv, .venv, python_embeded); and adds
    --cpu by itself when that Python's torch has no GPU (CUDA/ROCm, MPS or XPU); --gpu turns that off;
 2. model check (core/models.py, with ComfyUI's own folder resolution): stops with the table, exit
    code 1, before anything heavy when a required file is missing; also checks every model file the
    workflow names in a loader input (ckpt_name, control_net_name, ...), and that the pack's Python
    packages import in ComfyUI's Python (core/dependencies.py: names the module really missing);
 3. starts ComfyUI headless (``main.py --disable-auto-launch``, its log in <out>/comfyui.log), or
    uses the running server given with --url;
 4. uploads the portrait into ComfyUI's input folder and points the workflow's LoadImage node at
    it, applies the --set overrides, and queues the API-format workflow;
 5. prints progress (node being run, its step counter) from ComfyUI's websocket, then a table of the
    seconds each IDSculpt node and KSampler took (from the websocket's node start events);
 6. copies every GLB the ``IDSculptSaveHead`` nodes wrote into --out, renders a turntable from it
    with core.render: ``<name>_turntable.png`` (a strip of views) and ``<name>_turntable.gif``, and
    lists the files written (here and in ComfyUI's output folder).

--set NODE.INPUT=VALUE: NODE is a node id or a class_type (every node of that class); values are parsed
as JSON when they parse (numbers, true/false, ["4", 0] links), else kept as strings:
``--set 12.steps=2000 --set KSampler.steps=20 --set 2.value="a man with short grey hair"``.
The workflow is any API-format graph ("Save (API)" in ComfyUI) with a LoadImage node and an
IDSculpt Save Head node.

Exit codes: 0 ok; 1 required model file or Python package missing; 2 bad arguments / workflow / no
Python that runs ComfyUI; 3 ComfyUI failed.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import check_models  # noqa: E402  (scripts/ sibling)
from comfy_server import ComfyError, ComfyServer  # noqa: E402
from workflow_file import read_workflow  # noqa: E402

SAVE_HEAD = "IDSculptSaveHead"
LOAD_IMAGE = "LoadImage"
#: loader inputs that name a model file, and the ComfyUI folder key each one reads
MODEL_INPUTS = {"ckpt_name": "checkpoints", "control_net_name": "controlnet", "vae_name": "vae", "unet_name": "diffusion_models",
                "lora_name": "loras", "model_name": None, "adapter_name": "ipadapter", "clip_name": "text_encoders"}
CLASS_FOLDERS = {"UpscaleModelLoader": "upscale_models", "CLIPVisionLoader": "clip_vision"}


class UsageError(ValueError):
    pass


# --------------------------------------------------------------------------- workflow
def load_workflow(path: str) -> dict:
    """Read an API-format workflow; a UI-format file is refused with its API twin named."""
    try:
        kind, wf = read_workflow(path)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if kind == "ui":
        twin = os.path.join(os.path.dirname(os.path.abspath(path)), "api", os.path.basename(path))
        hint = f"use its API twin {twin}" if os.path.isfile(twin) else "export it with 'Save (API)' in ComfyUI"
        raise UsageError(f"{path} is a UI workflow (for the editor); {hint}")
    if kind != "api":
        raise UsageError(f"{path} is not an API-format workflow (node id -> {{class_type, inputs}})")
    return wf


def nodes_of(wf: dict, class_type: str) -> list[str]:
    return [k for k, v in wf.items() if v.get("class_type") == class_type]


def portrait_node(wf: dict, node_id: Optional[str] = None) -> str:
    """The LoadImage node that takes the portrait: --portrait-node, else the only LoadImage, else the
    one whose title mentions 'portrait'."""
    if node_id is not None:
        if node_id not in wf:
            raise UsageError(f"--portrait-node {node_id} is not a node of the workflow")
        return node_id
    ids = nodes_of(wf, LOAD_IMAGE)
    if not ids:
        raise UsageError("the workflow has no LoadImage node for the portrait")
    if len(ids) > 1:
        titled = [i for i in ids if "portrait" in str(wf[i].get("_meta", {}).get("title", "")).lower()]
        if len(titled) != 1:
            raise UsageError(f"the workflow has {len(ids)} LoadImage nodes ({', '.join(ids)}); name the portrait's with --portrait-node")
        ids = titled
    return ids[0]


def parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def apply_overrides(wf: dict, overrides: Sequence[str]) -> dict:
    """``NODE.INPUT=VALUE`` edits. NODE is a node id, or a class_type (then every node of that class
    is edited: ``KSampler.steps=1``); it is everything before the last '.'."""
    for item in overrides:
        target, sep, value = item.partition("=")
        node, dot, name = target.rpartition(".")
        if not sep or not dot or not node or not name:
            raise UsageError(f"--set {item!r}: expected NODE.INPUT=VALUE (NODE = node id or class_type)")
        ids = [node] if node in wf else nodes_of(wf, node)
        if not ids:
            raise UsageError(f"--set {item!r}: {node!r} is neither a node id nor a node class of the workflow "
                             f"(ids: {', '.join(sorted(wf)[:30])})")
        for nid in ids:
            wf[nid].setdefault("inputs", {})[name] = parse_value(value)
    return wf


def referenced_models(wf: dict) -> list[tuple[str, str, str]]:
    """(node id, folder key, file name) for every loader input that names a model file."""
    out = []
    for nid, node in wf.items():
        for name, value in (node.get("inputs") or {}).items():
            if not isinstance(value, str) or name not in MODEL_INPUTS:
                continue
            folder = CLASS_FOLDERS.get(node["class_type"]) or MODEL_INPUTS[name]
            if folder is None:  # a generic "model_name": only known loaders
                continue
            out.append((nid, folder, value))
    return out


def infer_models_workflow(wf: dict) -> str:
    """'full' when the graph textures the head (a node class with 'Texture' in its name), else 'geometry'."""
    if any("texture" in str(n.get("class_type", "")).lower() for n in wf.values()):
        return "full"
    return "geometry"


# --------------------------------------------------------------------------- ComfyUI's Python
#: Runs in a candidate Python with cwd = the ComfyUI checkout: the packages main.py imports first plus the
#: checkout's own ``comfy`` package and ``folder_paths`` (no model code, no server): decisive (a Python
#: that passes starts ComfyUI) and cheap (~torch's import time). Prints one JSON line.
_PYTHON_PROBE = r"""
import json, sys
sys.path.insert(0, sys.argv[1])
out = {"ok": False}
try:
    import torch, aiohttp, yaml, PIL, safetensors
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args, folder_paths
    mps = getattr(torch.backends, "mps", None)
    xpu = getattr(torch, "xpu", None)
    out = {"ok": True, "torch": torch.__version__, "cuda": bool(torch.cuda.is_available()),
           "mps": bool(mps is not None and mps.is_available()), "xpu": bool(xpu is not None and xpu.is_available())}
except ModuleNotFoundError as e:
    out["missing"] = e.name
    out["error"] = f"No module named {e.name!r}"
except Exception as e:
    out["error"] = f"{type(e).__name__}: {e}"
print("IDSCULPT_PROBE=" + json.dumps(out))
"""


@dataclass
class PythonProbe:
    python: str
    ok: bool
    error: str = ""
    info: dict = field(default_factory=dict)

    @property
    def has_gpu(self) -> bool:
        """torch sees an accelerator ComfyUI uses without --cpu (CUDA/ROCm, Apple MPS, Intel XPU)."""
        return bool(self.info.get("cuda") or self.info.get("mps") or self.info.get("xpu"))


def probe_python(python: str, comfy_path: str, timeout: float = 180.0) -> PythonProbe:
    """Can ``python`` run ComfyUI from ``comfy_path``, and does its torch see a GPU?"""
    try:
        r = subprocess.run([python, "-c", _PYTHON_PROBE, os.path.abspath(comfy_path)], capture_output=True, text=True,
                           timeout=timeout, cwd=comfy_path)
    except (OSError, subprocess.SubprocessError) as exc:
        return PythonProbe(python, False, f"{type(exc).__name__}: {exc}")
    for line in r.stdout.splitlines():
        if line.startswith("IDSCULPT_PROBE="):
            info = json.loads(line.split("=", 1)[1])
            return PythonProbe(python, bool(info.get("ok")), info.get("error", ""), info)
    tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or [f"exit code {r.returncode}"]
    return PythonProbe(python, False, tail[0])


def choose_python(comfy_path: str, explicit: Optional[str] = None,
                  probe: Callable[[str, str], PythonProbe] = probe_python) -> tuple[Optional[PythonProbe], str]:
    """(probe of the chosen Python or None, why). Order: ``explicit`` (--python); the Python running
    this script when it imports ComfyUI; else ``check_models.find_comfy_python`` ($IDSCULPT_COMFY_PYTHON,
    a venv beside/inside the checkout, python_embeded)."""
    if explicit:
        p = probe(explicit, comfy_path)
        why = "given with --python" + ("" if p.ok else f", although it cannot import ComfyUI ({p.error})")
        return p, why
    here = probe(sys.executable, comfy_path)
    if here.ok:
        return here, "the Python running this script imports ComfyUI"
    other = check_models.find_comfy_python(comfy_path)
    if os.path.abspath(other) != os.path.abspath(sys.executable):  # not realpath: a venv python is a symlink to its base
        found = probe(other, comfy_path)
        if found.ok:
            return found, f"the Python running this script cannot run ComfyUI ({here.error}); found ComfyUI's venv"
        return None, (f"neither the Python running this script ({sys.executable}: {here.error}) nor the one found for "
                      f"ComfyUI ({other}: {found.error}) can run ComfyUI")
    return None, (f"the Python running this script ({sys.executable}) cannot run ComfyUI ({here.error}) and no ComfyUI "
                  f"venv was found (looked for $IDSCULPT_COMFY_PYTHON, <ComfyUI>/../comfyvenv, <ComfyUI>/venv, <ComfyUI>/.venv, "
                  f"python_embeded)")


def cpu_decision(probe: Optional[PythonProbe], cpu: bool, gpu: bool, url: Optional[str]) -> tuple[bool, str]:
    """(pass --cpu to ComfyUI?, why). --cpu forces it, --gpu forbids it; else it is added when the
    chosen Python's torch sees no GPU (ComfyUI would stop with "Found no NVIDIA driver")."""
    if url:
        return False, "using a running ComfyUI (--url): its own settings apply"
    if cpu:
        return True, "--cpu given"
    if gpu:
        return False, "--gpu given: no --cpu added"
    if probe is None or not probe.info:
        return False, "GPU not probed"
    if probe.has_gpu:
        kind = "CUDA" if probe.info.get("cuda") else "MPS" if probe.info.get("mps") else "XPU"
        return False, f"torch {probe.info.get('torch')} sees a GPU ({kind})"
    return True, f"torch {probe.info.get('torch')} in {probe.python} has no CUDA/MPS/XPU device: adding --cpu (--gpu to not)"


# --------------------------------------------------------------------------- quick mode (random-weight test models)
DEFAULT_TEST_MODELS = os.path.join(os.path.expanduser("~"), ".cache", "comfyui-idsculpt", "test_models")
BUILDER = os.path.join(ROOT, "tests", "build_test_models.py")
#: builder key -> the table keys it covers (the insightface pack holds detector + recogniser)
_BUILDER_COVERS = {"insightface": ("insightface_det", "insightface_rec")}


def _make_workflows():
    if "make_workflows" not in sys.modules:
        import make_workflows  # noqa: F401  (scripts/ sibling; plain Python, no torch)
    return sys.modules["make_workflows"]


def quick_workflow(wf: dict) -> dict:
    """The workflow with make_workflows.QUICK_TEST's lowered settings on the template head (the random
    PanoHead stand-in has no surface to mesh, and the template keeps the run to seconds per stage)."""
    return _make_workflows().quick_test_prompt(wf, template=True)


def quick_model_keys(wf: dict) -> list[str]:
    """Builder keys (tests/build_test_models.py) of the model files ``wf`` loads: every table model whose
    file name appears as an input value, plus the insightface pack when an InsightFace loader is there."""
    models = check_models.load_models_module()
    values = {v.replace("\\", "/") for n in wf.values() for v in (n.get("inputs") or {}).values() if isinstance(v, str)}
    keys = []
    for key in _builder_keys():
        table_keys = _BUILDER_COVERS.get(key, (key,))
        names = {models.get_spec(k).filename for k in table_keys}
        if key == "insightface":
            hit = any("InsightFace" in n.get("class_type", "") for n in wf.values())
        else:
            hit = bool(names & values)
        if hit:
            keys.append(key)
    return keys


def _builder_keys() -> list[str]:
    """The builder's model keys, read from its SEED_OFFSET table without importing it (it imports torch)."""
    import ast

    with open(BUILDER, encoding="utf-8") as fh:
        tree = ast.parse(fh.read())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "SEED_OFFSET" for t in node.targets):
            return [k.value for k in node.value.keys]
    raise RuntimeError(f"{BUILDER} has no SEED_OFFSET table")


def quick_model_files(models_dir: str, keys: Sequence[str]) -> list[str]:
    """Paths the builder writes for ``keys`` (as tests/build_test_models.target_path lays them out)."""
    models = check_models.load_models_module()
    out = []
    for key in keys:
        if key == "insightface":
            d = os.path.join(models_dir, "insightface", "models", "buffalo_l")
            out += [os.path.join(d, "det_10g.onnx"), os.path.join(d, "w600k_r50.onnx")]
        else:
            spec = models.get_spec(key)
            out.append(os.path.join(models_dir, spec.folder, *spec.filename.split("/")))
    return out


def ensure_test_models(models_dir: str, keys: Sequence[str], python: str, comfy_path: str, log=print) -> None:
    """Build the missing stand-ins with tests/build_test_models.py --size small (in ComfyUI's Python:
    it uses ComfyUI's own model classes); files already there are reused."""
    missing = [k for k in keys if not all(os.path.isfile(f) for f in quick_model_files(models_dir, [k]))]
    if not missing:
        log(f"test models: reusing {models_dir}")
        return
    log(f"test models: building {', '.join(missing)} into {models_dir} (once; about 1-2 min and 0.6 GB per SD1.5 checkpoint)")
    cmd = [python, BUILDER, "--models-dir", models_dir, "--size", "small", "--comfyui", os.path.abspath(comfy_path),
           "--only", ",".join(missing)]
    r = subprocess.run(cmd, text=True, capture_output=True)
    if r.returncode != 0:
        raise UsageError(f"building the test models failed (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")


def write_quick_yaml(models_dir: str, keys: Sequence[str], path: str) -> str:
    """An extra_model_paths YAML that puts the stand-ins FIRST in each folder they use (is_default), so
    the quick run takes them even where real models of the same names are installed."""
    folders = sorted({os.path.relpath(os.path.dirname(f), models_dir).split(os.sep)[0] for f in quick_model_files(models_dir, keys)})
    lines = ["# written by scripts/run_pipeline.py --quick: random-weight test models", "idsculpt_quick_test_models:",
             f"  base_path: {json.dumps(os.path.abspath(models_dir))}", "  is_default: true"]
    lines += [f"  {f}: {f}" for f in folders]
    with open(path, "w", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    return path


# --------------------------------------------------------------------------- model check
def model_check(args, wf: dict) -> tuple[bool, str]:
    """(ok, report). Table rows of the selected workflow + every file the graph names + the Python
    packages of ComfyUI's Python (core/dependencies.py)."""
    models = check_models.load_models_module()
    folders, how = check_models.comfy_folders(args.comfyui, args.extra_model_paths_config, args.python, args.base_directory,
                                              keys=sorted({f for m in models.MODEL_TABLE for f, _ in m.locations}
                                                          | {f for _, f, _ in referenced_models(wf)}))
    lookup = check_models.lookup_from(folders)
    lines, ok = [], True
    which = args.models if args.models != "auto" else infer_models_workflow(wf)
    if which != "none":
        rows = models.check_models(lookup, which)
        lines += [f"models for the '{which}' workflow (folders from {how}):", models.format_table(rows, show_paths=False)]
        ok = not models.missing_required(rows)
    missing = []
    for nid, folder, name in referenced_models(wf):
        dirs = lookup(folder)
        if not any(os.path.isfile(os.path.join(d, *name.replace("\\", "/").split("/"))) for d in dirs):
            missing.append(f"  - node {nid} ({wf[nid]['class_type']}): {models.missing_model_message(name, folder, dirs)}")
    if missing:
        ok = False
        lines += ["", "files the workflow names that ComfyUI cannot find:", *missing]
    if not args.url:  # the packages of the Python that will run ComfyUI (a --url server has its own)
        packages_ok, text = check_models.packages_report(args.python)
        ok = ok and packages_ok
        lines += ["", text]
    return ok, "\n".join(lines)


# --------------------------------------------------------------------------- progress
#: node classes that get a row of their own in the stage-seconds table (besides every IDSculpt node)
TIMED_CLASSES = ("KSampler", "KSamplerAdvanced", "SamplerCustom", "SamplerCustomAdvanced")


class StageTimes:
    """Seconds per node from ComfyUI's websocket events: a node runs from its ``executing`` event to
    the next node's ``executing`` (or the prompt's end: ``executing`` with node None, ``execution_success``,
    ``execution_error``, ``execution_interrupted``). Cached nodes send no ``executing`` and get no time."""

    END_EVENTS = ("execution_success", "execution_error", "execution_interrupted")

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.order: list[str] = []
        self.cached: list[str] = []
        self.current: Optional[str] = None
        self.started = 0.0
        self.first: Optional[float] = None
        self.last: Optional[float] = None

    def _close(self, now: float) -> None:
        if self.current is not None:
            self.seconds[self.current] = self.seconds.get(self.current, 0.0) + (now - self.started)
            self.current = None
        self.last = now

    def on_event(self, kind: str, data: dict, now: float) -> None:
        if kind == "executing":
            self._close(now)
            node = data.get("node")
            if node is not None:
                node = str(node)
                self.current, self.started = node, now
                self.first = now if self.first is None else self.first
                if node not in self.order:
                    self.order.append(node)
        elif kind in self.END_EVENTS:
            self._close(now)
        elif kind == "execution_cached":
            self.cached += [str(n) for n in data.get("nodes") or [] if str(n) not in self.cached]

    def table(self, wf: dict, timed: Callable[[str], bool] = lambda c: c.startswith("IDSculpt") or c in TIMED_CLASSES) -> str:
        """Text table: one row per IDSculpt node and sampler (in run order), the other nodes summed, the total."""
        rows, other = [], 0.0
        for nid in self.order:
            cls = str(wf.get(nid, {}).get("class_type", "?"))
            sec = self.seconds.get(nid, 0.0)
            if timed(cls):
                title = str(wf.get(nid, {}).get("_meta", {}).get("title") or "")
                same = title.replace(" ", "") == cls  # the display name ("IDSculpt DMTet Sculpt") says nothing new
                rows.append((nid, cls, "" if same else title, sec))
            else:
                other += sec
        total = sum(self.seconds.values())
        w = max([len(r[1]) for r in rows] + [len("other nodes")])
        lines = [f"{'node':>5}  {'class':<{w}}  {'seconds':>8}  title"]
        lines += [f"{nid:>5}  {cls:<{w}}  {sec:8.1f}  {title}".rstrip() for nid, cls, title, sec in rows]
        lines.append(f"{'':>5}  {'other nodes':<{w}}  {other:8.1f}")
        lines.append(f"{'':>5}  {'total':<{w}}  {total:8.1f}" + (f"  ({len(self.cached)} node(s) cached)" if self.cached else ""))
        return "\n".join(lines)


class ProgressPrinter:
    """Prints which node runs and its step counter (at most ~2 lines a second per node), and records
    the node timings (``times``)."""

    def __init__(self, wf: dict, stream=sys.stdout, clock: Callable[[], float] = time.monotonic) -> None:
        self.wf, self.stream, self.clock = wf, stream, clock
        self.last = 0.0
        self.t0 = clock()
        self.times = StageTimes()

    def _name(self, node: Any) -> str:
        n = self.wf.get(str(node), {})
        title = n.get("_meta", {}).get("title")
        return f"{node} {n.get('class_type', '?')}" + (f" '{title}'" if title and title != n.get("class_type") else "")

    def __call__(self, kind: str, data: dict) -> None:
        now = self.clock()
        self.times.on_event(kind, data, now)
        t = now - self.t0
        if kind == "executing" and data.get("node") is not None:
            print(f"[{t:7.1f}s] running node {self._name(data['node'])}", file=self.stream, flush=True)
        elif kind == "progress":
            v, m = data.get("value", 0), data.get("max", 0)
            if now - self.last > 0.5 or v >= m:
                self.last = now
                print(f"[{t:7.1f}s]   node {data.get('node')}: step {v}/{m}", file=self.stream, flush=True)
        elif kind == "execution_cached" and data.get("nodes"):
            print(f"[{t:7.1f}s] cached: {', '.join(map(str, data['nodes']))}", file=self.stream, flush=True)
        elif kind == "execution_error":
            print(f"[{t:7.1f}s] node {data.get('node_id')} ({data.get('node_type')}) failed: {data.get('exception_message')}",
                  file=self.stream, flush=True)


# --------------------------------------------------------------------------- turntable
def _load_pack():
    """The repo as the package ``idsculpt`` (as ComfyUI loads it), for core.mesh / core.render."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import _pack  # bench/_pack.py: the one loader of the repo as package ``idsculpt``

    return _pack.load()


def render_turntable(glb: str, out_prefix: str, frames: int = 24, size: int = 256, elevation: float = 5.0,
                     fov: float = 30.0, strip_columns: int = 12) -> tuple[str, str]:
    """Render ``frames`` views around the y axis of a saved head; write ``<prefix>_turntable.png``
    (frames laid out ``strip_columns`` per row) and ``<prefix>_turntable.gif``. Textured meshes
    show their texture (or vertex colours) under a soft headlight; untextured ones are shaded grey."""
    import numpy as np
    import torch
    from PIL import Image

    _load_pack()
    from idsculpt.core.camera import Cameras
    from idsculpt.core.mesh import HeadMesh
    from idsculpt.core.render import render_mesh

    head = HeadMesh.load(glb)
    v = head.vertices.float()
    lo, hi = v.min(0).values, v.max(0).values
    centre = (lo + hi) / 2
    radius = float((v - centre).norm(dim=-1).max().clamp_min(1e-6))
    dist = radius / np.sin(np.radians(fov / 2)) * 1.15  # the whole head fits in every view
    az = torch.arange(frames, dtype=torch.float32) * (360.0 / frames)
    images = []
    for a in az.tolist():  # one view at a time: bounded memory for big meshes
        cams = Cameras.orbit(elevation, a, dist, fov, size, target=centre.tolist())
        out = render_mesh(v, head.faces, cams, vertex_colors=head.vertex_colors, uvs=head.uvs, uv_faces=head.uv_faces,
                          texture=head.texture, antialias=True, background=0.0)
        n = out.normal_view[0].clamp(-1, 1)
        light = (0.35 + 0.65 * n[..., 2:3].clamp_min(0))  # headlight: brightness by facing the camera
        base = out.color[0] if out.color is not None else torch.full_like(n, 0.8)
        rgb = base * light
        m = out.mask[0]
        rgb = torch.nan_to_num(rgb * m + (1 - m) * 1.0).clamp(0, 1)  # white background
        images.append((rgb.cpu().numpy() * 255).round().astype(np.uint8))
    cols = max(1, min(strip_columns, frames))
    rows = (frames + cols - 1) // cols
    sheet = np.full((rows * size, cols * size, 3), 255, np.uint8)
    for i, im in enumerate(images):
        r, c = divmod(i, cols)
        sheet[r * size:(r + 1) * size, c * size:(c + 1) * size] = im
    png, gif = out_prefix + "_turntable.png", out_prefix + "_turntable.gif"
    Image.fromarray(sheet).save(png)
    pil = [Image.fromarray(im) for im in images]
    pil[0].save(gif, save_all=True, append_images=pil[1:], duration=max(20, 3000 // frames), loop=0)
    return png, gif


def turntable_any_python(glb: str, out_prefix: str, python: Optional[str], frames: int, size: int) -> tuple[str, str]:
    """Render here when this Python has torch + the pack's deps, else in ComfyUI's Python."""
    try:
        import torch  # noqa: F401
        import PIL  # noqa: F401
        import trimesh  # noqa: F401
    except ImportError:
        if not python:
            raise
        cmd = [python, os.path.abspath(__file__), "--turntable-only", glb, "--out", os.path.dirname(out_prefix) or ".",
               "--frames", str(frames), "--size", str(size)]
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)  # it prints the two paths we print
        return out_prefix + "_turntable.png", out_prefix + "_turntable.gif"
    return render_turntable(glb, out_prefix, frames, size)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Portrait -> 3D head GLB + turntable, through a headless ComfyUI.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--comfyui", help="ComfyUI checkout (folder with main.py)")
    ap.add_argument("--portrait", help="the portrait image")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--quick", action="store_true",
                    help="first run: random-weight test models (built once into --test-models) and lowered settings on the "
                         "template head, to see the whole graph work in minutes on a CPU before downloading the models")
    ap.add_argument("--test-models", default=DEFAULT_TEST_MODELS, metavar="DIR",
                    help="with --quick: where the test models are built and reused (default %(default)s)")
    ap.add_argument("--workflow", default=os.path.join(ROOT, "workflows", "api", "full.json"),
                    help="API-format workflow (default %(default)s; the shipped ones are workflows/api/*.json)")
    ap.add_argument("--extra-model-paths-config", action="append", default=[], metavar="YAML", help="passed to ComfyUI (repeatable)")
    ap.add_argument("--python", help="ComfyUI's Python (default: this Python if it imports ComfyUI, else ComfyUI's venv)")
    ap.add_argument("--base-directory", help="ComfyUI --base-directory (input/, output/, models/ root)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE", help="override a node input; NODE = node id or class_type (repeatable)")
    ap.add_argument("--portrait-node", help="id of the LoadImage node that takes the portrait (when the workflow has several)")
    ap.add_argument("--models", default="auto", choices=["auto", "geometry", "full", "eval", "all", "none"],
                    help="which table rows the pre-flight check requires (auto: full if the graph textures, else geometry)")
    dev = ap.add_mutually_exclusive_group()
    dev.add_argument("--cpu", action="store_true", help="run ComfyUI with --cpu (added by itself when torch sees no GPU)")
    dev.add_argument("--gpu", action="store_true", help="never add --cpu by itself")
    ap.add_argument("--comfy-arg", action="append", default=[], help="extra argument for main.py (repeatable), e.g. --comfy-arg=--lowvram")
    ap.add_argument("--url", help="use this running ComfyUI instead of starting one (its folders must match --comfyui for the check)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for the workflow (default: no limit)")
    ap.add_argument("--frames", type=int, default=None, help="turntable frames (default 24; 8 with --quick)")
    ap.add_argument("--size", type=int, default=None, help="turntable frame size in px (default 256; 128 with --quick)")
    ap.add_argument("--turntable-only", metavar="GLB", help=argparse.SUPPRESS)
    return ap


def check_node_classes(server: ComfyServer, wf: dict) -> None:
    """ComfyError naming the workflow's node classes this ComfyUI lacks (instead of its "node X does not
    exist" on queueing), with the pack's import errors from the log when the IDSculpt nodes are absent."""
    known = set(server.object_info())
    missing = sorted({n["class_type"] for n in wf.values()} - known)
    if not missing:
        return
    msg = f"this ComfyUI has no node class(es) {', '.join(missing)}"
    if any(m.startswith("IDSculpt") for m in missing):
        msg += (": the IDSculpt pack is not loaded. Put this repository into ComfyUI/custom_nodes (README: Install), "
                "or pass --extra-model-paths-config with a custom_nodes entry pointing at its parent folder")
        log = server.log_tail(200000) if server.log_path else ""
        hints = [ln for ln in log.splitlines() if "IDSculpt" in ln and ("IMPORT FAILED" in ln or "Cannot import" in ln
                                                                         or "Error" in ln)]
        if hints:
            msg += "; ComfyUI's log says:\n  " + "\n  ".join(hints[-5:])
    raise ComfyError(msg)


def comfy_output_files(entry: dict) -> list[dict]:
    """Every file the prompt saved into ComfyUI's output folder (``type == "output"`` entries of its outputs)."""
    out = []
    for node_out in (entry.get("outputs") or {}).values():
        for items in (node_out or {}).values():
            for f in items if isinstance(items, list) else []:
                if isinstance(f, dict) and f.get("filename") and f.get("type", "output") == "output":
                    out.append(f)
    return out


def prepare(args) -> tuple[dict, str, Optional[PythonProbe]]:
    """Checks the arguments, loads and patches the workflow, picks ComfyUI's Python and --cpu, and for
    --quick builds the test models; returns (workflow, portrait node id, probe). UsageError on bad input."""
    if not args.comfyui or not args.portrait:
        raise UsageError("--comfyui and --portrait are required")
    if not os.path.isfile(os.path.join(args.comfyui, "main.py")):
        raise UsageError(f"--comfyui {args.comfyui} is not a ComfyUI checkout (no main.py)")
    if not os.path.isfile(args.portrait):
        raise UsageError(f"--portrait {args.portrait} does not exist")
    wf = load_workflow(args.workflow)
    if not nodes_of(wf, SAVE_HEAD):
        raise UsageError(f"the workflow has no {SAVE_HEAD} node: nothing would be saved")
    load_node = portrait_node(wf, args.portrait_node)
    if args.quick:
        wf = quick_workflow(wf)
    apply_overrides(wf, args.overrides)  # after --quick: the user's --set wins

    probe, why = choose_python(args.comfyui, args.python)
    if probe is None or (not probe.ok and not args.url):
        raise UsageError(f"no Python that can run ComfyUI: {why}. Pass ComfyUI's own Python with --python "
                         f"(e.g. --python /path/to/ComfyUI/venv/bin/python)")
    args.python = probe.python
    print(f"== ComfyUI's Python: {args.python} ({why})")
    args.use_cpu, cpu_why = cpu_decision(probe, args.cpu, args.gpu, args.url)
    print(f"   device: {'--cpu' if args.use_cpu else 'GPU'} ({cpu_why})")

    if args.quick:
        models_dir = os.path.join(os.path.abspath(args.test_models), "small")
        keys = quick_model_keys(wf)
        print(f"\n== quick run: random-weight test models ({', '.join(keys)}), lowered settings, template head")
        ensure_test_models(models_dir, keys, args.python, args.comfyui)
        # beside the size folder, not in it: that folder holds only ComfyUI model folders (tests link them one by one)
        yaml_path = write_quick_yaml(models_dir, keys, os.path.join(os.path.abspath(args.test_models), "quick_extra_model_paths.yaml"))
        args.extra_model_paths_config = [*args.extra_model_paths_config, yaml_path]
        print(f"test models: {yaml_path} points ComfyUI at them (first in each folder)")
    return wf, load_node, probe


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    # --quick: a smaller turntable (the CPU rasteriser renders a textured frame in seconds, not milliseconds)
    args.frames = args.frames or (8 if args.quick else 24)
    args.size = args.size or (128 if args.quick else 256)
    os.makedirs(args.out, exist_ok=True)
    if args.turntable_only:
        prefix = os.path.join(args.out, os.path.splitext(os.path.basename(args.turntable_only))[0])
        for p in render_turntable(args.turntable_only, prefix, args.frames, args.size):
            print(p)
        return 0
    t_start = time.monotonic()
    try:
        wf, load_node, _ = prepare(args)
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print("\n== model check")
    ok, report = model_check(args, wf)
    print(report)
    if not ok:
        print("\nstopped before starting ComfyUI: put the missing files in place (see docs/MODELS.md) or install the "
              "missing Python packages (see the lists above) and run again (or try the pipeline first with --quick: "
              "random-weight test models).", file=sys.stderr)
        return 1
    return run_comfy(args, wf, load_node, t_start)


def run_comfy(args, wf: dict, load_node: str, t_start: float) -> int:
    """Start (or reach) ComfyUI, run the workflow, fetch and render the results; 0 or 3."""
    fe_root = None if args.url else tempfile.mkdtemp(prefix="idsculpt_fe_")  # headless: an empty front end
    extra = ["--front-end-root", fe_root] if fe_root else []
    for y in args.extra_model_paths_config:
        extra += ["--extra-model-paths-config", os.path.abspath(y)]
    if args.base_directory:
        # ComfyUI refuses to start with a base directory that has no custom_nodes/ folder
        os.makedirs(os.path.join(os.path.abspath(args.base_directory), "custom_nodes"), exist_ok=True)
        extra += ["--base-directory", os.path.abspath(args.base_directory)]
    if getattr(args, "use_cpu", args.cpu):
        extra.append("--cpu")
    extra += args.comfy_arg
    log_path = os.path.join(os.path.abspath(args.out), "comfyui.log")
    server = ComfyServer(os.path.abspath(args.comfyui), args.python, extra, log_path=log_path, url=args.url)
    print(f"\n== starting ComfyUI ({args.python} main.py{' --cpu' if '--cpu' in extra else ''}; log: {log_path})" if not args.url
          else f"\n== using ComfyUI at {args.url}")
    t0 = time.monotonic()
    printer = ProgressPrinter(wf)
    written, saved = [], []
    try:
        server.start()
        print(f"ComfyUI ready after {time.monotonic() - t0:.0f} s")
        check_node_classes(server, wf)
        name = server.upload_image(args.portrait)
        wf[load_node].setdefault("inputs", {})["image"] = name
        print(f"portrait uploaded as input/{name} -> node {load_node}")
        with open(os.path.join(args.out, "workflow_api.json"), "w", encoding="utf-8") as fh:
            json.dump(wf, fh, indent=1)
        ws = server.connect_ws()
        printer.t0 = printer.clock()  # progress times count from the queueing
        prompt_id = server.queue(wf)
        print(f"\n== running workflow {os.path.relpath(args.workflow)}{' (--quick)' if args.quick else ''} (prompt {prompt_id})")
        t_run = time.monotonic()
        try:
            entry = server.wait(prompt_id, ws, printer, timeout=args.timeout)
        except KeyboardInterrupt:
            server.interrupt()
            raise
        finally:
            if ws is not None:
                ws.close()
        print(f"workflow finished in {time.monotonic() - t_run:.1f} s")
        for nid in nodes_of(wf, SAVE_HEAD):
            for f in (entry.get("outputs", {}).get(nid, {}) or {}).get("3d", []):
                dst = os.path.join(args.out, os.path.basename(f["filename"]))
                with open(dst, "wb") as fh:
                    fh.write(server.view(f))
                written.append(dst)
        saved = comfy_output_files(entry)
    except ComfyError as exc:
        if printer.times.order:
            print("\n== seconds per stage (until the failure)\n" + printer.times.table(wf))
        print(f"\nComfyUI error: {exc}\n(log: {log_path})", file=sys.stderr)
        return 3
    finally:
        server.stop()
        if fe_root:
            shutil.rmtree(fe_root, ignore_errors=True)
    print("\n== seconds per stage (from the websocket's node start events)\n" + printer.times.table(wf))
    glbs = [p for p in written if p.lower().endswith(".glb")]
    if not glbs:
        print("the workflow ran but no IDSculpt Save Head output came back (was the node bypassed?)", file=sys.stderr)
        return 3
    print("\n== results")
    for p in written:
        print(f"mesh:      {os.path.abspath(p)}")
    t_tt = time.monotonic()
    for glb in glbs:
        png, gif = turntable_any_python(glb, os.path.splitext(glb)[0], args.python, args.frames, args.size)
        print(f"turntable: {os.path.abspath(png)}\n           {os.path.abspath(gif)}")
    print(f"(turntables rendered in {time.monotonic() - t_tt:.1f} s)")
    if saved:
        out_root = None if args.url else os.path.join(os.path.abspath(args.base_directory or args.comfyui), "output")
        print("ComfyUI's output folder" + (f" ({out_root})" if out_root else "") + " also holds:")
        for f in saved:
            print("  " + "/".join(p for p in (f.get("subfolder"), f["filename"]) if p))
    print(f"total {time.monotonic() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
