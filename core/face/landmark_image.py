"""Landmark images in the style the MediaPipe-face ControlNet was trained on.

CrucibleAI/ControlNetMediaPipeFace ("LAION-Face") draws MediaPipe's contour connections on black
with one colour per part, thickness 2, and the two pupils as small squares; ID-Sculpt draws the
3D landmarks placed on the head the same way for every view (``threestudio/utils/draw_laion.py``):

  part            colour (B, G, R as specified)   -> stored here as (R, G, B)
  face oval       (10, 200, 10)
  left eye        (180, 200, 10)
  left eyebrow    (180, 220, 10)
  right eye       (10, 200, 180)
  right eyebrow   (10, 220, 180)
  lips            (10, 180, 10)
  pupil 468       (10, 200, 250)   4x4 square
  pupil 473       (250, 200, 10)   4x4 square

The specification draws on a BGR canvas and reverses the channels at the end; drawing the reversed
colours straight onto an RGB canvas gives the identical image. Seen from behind (|azimuth| > 90
degrees) only the face oval is drawn. "left"/"right" are the subject's, as in MediaPipe.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

GROUP_COLORS_BGR: dict[str, tuple[int, int, int]] = {
    "face_oval": (10, 200, 10),
    "left_eye": (180, 200, 10),
    "left_eyebrow": (180, 220, 10),
    "right_eye": (10, 200, 180),
    "right_eyebrow": (10, 220, 180),
    "lips": (10, 180, 10),
}
PUPIL_COLORS_BGR: dict[int, tuple[int, int, int]] = {468: (10, 200, 250), 473: (250, 200, 10)}
GROUP_COLORS_RGB = {k: v[::-1] for k, v in GROUP_COLORS_BGR.items()}
PUPIL_COLORS_RGB = {k: v[::-1] for k, v in PUPIL_COLORS_BGR.items()}
LINE_THICKNESS = 2
PUPIL_HALF_WIDTH = 2  # the square covers rows y-2 .. y+1 and columns x-2 .. x+1 (4x4)
BACK_VIEW_AZIMUTH = 90.0
_FRONT_GROUPS = ("face_oval", "left_eye", "left_eyebrow", "right_eye", "right_eyebrow", "lips")


def draw_landmark_image(
    points_px: np.ndarray,
    visible: np.ndarray | None,
    height: int,
    width: int,
    connections: dict[str, Any],
    back_view: bool = False,
    thickness: int = LINE_THICKNESS,
) -> np.ndarray:
    """One landmark image, RGB uint8 [H,W,3].

    points_px: [478,2] pixel coordinates (x right, y down; pixel centres at +0.5, so pixel index =
    floor). visible: [478] bool, a connection is drawn only when both ends are visible (None = all).
    back_view: draw only the face oval (the camera is behind the head).
    """
    import cv2

    img = np.zeros((height, width, 3), np.uint8)
    pts = np.floor(np.clip(np.nan_to_num(np.asarray(points_px, np.float64), nan=-1e4), -1e4, 1e4)).astype(np.int64)
    vis = np.ones(len(pts), bool) if visible is None else np.asarray(visible, bool)
    groups = ("face_oval",) if back_view else _FRONT_GROUPS
    for g in groups:
        color = tuple(int(c) for c in GROUP_COLORS_RGB[g])
        for a, b in connections[g]:
            if vis[a] and vis[b]:
                cv2.line(img, (int(pts[a, 0]), int(pts[a, 1])), (int(pts[b, 0]), int(pts[b, 1])), color, thickness)
    if not back_view:
        hw = PUPIL_HALF_WIDTH
        for idx, color in PUPIL_COLORS_RGB.items():
            if idx >= len(pts) or not vis[idx]:
                continue
            x, y = int(pts[idx, 0]), int(pts[idx, 1])
            y0, y1, x0, x1 = max(y - hw, 0), min(y + hw, height), max(x - hw, 0), min(x + hw, width)
            if y0 < y1 and x0 < x1:
                img[y0:y1, x0:x1] = color
    return img


def is_back_view(azimuth_deg: float) -> bool:
    """|azimuth| > 90 degrees (with a small tolerance, so an orbit camera at exactly 90 is a side view)."""
    return abs(azimuth_deg) > BACK_VIEW_AZIMUTH + 1e-3


def camera_azimuth(cam2world: torch.Tensor, centre: torch.Tensor | None = None) -> torch.Tensor:
    """Azimuth [B] in degrees of cameras around the head (core.camera: 0 = in front on +z, +90 = +x),
    measured around ``centre`` (default: the world origin, where the head sits)."""
    pos = cam2world[:, :3, 3]
    if centre is not None:
        pos = pos - centre.to(pos).reshape(1, 3)
    return torch.rad2deg(torch.atan2(pos[:, 0], pos[:, 2]))


def draw_landmark_images(
    points_px: torch.Tensor,
    visible: torch.Tensor | None,
    azimuth: torch.Tensor | Sequence[float],
    height: int,
    width: int,
    connections: dict[str, Any],
) -> torch.Tensor:
    """A batch of landmark images, float [B,H,W,3] in 0..1 (ComfyUI IMAGE layout).

    points_px: [B,478,2]; visible: [B,478] bool or None; azimuth: [B] degrees.
    """
    az = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1)
    pts = points_px.detach().cpu().numpy()
    vis = None if visible is None else visible.detach().cpu().numpy()
    out = [
        draw_landmark_image(pts[i], None if vis is None else vis[i], height, width, connections,
                            back_view=is_back_view(float(az[i])))
        for i in range(pts.shape[0])
    ]
    return torch.from_numpy(np.stack(out)).float() / 255.0
