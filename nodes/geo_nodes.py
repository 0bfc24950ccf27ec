"""Geo Supervision node: the generated normal + depth maps of the portrait -> reference geometry.

The normal and depth maps come from the user's own KSampler runs on HumanNorm's normal-adapted and
depth-adapted SD1.5 (canny ControlNet + ID adapter), so this node only decodes and checks them;
the conventions are documented in ``core.geo_supervision``.
"""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..core.geo_supervision import HEAD_MASK_SOURCES, build_reference_geometry, preview_reference_geometry, summary
from .common import core_to_image
from .types import CAMERA, LANDMARKS, REFERENCE_GEOMETRY

log = logging.getLogger("IDSculpt")


class GeoSupervision(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptGeoSupervision",
            display_name="IDSculpt Geo Supervision",
            category="IDSculpt/geometry",
            description="Decodes the reference normal map (HumanNorm convention: RGB = (n+1)/2, x right, y up, z toward "
            "the camera) and depth map (disparity: brighter = nearer) of the aligned portrait into the targets of "
            "geometry sculpting, with head and face masks.",
            inputs=[
                io.Image.Input("portrait", tooltip="The aligned portrait (reference view; PanoHead Invert's aligned_portrait): "
                               "sets the target resolution, and the head mask is segmented from it."),
                CAMERA.Input("reference_camera", tooltip="The portrait's camera (first camera used)."),
                io.Image.Input("normal_map", tooltip="Decoded output of the normal-adapted SD1.5 for this portrait "
                               "(resized to the portrait if needed)."),
                io.Image.Input("depth_map", tooltip="Decoded output of the depth-adapted SD1.5 for this portrait "
                               "(resized to the portrait if needed)."),
                io.Mask.Input("head_mask", optional=True, tooltip="Optional head mask (white = head), e.g. a face-parsing "
                              "model's parsing > 0. Without it: see head_mask_source."),
                io.Mask.Input("face_mask", optional=True, tooltip="Optional face-skin mask where normals are supervised. "
                              "Without it: the MediaPipe face oval of the portrait."),
                LANDMARKS.Input("landmarks", optional=True, tooltip="Optional landmarks from IDSculpt Landmark Render, used "
                                "for the face mask when none is given (else MediaPipe runs on the portrait)."),
                io.Combo.Input("depth_convention", options=["near_is_bright", "far_is_bright"], default="near_is_bright",
                               tooltip="near_is_bright: HumanNorm/ID-Sculpt disparity maps (default). far_is_bright: a "
                               "depth map where far is white (inverted inside the head)."),
                io.Combo.Input("head_mask_source", options=list(HEAD_MASK_SOURCES), default="portrait", optional=True,
                               tooltip="Where the head mask comes from when none is connected. portrait (the authors' "
                               "face-parsing mask): MediaPipe person segmentation of the portrait ∪ the face oval, eroded "
                               "5x5 -- falls back to the generated maps (and says so in info) where mediapipe's legacy "
                               "segmenter is missing. generated_maps: valid normals with non-zero depth ∪ the face oval."),
            ],
            outputs=[
                REFERENCE_GEOMETRY.Output(display_name="reference_geometry"),
                io.Image.Output(display_name="preview"),
                io.String.Output(display_name="info"),
                # the masks Geo Supervision settled on, for the texture stage's reference terms
                io.Mask.Output(display_name="head_mask"),
                io.Mask.Output(display_name="face_mask"),
            ],
        )

    @classmethod
    def execute(cls, portrait: torch.Tensor, reference_camera, normal_map: torch.Tensor, depth_map: torch.Tensor,
                head_mask=None, face_mask=None, landmarks=None, depth_convention: str = "near_is_bright",
                head_mask_source: str = "portrait") -> io.NodeOutput:
        cam = reference_camera.first()
        lm2d = None
        extra = ""
        if face_mask is None or head_mask is None:  # the face oval feeds both estimated masks
            lm2d = getattr(landmarks, "portrait_landmarks", None) if landmarks is not None else None
            if lm2d is None:
                try:
                    from ..core.face.landmarks import detect_landmarks

                    lm2d = detect_landmarks(portrait)
                except Exception as e:  # no mediapipe / no face: masks without the face oval, and say so
                    extra = f"; MediaPipe landmarks unavailable, no face oval in the masks ({e})"
                    log.warning("IDSculpt Geo Supervision: %s", extra[2:])
        ref = build_reference_geometry(portrait, cam, normal_map, depth_map, head_mask=head_mask, face_mask=face_mask,
                                       landmarks=lm2d, depth_convention=depth_convention, head_mask_source=head_mask_source)
        # the masks for the texture stage: the portrait's head mask and its face region (not cut by
        # the normal map's invalid pixels, which only the normal loss must avoid)
        masks = [m[..., 0][None].float().clamp(0, 1).cpu() for m in (ref.mask, ref.texture_face_mask)]  # [1,H,W]
        return io.NodeOutput(ref, core_to_image(preview_reference_geometry(ref)), summary(ref) + extra, *masks)


NODES = [GeoSupervision]
