#!/usr/bin/env python3
"""One command: portrait in, head GLB + turntable out, through a headless ComfyUI.

    python scripts/run_pipeline.py --comfyui /path/to/ComfyUI --portrait face.jpg --out result/
        [--workflow workflows/full_api.json] [--extra-model-paths-config YAML] [--python PYTHON]
        [--set NODE_ID.INPUT=VALUE ...] [--models auto|geometry|full|all|none] [--url http://host:port]

Steps:
 1. model check (core/models.py, with ComfyUI's own folder resolution): stops with the table, exit
    code 1, before anything heavy when a required file is missing; also checks every model file the
    workflow names in a loader input (ckpt_name, control_net_name, ...);
 2. starts ComfyUI headless (``main.py --disable-auto-launch``, its log in <out>/comfyui.log), or
    uses the running server given with --url;
 3. uploads the portrait into ComfyUI's input folder and points the workflow's LoadImage node at
    it, applies the --set overrides, and queues the API-format workflow;
 4. prints progress (node being run, its step counter) from ComfyUI's websocket;
 5. copies every GLB the ``IDSculptSaveHead`` nodes wrote into --out and renders a turntable from it
    with core.render: ``<name>_turntable.png`` (a strip of views) and ``<name>_turntable.gif``.

--set NODE.INPUT=VALUE: NODE is a node id or a class_type (every node of that class); values are parsed
as JSON when they parse (numbers, true/false, ["4", 0] links), else kept as strings:
``--set 12.steps=2000 --set KSampler.steps=20 --set 2.value="a man with short grey hair"``.
The workflow is any API-format graph ("Save (API)" in ComfyUI) with a LoadImage node and an
IDSculpt Save Head node.

Exit codes: 0 ok; 1 required model missing; 2 bad arguments / workflow; 3 ComfyUI failed.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from typing import Any, Optional, Sequence

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if HERE not in sys.path:
    sys.path.insert(0, HERE)

import check_models  # noqa: E402  (scripts/ sibling)
from comfy_server import ComfyError, ComfyServer  # noqa: E402

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
    try:
        with open(path, encoding="utf-8") as fh:
            wf = json.load(fh)
    except FileNotFoundError:
        raise UsageError(f"workflow {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise UsageError(f"workflow {path} is not JSON: {exc}") from None
    if isinstance(wf, dict) and "nodes" in wf and "links" in wf:
        raise UsageError(f"{path} is a UI workflow; export it with 'Save (API)' (or use the *_api.json twin)")
    if isinstance(wf, dict) and "prompt" in wf and isinstance(wf["prompt"], dict):
        wf = wf["prompt"]
    if not isinstance(wf, dict) or not all(isinstance(v, dict) and "class_type" in v for v in wf.values()):
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


# --------------------------------------------------------------------------- model check
def model_check(args, wf: dict) -> tuple[bool, str]:
    """(ok, report). Table rows of the selected workflow + every file the graph names."""
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
    return ok, "\n".join(lines)


# --------------------------------------------------------------------------- progress
class ProgressPrinter:
    """Prints which node runs and its step counter (at most ~2 lines a second per node)."""

    def __init__(self, wf: dict, stream=sys.stdout) -> None:
        self.wf, self.stream = wf, stream
        self.last = 0.0
        self.t0 = time.monotonic()

    def _name(self, node: Any) -> str:
        n = self.wf.get(str(node), {})
        title = n.get("_meta", {}).get("title")
        return f"{node} {n.get('class_type', '?')}" + (f" '{title}'" if title and title != n.get("class_type") else "")

    def __call__(self, kind: str, data: dict) -> None:
        t = time.monotonic() - self.t0
        if kind == "executing" and data.get("node") is not None:
            print(f"[{t:7.1f}s] running node {self._name(data['node'])}", file=self.stream, flush=True)
        elif kind == "progress":
            v, m = data.get("value", 0), data.get("max", 0)
            now = time.monotonic()
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
    import importlib.util

    if "idsculpt" in sys.modules:
        return sys.modules["idsculpt"]
    spec = importlib.util.spec_from_file_location("idsculpt", os.path.join(ROOT, "__init__.py"), submodule_search_locations=[ROOT])
    mod = importlib.util.module_from_spec(spec)
    sys.modules["idsculpt"] = mod
    spec.loader.exec_module(mod)
    return mod


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
        subprocess.run(cmd, check=True)
        return out_prefix + "_turntable.png", out_prefix + "_turntable.gif"
    return render_turntable(glb, out_prefix, frames, size)


# --------------------------------------------------------------------------- main
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description="Portrait -> 3D head GLB + turntable, through a headless ComfyUI.",
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 2)[2])
    ap.add_argument("--comfyui", help="ComfyUI checkout (folder with main.py)")
    ap.add_argument("--portrait", help="the portrait image")
    ap.add_argument("--out", required=True, help="output folder (created)")
    ap.add_argument("--workflow", default=os.path.join(ROOT, "workflows", "full_api.json"), help="API-format workflow (default %(default)s)")
    ap.add_argument("--extra-model-paths-config", action="append", default=[], metavar="YAML", help="passed to ComfyUI (repeatable)")
    ap.add_argument("--python", help="ComfyUI's Python (default: its venv, found like the test harness does)")
    ap.add_argument("--base-directory", help="ComfyUI --base-directory (input/, output/, models/ root)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="NODE.INPUT=VALUE", help="override a node input; NODE = node id or class_type (repeatable)")
    ap.add_argument("--portrait-node", help="id of the LoadImage node that takes the portrait (when the workflow has several)")
    ap.add_argument("--models", default="auto", choices=["auto", "geometry", "full", "eval", "all", "none"],
                    help="which table rows the pre-flight check requires (auto: full if the graph textures, else geometry)")
    ap.add_argument("--cpu", action="store_true", help="run ComfyUI with --cpu")
    ap.add_argument("--comfy-arg", action="append", default=[], help="extra argument for main.py (repeatable), e.g. --comfy-arg=--lowvram")
    ap.add_argument("--url", help="use this running ComfyUI instead of starting one (its folders must match --comfyui for the check)")
    ap.add_argument("--timeout", type=float, default=None, help="seconds to wait for the workflow (default: no limit)")
    ap.add_argument("--frames", type=int, default=24, help="turntable frames (default 24)")
    ap.add_argument("--size", type=int, default=256, help="turntable frame size in px (default 256)")
    ap.add_argument("--turntable-only", metavar="GLB", help=argparse.SUPPRESS)
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.turntable_only:
        prefix = os.path.join(args.out, os.path.splitext(os.path.basename(args.turntable_only))[0])
        for p in render_turntable(args.turntable_only, prefix, args.frames, args.size):
            print(p)
        return 0
    try:
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
        apply_overrides(wf, args.overrides)
        args.python = args.python or check_models.find_comfy_python(args.comfyui)
    except (UsageError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    print("== model check")
    ok, report = model_check(args, wf)
    print(report)
    if not ok:
        print("\nstopped before starting ComfyUI: put the missing files in place (see docs/MODELS.md) and run again.", file=sys.stderr)
        return 1

    extra = ["--front-end-root", tempfile.mkdtemp(prefix="idsculpt_fe_")]  # headless: no web UI needed
    for y in args.extra_model_paths_config:
        extra += ["--extra-model-paths-config", os.path.abspath(y)]
    if args.base_directory:
        # ComfyUI refuses to start with a base directory that has no custom_nodes/ folder
        os.makedirs(os.path.join(os.path.abspath(args.base_directory), "custom_nodes"), exist_ok=True)
        extra += ["--base-directory", os.path.abspath(args.base_directory)]
    if args.cpu:
        extra.append("--cpu")
    extra += args.comfy_arg
    log_path = os.path.join(os.path.abspath(args.out), "comfyui.log")
    server = ComfyServer(os.path.abspath(args.comfyui), args.python, extra, log_path=log_path, url=args.url)
    print(f"\n== starting ComfyUI ({'at ' + args.url if args.url else args.python + ' main.py'}; log: {log_path})" if not args.url
          else f"\n== using ComfyUI at {args.url}")
    t0 = time.monotonic()
    try:
        server.start()
        print(f"ComfyUI ready after {time.monotonic() - t0:.0f} s")
        name = server.upload_image(args.portrait)
        wf[load_node].setdefault("inputs", {})["image"] = name
        print(f"portrait uploaded as input/{name} -> node {load_node}")
        with open(os.path.join(args.out, "workflow_api.json"), "w", encoding="utf-8") as fh:
            json.dump(wf, fh, indent=1)
        ws = server.connect_ws()
        prompt_id = server.queue(wf)
        print(f"\n== running workflow {os.path.basename(args.workflow)} (prompt {prompt_id})")
        try:
            entry = server.wait(prompt_id, ws, ProgressPrinter(wf), timeout=args.timeout)
        except KeyboardInterrupt:
            server.interrupt()
            raise
        finally:
            if ws is not None:
                ws.close()
        print(f"finished in {time.monotonic() - t0:.0f} s")
        written = []
        for nid in nodes_of(wf, SAVE_HEAD):
            for f in (entry.get("outputs", {}).get(nid, {}) or {}).get("3d", []):
                dst = os.path.join(args.out, os.path.basename(f["filename"]))
                with open(dst, "wb") as fh:
                    fh.write(server.view(f))
                written.append(dst)
    except ComfyError as exc:
        print(f"\nComfyUI error: {exc}\n(log: {log_path})", file=sys.stderr)
        return 3
    finally:
        server.stop()
    glbs = [p for p in written if p.lower().endswith(".glb")]
    if not glbs:
        print("the workflow ran but no IDSculpt Save Head output came back (was the node bypassed?)", file=sys.stderr)
        return 3
    print("\n== results")
    for p in written:
        print(f"mesh:      {os.path.abspath(p)}")
    for glb in glbs:
        png, gif = turntable_any_python(glb, os.path.splitext(glb)[0], args.python, args.frames, args.size)
        print(f"turntable: {os.path.abspath(png)}\n           {os.path.abspath(gif)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
