"""Data the sculpt stage reads, and the cameras it draws.

* ``GanViews`` — the multi-view supervision rendered by PanoHead (stage 1): cameras, world-frame
  normal maps [B,H,W,3] (zero outside the mask) and masks [B,H,W,1]. It is
  defined in ``core.panohead.extract`` (one concept, one class); anything with ``cameras``, ``normals``
  and ``masks`` of those shapes works.
* ``ReferenceGeometry`` — the reference-view targets made by Geo Supervision
  (``core.geo_supervision``): camera, camera-frame normals in the HumanNorm/OpenGL view convention
  (x right, y up, z toward the camera), relative disparity, head mask, face mask, depth mask.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..camera import Cameras
from ..stage_types import GanViews, ReferenceGeometry

__all__ = ["GanViews", "ReferenceGeometry", "RandomViewRanges", "random_views", "check_gan_views", "check_reference"]


@dataclass
class RandomViewRanges:
    """Camera distribution of the guidance (ISD) steps; defaults from the authors' config."""

    elevation: tuple[float, float] = (-15.0, 45.0)
    azimuth: tuple[float, float] = (-180.0, 180.0)
    distance: tuple[float, float] = (3.5, 4.5)
    fov: tuple[float, float] = (25.0, 45.0)
    resolution: int = 512


def random_views(n: int, ranges: RandomViewRanges, generator: torch.Generator) -> tuple[Cameras, torch.Tensor, torch.Tensor]:
    """``n`` random orbit cameras around the origin of the sculpting frame: (cameras, azimuth, elevation)."""

    def u(lo_hi: tuple[float, float]) -> torch.Tensor:
        lo, hi = lo_hi
        return lo + (hi - lo) * torch.rand(n, generator=generator)

    el, az, d, fov = u(ranges.elevation), u(ranges.azimuth), u(ranges.distance), u(ranges.fov)
    return Cameras.orbit(el, az, d, fov, ranges.resolution), az, el


def check_gan_views(views) -> None:
    for name in ("cameras", "normals", "masks"):
        if not hasattr(views, name):
            raise ValueError(f"GAN views need .cameras, .normals and .masks (got {type(views).__name__} without .{name})")
    b = len(views.cameras)
    h, w = views.cameras.height, views.cameras.width
    if tuple(views.normals.shape) != (b, h, w, 3):
        raise ValueError(f"GAN view normals must be [B,H,W,3] = {(b, h, w, 3)} for {b} cameras of {h}x{w}, got {tuple(views.normals.shape)}")
    if tuple(views.masks.shape) not in ((b, h, w, 1), (b, h, w)):
        raise ValueError(f"GAN view masks must be [B,H,W,1] = {(b, h, w, 1)}, got {tuple(views.masks.shape)}")


def check_reference(ref) -> None:
    if len(ref.camera) != 1:
        raise ValueError(f"reference geometry needs exactly one camera, got {len(ref.camera)}")
    h, w = ref.camera.height, ref.camera.width
    for name, c in (("normal_view", 3), ("disparity", 1), ("mask", 1), ("face_mask", 1), ("depth_mask", 1)):
        t = getattr(ref, name)
        if tuple(t.shape) != (h, w, c):
            raise ValueError(f"reference {name} must be [H,W,{c}] = {(h, w, c)} (the camera's image size), got {tuple(t.shape)}")
