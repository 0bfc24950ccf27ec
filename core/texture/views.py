"""The texture stage's view plan, per-view crops and the normal control image.

View plan: the ordered camera trajectory of progressive inpainting (paper §3.3). The default is the
authors' 15 views: ten at elevation -15° sweeping from the front to the back of the head, then five at
elevation 45° for the top, all at radius 3.8 with a 30° FoV. Elevation/azimuth follow core.camera
(positive elevation = camera above the head, azimuth 0 = in front of the face, +90 = subject's left).

Crop: each view is cropped to the square around the rendered alpha box, enlarged 1.1×, and resized to
512 before it goes to the diffusion model, so the head fills the frame whatever the camera distance.
The crop is an affine resampling (grid_sample), so a box that pokes out of the frame is padded with
the background instead of being abandoned; the same box maps generated pixels back to the view.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from ..camera import Cameras

DEFAULT_ELEVATIONS: tuple[float, ...] = (-15.0,) * 10 + (45.0,) * 5
DEFAULT_AZIMUTHS: tuple[float, ...] = (-45.0, 45.0, 0.0, -90.0, 90.0, 120.0, -120.0, 150.0, -150.0, 180.0, 0.0, 90.0, -90.0, 135.0, -135.0)
DEFAULT_DISTANCE = 3.8
DEFAULT_FOV = 30.0
# normalbae (control_v11p_sd15_normalbae) encodes a camera-frame normal as RGB = (n+1)/2 with red growing
# toward the image LEFT, green up, blue toward the camera: our OpenGL-convention normal_view has x to
# the right, so x is negated (as the authors do: "red = left, green = top, blue = front").
NORMALBAE_SIGN = (-1.0, 1.0, 1.0)
NORMALBAE_BACKGROUND = (0.5, 0.5, 1.0)  # a flat wall facing the camera, as BAE predicts for backdrops


@dataclass(frozen=True)
class TextureView:
    """One camera of the view plan (degrees, world units)."""

    elevation: float
    azimuth: float
    distance: float = DEFAULT_DISTANCE
    fov: float = DEFAULT_FOV


def default_view_plan(distance: float = DEFAULT_DISTANCE, fov: float = DEFAULT_FOV) -> list[TextureView]:
    """The authors' 15-view trajectory: front-left, front-right, front, sides, back, then the top."""
    return [TextureView(e, a, distance, fov) for e, a in zip(DEFAULT_ELEVATIONS, DEFAULT_AZIMUTHS)]


def parse_view_plan(text: str, distance: float = DEFAULT_DISTANCE, fov: float = DEFAULT_FOV) -> list[TextureView]:
    """Parse an editable plan: ``"default"`` or ``elevation,azimuth`` pairs separated by ``;`` or newlines.

    A pair may carry a third and fourth number (distance, fov) to override the defaults for that view.
    """
    text = (text or "").strip()
    if text.lower() in ("", "default"):
        return default_view_plan(distance, fov)
    views = []
    for k, item in enumerate(p for p in re.split(r"[;\n]+", text) if p.strip()):
        nums = [s for s in re.split(r"[,\s]+", item.strip()) if s]
        try:
            vals = [float(s) for s in nums]
        except ValueError:
            raise ValueError(f"view plan entry {k + 1} {item.strip()!r}: write 'elevation, azimuth' in degrees, e.g. '-15, 45'") from None
        if len(vals) not in (2, 3, 4):
            raise ValueError(f"view plan entry {k + 1} {item.strip()!r}: needs 2 to 4 numbers (elevation, azimuth[, distance[, fov]])")
        if abs(vals[0]) >= 89.99:
            raise ValueError(f"view plan entry {k + 1}: |elevation| must be below 90° (got {vals[0]})")
        d = vals[2] if len(vals) > 2 else distance
        f = vals[3] if len(vals) > 3 else fov
        if d <= 0 or not 1.0 < f < 170.0:
            raise ValueError(f"view plan entry {k + 1}: distance must be > 0 and fov in (1, 170) degrees")
        views.append(TextureView(vals[0], vals[1], d, f))
    if not views:
        raise ValueError("the view plan is empty: give at least one 'elevation, azimuth' pair or 'default'")
    return views


def format_view_plan(plan: Sequence[TextureView]) -> str:
    return "; ".join(f"{v.elevation:g}, {v.azimuth:g}" for v in plan)


def plan_cameras(plan: Sequence[TextureView], resolution: int, device: torch.device | str = "cpu") -> Cameras:
    cams = Cameras.orbit([v.elevation for v in plan], [v.azimuth for v in plan], [v.distance for v in plan], [v.fov for v in plan], resolution)
    return cams.to(device)


# ---------------------------------------------------------------------------------------------- crops
@dataclass(frozen=True)
class CropBox:
    """A square window of a view in pixel units (x0, y0 = top-left corner, size = side)."""

    x0: float
    y0: float
    size: float

    def to_crop(self, pix: torch.Tensor, out_size: int) -> torch.Tensor:
        """View pixel coordinates [...,2] (x, y) → crop pixel coordinates at ``out_size``."""
        s = out_size / self.size
        return torch.stack([(pix[..., 0] - self.x0) * s, (pix[..., 1] - self.y0) * s], dim=-1)

    @staticmethod
    def full(height: int, width: int) -> "CropBox":
        side = float(max(height, width))
        return CropBox((width - side) / 2, (height - side) / 2, side)


def alpha_crop_box(mask: torch.Tensor, scale: float = 1.1, threshold: float = 0.5) -> CropBox:
    """Square box around the covered pixels of ``mask`` [H,W] (or [H,W,1]), enlarged ``scale``×."""
    m = mask.reshape(mask.shape[0], mask.shape[1]) > threshold
    h, w = m.shape
    if not bool(m.any()):
        return CropBox.full(h, w)
    rows = torch.nonzero(m.any(dim=1)).flatten()
    cols = torch.nonzero(m.any(dim=0)).flatten()
    y0, y1 = float(rows[0]), float(rows[-1]) + 1
    x0, x1 = float(cols[0]), float(cols[-1]) + 1
    side = max(y1 - y0, x1 - x0) * scale
    return CropBox((x0 + x1) / 2 - side / 2, (y0 + y1) / 2 - side / 2, side)


def _crop_grid(box: CropBox, height: int, width: int, out_size: int, device, dtype) -> torch.Tensor:
    # crop pixel centre (j+0.5, i+0.5) → view pixel → grid_sample's normalised coords (align_corners=False)
    c = (torch.arange(out_size, device=device, dtype=dtype) + 0.5) * (box.size / out_size)
    xs = (box.x0 + c) / width * 2 - 1
    ys = (box.y0 + c) / height * 2 - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)[None]


def crop_image(image: torch.Tensor, box: CropBox, out_size: int, mode: str = "bilinear", background: float | Sequence[float] = 0.0) -> torch.Tensor:
    """Resample the square ``box`` of ``image`` [H,W,C] to [out_size,out_size,C]; outside = background.

    Downscaling by more than 2× is pre-filtered with area averaging so the crop does not alias.
    """
    h, w, c = image.shape
    bg = torch.as_tensor(background, dtype=image.dtype, device=image.device).expand(c)
    x = (image - bg).permute(2, 0, 1)[None]
    factor = box.size / out_size
    if mode == "bilinear" and factor > 2.0:
        k = int(factor // 1)
        x = F.avg_pool2d(x, k, ceil_mode=True)
        # pooled pixel j covers view pixels [k*j, k*(j+1)): the pooled image spans k*w2 view pixels
        h2, w2 = x.shape[-2:]
        grid = _crop_grid(box, h2 * k, w2 * k, out_size, image.device, image.dtype)
    else:
        grid = _crop_grid(box, h, w, out_size, image.device, image.dtype)
    out = F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)
    return out[0].permute(1, 2, 0) + bg


def normalbae_control(normal_view: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """The control_v11p_sd15_normalbae hint [...,H,W,3] in 0..1 from renderer normals (OpenGL camera frame).

    ``mask`` [...,H,W,1] blends toward the flat-wall background (0.5, 0.5, 1) outside the head.
    """
    sign = torch.tensor(NORMALBAE_SIGN, dtype=normal_view.dtype, device=normal_view.device)
    bg = torch.tensor(NORMALBAE_BACKGROUND, dtype=normal_view.dtype, device=normal_view.device)
    img = (normal_view * sign + 1) * 0.5
    return (img * mask + bg * (1 - mask)).clamp(0, 1)
