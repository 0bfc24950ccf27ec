"""The data the paper's stages hand each other: one home, so the stages never import one another.

Stage 1 (core/panohead: the PanoHead inversion, or a placed head mesh) gives the sculpt its multi-view
supervision (:class:`GanViews`); the reference-view targets built from the generated normal/depth maps and the
portrait's masks (:class:`ReferenceGeometry`, core/geo_supervision.py) feed the sculpt's reference steps.
Besides these, stages meet only through the primitives (camera, mesh, render, dmtet, face, guidance).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch

from .camera import Cameras, view_to_world_normals
from .held_tensors import held_tensors


@dataclass
class GanViews:
    """Volume-rendered supervision: what DMTet Sculpt fits in its first 1000 steps."""

    cameras: Cameras
    normals: torch.Tensor  # [B,H,W,3] world-frame unit normals (0 outside the mask)
    masks: torch.Tensor  # [B,H,W,1] 0/1
    images: Optional[torch.Tensor] = None  # [B,H,W,3] 0..1 raw colour (optional)

    def _comfy_cache_tensors(self) -> list:
        """Its tensors, for a host's RAM-pressure cache (core/held_tensors.py)."""
        return held_tensors(self)


@dataclass
class ReferenceGeometry:
    """Targets of the reference view, all [H,W,C] float on one device, H x W = the camera's image.

    image: the aligned portrait [H,W,3] (0..1). camera: its reference camera (1 camera).
    normal_view: [H,W,3] unit camera-frame normals (x right, y up, z toward the camera), zero
    outside ``mask``. disparity: [H,W,1] relative disparity 0..1 (larger = nearer), 0 outside.
    mask: [H,W,1] head mask of the portrait (the authors' face-parsing ``mask``: the whole person).
    face_mask: [H,W,1] the normal loss domain: the face region inside the head mask where the normal
    map decodes to a valid normal. depth_mask: [H,W,1] where the disparity is supervised (mask and
    disparity > 0.2). face_region: [H,W,1] the face region inside the head mask, not cut by the
    normal map's invalid pixels (the face mask handed to the texture stage); None = face_mask.
    sources: how each part was obtained (mask source, face mask source, resizes) -- shown to the user.
    """

    image: torch.Tensor
    camera: Cameras
    normal_view: torch.Tensor
    disparity: torch.Tensor
    mask: torch.Tensor
    face_mask: torch.Tensor
    depth_mask: torch.Tensor
    sources: dict[str, str] = field(default_factory=dict)
    face_region: torch.Tensor | None = None

    def _comfy_cache_tensors(self) -> list:
        """Its tensors, for a host's RAM-pressure cache (core/held_tensors.py)."""
        return held_tensors(self)

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    def to(self, device: torch.device | str) -> "ReferenceGeometry":
        return ReferenceGeometry(self.image.to(device), self.camera.to(device), self.normal_view.to(device),
                                 self.disparity.to(device), self.mask.to(device), self.face_mask.to(device),
                                 self.depth_mask.to(device), dict(self.sources),
                                 None if self.face_region is None else self.face_region.to(device))

    @property
    def texture_face_mask(self) -> torch.Tensor:
        """[H,W,1] the face region for the texture stage (``face_region``, else ``face_mask``)."""
        return self.face_region if self.face_region is not None else self.face_mask

    def normal_world(self) -> torch.Tensor:
        """[H,W,3] world-frame unit normals (zero outside the mask)."""
        return view_to_world_normals(self.normal_view, self.camera)

    def normal_image(self, background: tuple[float, float, float] = (0.5, 0.5, 1.0)) -> torch.Tensor:
        """The normals re-encoded as a normal image [H,W,3] (the normal-adapted model's convention)."""
        bg = torch.tensor(background, dtype=self.normal_view.dtype, device=self.normal_view.device)
        return torch.where(self.mask > 0.5, (self.normal_view + 1) / 2, bg)
