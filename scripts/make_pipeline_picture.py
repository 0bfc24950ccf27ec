#!/usr/bin/env python3
"""The README's "what comes out" picture: one lowered run of workflows/api/full.json on CPU with the
random-weight test models, its intermediate images and both turntables on one sheet.

    # 1. run the pipeline (headless ComfyUI, ~1 min on 2 CPU cores) and keep every preview image
    python scripts/make_pipeline_picture.py run --comfyui "$COMFYUI_PATH" --python <ComfyUI's python> \
        --models tests/output/test_models/small --run-dir tests/output/pipeline_picture
    # 2. compose the sheet
    python scripts/make_pipeline_picture.py compose --run-dir tests/output/pipeline_picture \
        --out docs/images/pipeline_test_models.png

``--models``: a model folder as ``tests/build_test_models.py --size small`` writes it (random weights
under the real file names). ``run`` lowers the workflow with ``make_workflows.quick_test_prompt(...,
template=True)`` (the settings of docs/WORKFLOWS.md's quick test, template head), turns every
PreviewImage into a SaveImage (so the intermediates land in output/preview/ instead of the temp folder
ComfyUI empties on exit), and runs it through scripts/run_pipeline.py (model check, ComfyUI, GLBs,
turntables). The portrait is ``skimage.data.astronaut()`` (NASA photo, public domain), so the sheet
may be redistributed; ``--portrait`` takes another.

With random weights nothing here is a face reconstruction: the sheet shows which images each stage
makes and how files flow, not quality. Its caption says so.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import subprocess
import sys
from typing import Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CAPTION = "random-weight test models: shows the pipeline's outputs and file flow, not quality"


# --------------------------------------------------------------------------- run
def save_all_previews(api: dict) -> dict:
    """PreviewImage -> SaveImage with a prefix naming the node (id + title): same inputs, files kept."""
    for nid, node in api.items():
        if node.get("class_type") == "PreviewImage":
            title = (node.get("_meta") or {}).get("title", "preview")
            slug = re.sub(r"[^a-z0-9]+", "_", title.lower()).strip("_")
            node["class_type"] = "SaveImage"
            node["inputs"]["filename_prefix"] = f"preview/{nid}_{slug}"
    return api


def run(args: argparse.Namespace) -> int:
    sys.path[:0] = [HERE, os.path.join(ROOT, "tests")]
    import make_workflows as MW
    from comfy_harness import ComfySandbox  # the test harness' sandbox: base dir, model folders, the pack linked in

    run_dir = os.path.abspath(args.run_dir)
    os.makedirs(run_dir, exist_ok=True)
    with open(MW.api_path("full"), encoding="utf-8") as fh:
        api = save_all_previews(MW.quick_test_prompt(json.load(fh), template=True))
    wf_path = os.path.join(run_dir, "full_quick_previews_api.json")
    with open(wf_path, "w", encoding="utf-8") as fh:
        json.dump(api, fh, indent=1)
    sb = ComfySandbox(os.path.join(run_dir, "sandbox"))
    models = os.path.abspath(args.models)
    if not os.path.isdir(models):
        raise SystemExit(f"--models {models} is not a folder: build it with tests/build_test_models.py --size small")
    for folder in os.listdir(models):
        dst_dir = sb.model_dir(folder)
        os.makedirs(dst_dir, exist_ok=True)
        for name in os.listdir(os.path.join(models, folder)):
            dst = os.path.join(dst_dir, name)
            if not os.path.lexists(dst):
                os.symlink(os.path.join(models, folder, name), dst)
    portrait = args.portrait
    if portrait is None:
        from PIL import Image
        from skimage import data

        portrait = os.path.join(run_dir, "astronaut.png")
        Image.fromarray(data.astronaut()).save(portrait)
    cmd = [sys.executable, os.path.join(HERE, "run_pipeline.py"), "--comfyui", args.comfyui, "--portrait", portrait,
           "--out", os.path.join(run_dir, "out"), "--workflow", wf_path, "--base-directory", sb.base,
           "--extra-model-paths-config", sb.yaml_path, "--cpu", "--comfy-arg=--database-url", "--comfy-arg=sqlite:///:memory:",
           "--models", "full", "--frames", "8", "--size", "256"]
    if args.python:
        cmd += ["--python", args.python]
    print(" ".join(cmd), flush=True)
    return subprocess.run(cmd).returncode


# --------------------------------------------------------------------------- compose
def _find(pattern: str) -> str:
    hits = sorted(glob.glob(pattern))
    if not hits:
        raise SystemExit(f"no file matches {pattern}: run the 'run' step first (or point --run-dir at its folder)")
    return hits[0]


def compose(args: argparse.Namespace) -> int:
    import matplotlib
    from PIL import Image, ImageDraw, ImageFont

    run_dir = os.path.abspath(args.run_dir)
    prev = os.path.join(run_dir, "sandbox", "base", "output", "preview")
    out_dir = os.path.join(run_dir, "out")
    portrait = args.portrait or os.path.join(run_dir, "astronaut.png")
    fonts = os.path.join(matplotlib.get_data_path(), "fonts", "ttf")
    font = ImageFont.truetype(os.path.join(fonts, "DejaVuSans.ttf"), 13)
    bold = ImageFont.truetype(os.path.join(fonts, "DejaVuSans-Bold.ttf"), 15)
    W, pad = args.width, 8

    def load(path: str) -> Image.Image:
        return Image.open(path).convert("RGB")

    def frames(strip: str) -> list:
        im = load(strip)
        n = im.width // im.height
        return [im.crop((i * im.height, 0, (i + 1) * im.height, im.height)) for i in range(n)]

    rows = [
        ("input and conditioning images (stages 1-2)", [
            (load(portrait), "portrait (input)"),
            (load(_find(os.path.join(prev, "9_*_00001_.png"))), "aligned portrait"),
            (load(_find(os.path.join(prev, "11_*_00001_.png"))), "landmark hint"),
            (load(_find(os.path.join(prev, "22_*_00001_.png"))), "Canny edges"),
            (load(_find(os.path.join(prev, "31_*_00001_.png"))), "reference normal"),
            (load(_find(os.path.join(prev, "40_*_00001_.png"))), "reference depth"),
        ]),
        ("stage 2: sculpted geometry (DMTet), turntable of the untextured GLB", [
            (f, None) for f in frames(_find(os.path.join(out_dir, "head_geometry_*_turntable.png")))]),
        ("stage 3: inpainted views and the UV texture", [
            *[(load(p), f"view {i + 1}") for i, p in enumerate(sorted(glob.glob(os.path.join(prev, "61_*_0000*_.png")))[:4])],
            (load(_find(os.path.join(prev, "63_*_00001_.png"))), "UV texture"),
        ]),
        ("textured GLB, turntable", [(f, None) for f in frames(_find(os.path.join(out_dir, "head_full_*_turntable.png")))]),
    ]
    # lay out: every row split evenly over the width, square tiles
    blocks = []
    for title, tiles in rows:
        n = max(len(tiles), 6)
        side = (W - pad * (n + 1)) // n
        labelled = any(lbl for _, lbl in tiles)
        h = 22 + side + (18 if labelled else 0) + pad
        blocks.append((title, tiles, side, h))
    head_h = 52
    H = head_h + sum(b[3] for b in blocks) + pad
    sheet = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(sheet)
    d.text((pad, 6), "ComfyUI-IDSculpt: workflows/full.json, lowered quick-test settings (template head), CPU", fill="black", font=bold)
    d.text((pad, 28), CAPTION, fill=(170, 30, 30), font=font)
    y = head_h
    for title, tiles, side, h in blocks:
        d.text((pad, y + 2), title, fill=(40, 40, 40), font=bold)
        x = pad
        for im, lbl in tiles:
            # small images (64 px stage outputs) are scaled up without smoothing: their pixels stay visible
            resample = Image.NEAREST if im.width < side else Image.LANCZOS
            sheet.paste(im.resize((side, side), resample), (x, y + 22))
            if lbl:
                d.text((x, y + 22 + side + 2), f"{lbl} ({im.width}px)", fill=(60, 60, 60), font=font)
            x += side + pad
        y += h
    credit = args.credit
    if credit is None and args.portrait is None:
        credit = "input: skimage.data.astronaut() (NASA, public domain)"
    if credit:
        d.text((W - pad - d.textlength(credit, font=font), 28), credit, fill=(90, 90, 90), font=font)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    # a 256-colour palette keeps the README light (the photo tiles are small)
    sheet.quantize(colors=256, method=Image.MEDIANCUT, dither=Image.FLOYDSTEINBERG).save(args.out, optimize=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out) // 1024} KB, {W}x{H})")
    return 0


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run the lowered full workflow, keeping every preview image")
    r.add_argument("--comfyui", required=True, help="ComfyUI checkout")
    r.add_argument("--python", help="ComfyUI's Python (default: found like run_pipeline.py does)")
    r.add_argument("--models", required=True, help="test model folder (tests/build_test_models.py --size small)")
    r.add_argument("--run-dir", required=True, help="working folder (sandbox, outputs)")
    r.add_argument("--portrait", help="portrait (default: skimage.data.astronaut(), public domain)")
    c = sub.add_parser("compose", help="compose the sheet from a run folder")
    c.add_argument("--run-dir", required=True)
    c.add_argument("--out", required=True, help="PNG to write")
    c.add_argument("--portrait", help="the portrait the run used (default: <run-dir>/astronaut.png)")
    c.add_argument("--credit", default=None, help="credit line for the portrait (default: the astronaut's)")
    c.add_argument("--width", type=int, default=1200)
    args = ap.parse_args(argv)
    return run(args) if args.cmd == "run" else compose(args)


if __name__ == "__main__":
    sys.exit(main())
