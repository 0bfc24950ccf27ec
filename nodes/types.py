"""The pack's own ComfyUI socket types, shared by every node file.

Import them from here (``from .types import HEAD_MESH, CAMERA``) so that one name maps to one Python
class across the pack. Each constant is an ``io.Custom`` type: use ``HEAD_MESH.Input("mesh",
tooltip=...)`` and ``HEAD_MESH.Output(display_name="head")`` in a schema.

The ``IDSCULPT_`` prefix keeps our names apart from other packs' (ComfyUI-3D-Pack calls a different
class ``MESH``; core ComfyUI's ``MESH`` carries no UVs or texture), so a wrong connection is refused
by the UI instead of failing inside a node.
"""
from __future__ import annotations

from comfy_api.latest import io

#: core.mesh.HeadMesh: positions in the core.camera world frame, per-corner UVs, texture [H,W,3].
HEAD_MESH = io.Custom("IDSCULPT_HEAD_MESH")
#: core.camera.Cameras: a batch of B cameras sharing one image size.
CAMERA = io.Custom("IDSCULPT_CAMERA")
#: identity features of the reference portrait (ArcFace embedding and what goes with it).
FACE_ID = io.Custom("IDSCULPT_FACE_ID")
#: facial landmarks of the reference portrait (2D/3D points, image size).
LANDMARKS = io.Custom("IDSCULPT_LANDMARKS")
#: multi-view images rendered by the 3D-aware GAN (PanoHead), with their cameras.
GAN_VIEWS = io.Custom("IDSCULPT_GAN_VIEWS")
#: reference geometry for the coarse stage (normal/depth maps per view, or a mesh from the GAN).
REFERENCE_GEOMETRY = io.Custom("IDSCULPT_REFERENCE_GEOMETRY")
#: a loaded PanoHead generator.
PANOHEAD = io.Custom("IDSCULPT_PANOHEAD")
#: an identity adapter (IP-Adapter FaceID style) bound to a diffusion model.
ID_ADAPTER = io.Custom("IDSCULPT_ID_ADAPTER")
#: settings + models for identity-aware score distillation (ISD).
ISD_GUIDANCE = io.Custom("IDSCULPT_ISD_GUIDANCE")

__all__ = [
    "HEAD_MESH",
    "CAMERA",
    "FACE_ID",
    "LANDMARKS",
    "GAN_VIEWS",
    "REFERENCE_GEOMETRY",
    "PANOHEAD",
    "ID_ADAPTER",
    "ISD_GUIDANCE",
]
