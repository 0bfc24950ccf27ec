"""The data the paper's stages hand each other: one home, so the stages never import one another.

Stage 1 (core/panohead: the PanoHead inversion, or a placed head mesh) gives the sculpt its multi-view
supervision (:class:`GanViews`); the reference-view targets built from the generated normal/depth maps and the
portrait's masks (:class:`ReferenceGeometry`, core/geo_supervision.py) feed the sculpt's reference steps.
The progress/interrupt contract (:data:`ProgressFn`, :data:`InterruptFn`) every long loop in core takes is
declared here too. Besides these, stages meet only through the primitives (camera, mesh, render, dmtet, face,
guidance).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

import torch

from .camera import Cameras, view_to_world_normals
from .held_tensors import held_tensors

#: ``progress(step, total, preview)``: called by a long loop after a step; ``step`` counts 1..``total``.
#: ``preview`` is None or one image as a torch tensor [H,W,3] float 0..1 (CPU or device; a host may also
#: accept [B,H,W,3] and show the first). One type for every stage, so a host adapter (nodes/common.py
#: ComfyProgress) needs no per-stage conversion: a stage whose previews are uint8 arrays (eval) converts
#: them before calling. A progress callback may itself raise to stop (ComfyProgress checks the interrupt
#: flag there too), so the same rule as for the interrupt holds for it.
ProgressFn = Callable[[int, int, Optional[torch.Tensor]], None]

#: ``interrupt()``: called at least once per iteration of every long loop (between chunks, views, steps);
#: it returns nothing and RAISES to stop. Its return value is never read: a callable that returns True
#: does not stop anything. ComfyUI's is ``comfy.model_management.throw_exception_if_processing_interrupted``
#: (nodes/common.py ComfyProgress.interrupt), which raises ``comfy.model_management.InterruptProcessingException``
#: (a plain ``Exception`` subclass) once the user pressed Cancel; ComfyUI's executor catches it and marks the
#: prompt interrupted. core never catches it: no ``except`` in core wraps a loop that calls ``interrupt`` or
#: ``progress``, so the exception leaves the stage with no result, and ``finally`` blocks only release memory.
InterruptFn = Callable[[], None]


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
