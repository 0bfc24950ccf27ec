"""Geo Supervision: the reference-view geometry targets of stage 2 (ID-Sculpt's "ref_guidance").

ID-Sculpt generates a normal map and a depth map of the aligned portrait with HumanNorm's
normal-adapted and depth-adapted SD1.5 (canny ControlNet + ID adapter; in ComfyUI: the user's
KSampler), then sculpts the DMTet mesh so that, from the reference camera, its rendered normals
match the normal map inside the face mask and its rendered depth matches the depth map (up to
scale and shift) inside the head mask. This module turns those two IMAGEs (+ masks) into
``ReferenceGeometry``, the tensors the sculpt losses read.

Conventions (read from the authors' code, not guessed):
  * Normal image <-> camera-frame normal. HumanNorm trains its normal-adapted model on renders
    made by ``threestudio/models/renderers/nvdiff_rasterizer.py`` with ``normal_type: camera``
    (``configs/humannorm-geometry-head.yaml``): the world normal is multiplied by
    ``inverse(c2w[:3,:3])`` where threestudio's c2w has columns (right, up, -lookat)
    (``threestudio/data/uncond.py``), i.e. OpenGL camera axes, and stored as (n + 1) / 2. So
    R = (x + 1)/2 with x to the image right, G = (y + 1)/2 with y to the image top, B = (z + 1)/2
    with z toward the camera; a surface facing the camera is (0.5, 0.5, 1.0). ID-Sculpt's
    ``comp_normal_viewspace`` is the same encoding (background (0.5, 0.5, 1)); HumanNorm's own
    renders have a black background. This is exactly ``core.render``'s ``normal_view`` convention,
    so decoding is ``normalize(2 * rgb - 1)`` with no axis flips.
  * Depth image: HumanNorm/ID-Sculpt's "depth" is *disparity*: 1 / z, min-max normalised over the
    covered pixels, background 0 (``comp_depth`` in the same renderer). Larger = nearer. We keep it
    as relative disparity in 0..1 (``disparity``), which is what ``core.render``'s ``disparity``
    output gives for the mesh being sculpted; the loss aligns it by least-squares scale + shift and
    Pearson correlation, so only its shape matters.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch

import torch.nn.functional as F

from .camera import Cameras
from .stage_types import ReferenceGeometry

log = logging.getLogger("IDSculpt")

# Where a decoded normal is trusted: a real unit normal stored as (n+1)/2 decodes to length ~1; the
# black background (0,0,0) decodes to length sqrt(3) and mid-grey to 0.
NORMAL_LENGTH_RANGE = (0.6, 1.4)
# ID-Sculpt supervises depth only where the generated disparity exceeds 0.2 (``depth_for_mask > 0.2``):
# the far rim of the head is ~0 in a min-max normalised disparity and is indistinguishable from the
# background there.
DEPTH_MASK_THRESHOLD = 0.2


# ---------------------------------------------------------------------------------------------
# conversions
# ---------------------------------------------------------------------------------------------
def normal_image_to_view_normals(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normal image [...,3] (0..1, HumanNorm encoding) -> (unit view normals [...,3], valid [...,1])."""
    n = image[..., :3].float() * 2.0 - 1.0
    length = n.norm(dim=-1, keepdim=True)
    valid = (length > NORMAL_LENGTH_RANGE[0]) & (length < NORMAL_LENGTH_RANGE[1])
    return n / length.clamp_min(1e-6), valid


def view_normals_to_image(normals: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normal_image_to_view_normals` (no background handling)."""
    return (normals + 1.0) / 2.0


# ---------------------------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------------------------
def _as_hwc(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().float().cpu()
    if t.dim() == 4:
        t = t[0]
    if t.dim() == 2:
        t = t[..., None]
    if t.dim() != 3:
        raise ValueError(f"{what}: expected an image [H,W,C] or [B,H,W,C], got shape {tuple(torch.as_tensor(x).shape)}")
    if not torch.isfinite(t).all():
        raise ValueError(f"{what} contains NaN or infinite values")
    return t


def _as_mask(x: Any, what: str) -> torch.Tensor:
    t = torch.as_tensor(x).detach().float().cpu()
    if t.dim() == 4:  # [B,H,W,C] image used as a mask
        t = t[0].mean(-1)
    if t.dim() == 3:  # ComfyUI MASK [B,H,W] (first used), or an [H,W,C] array
        t = t.mean(-1) if (t.shape[-1] in (1, 3, 4) and t.shape[0] > 4) else t[0]
    if t.dim() != 2:
        raise ValueError(f"{what}: expected a MASK [H,W] or [B,H,W], got shape {tuple(torch.as_tensor(x).shape)}")
    return t[..., None]


def _mask_input(x: Any, what: str, h: int, w: int, notes: list[str]) -> torch.Tensor:
    """A MASK input as a 0/1 [h,w,1] map at the normal map's size (a resize is added to ``notes``)."""
    m = _as_mask(x, what)
    if m.shape[:2] != (h, w):
        notes.append(f"{what} {m.shape[1]}x{m.shape[0]} resized to {w}x{h}")
        m = _resize(m, h, w)
    return (m > 0.5).float()


def _resize(x: torch.Tensor, h: int, w: int, mode: str = "bilinear") -> torch.Tensor:
    if x.shape[:2] == (h, w):
        return x
    y = x.permute(2, 0, 1)[None]
    down = y.shape[-2] > h or y.shape[-1] > w
    if mode == "nearest":
        y = F.interpolate(y, size=(h, w), mode="nearest")
    else:
        y = F.interpolate(y, size=(h, w), mode="bilinear", align_corners=False, antialias=down)
    return y[0].permute(1, 2, 0)


def _to_gray(x: torch.Tensor) -> torch.Tensor:
    return x[..., :3].mean(-1, keepdim=True) if x.shape[-1] >= 3 else x[..., :1]


def face_mask_from_landmarks(landmarks: Any, height: int, width: int) -> torch.Tensor:
    """[H,W,1] face region: the MediaPipe face-oval polygon of the portrait's landmarks, filled.

    ``landmarks``: a ``core.face.landmarks.FaceLandmarks2D`` (any image size: its normalised
    positions are used, so it must come from the portrait itself).
    """
    from .face.segment import face_oval_mask

    return torch.from_numpy(face_oval_mask(landmarks, height, width).astype(np.float32))[..., None]


HEAD_MASK_SOURCES = ("portrait", "generated_maps")


def _maps_estimate(n_valid: torch.Tensor, disp: torch.Tensor, depth_convention: str) -> torch.Tensor:
    """The head mask read off the generated maps: valid normals with non-zero depth (the fallback)."""
    fg = disp > 0.02
    if depth_convention == "far_is_bright":
        fg &= disp < 0.98
    return (n_valid & fg).float()


def build_reference_geometry(
    portrait: Any,
    camera: Cameras,
    normal_image: Any,
    depth_image: Any,
    head_mask: Any | None = None,
    face_mask: Any | None = None,
    landmarks: Any | None = None,
    depth_convention: str = "near_is_bright",
    depth_mask_threshold: float = DEPTH_MASK_THRESHOLD,
    head_mask_source: str = "portrait",
    segmenter: Any | None = None,
) -> ReferenceGeometry:
    """Reference geometry from the generated normal and depth maps of the aligned portrait.

    portrait: [H,W,3] or [B,H,W,C] IMAGE (defines H x W). camera: its reference camera (resized
    to H x W if its resolution differs). normal_image / depth_image: IMAGEs from the normal- and
    depth-adapted models, resized to H x W when needed. head_mask / face_mask: optional MASKs
    (1 = inside; e.g. from a face-parsing model), used as given.
    Without a head mask, ``head_mask_source`` decides: "portrait" (default, the authors' face-parsing
    ``mask``): the portrait's person segmentation ∪ the face oval of ``landmarks``, eroded
    (``core.face.segment``; ``segmenter`` overrides MediaPipe's); where no segmenter can run it falls
    back to the generated maps and says so in ``sources["mask"]``. "generated_maps": pixels with a
    valid decoded normal and non-zero depth ∪ the face oval.
    Without a face mask: the face oval of ``landmarks`` (a ``FaceLandmarks2D`` of the portrait),
    else the head mask. depth_convention: "near_is_bright" (HumanNorm/ID-Sculpt disparity, the
    default) or "far_is_bright" (a depth map; inverted inside the mask).
    """
    if depth_convention not in ("near_is_bright", "far_is_bright"):
        raise ValueError(f"depth_convention must be 'near_is_bright' or 'far_is_bright', got {depth_convention!r}")
    if head_mask_source not in HEAD_MASK_SOURCES:
        raise ValueError(f"head_mask_source must be one of {HEAD_MASK_SOURCES}, got {head_mask_source!r}")
    img = _as_hwc(portrait, "portrait")
    if img.shape[-1] == 1:
        img = img.expand(-1, -1, 3)
    img = img[..., :3].clamp(0, 1)
    h, w = img.shape[:2]
    sources: dict[str, str] = {}
    notes: list[str] = []
    if len(camera) != 1:
        raise ValueError(f"Geo Supervision needs one reference camera, got {len(camera)}")
    if (camera.height, camera.width) != (h, w):
        notes.append(f"reference camera {camera.width}x{camera.height} used at the portrait's {w}x{h}")
        camera = camera.with_resolution(h, w)
    camera = camera.to("cpu")

    nimg = _as_hwc(normal_image, "normal map")
    if nimg.shape[-1] < 3:
        raise ValueError("normal map: expected an RGB image (the normal-adapted model's output), got a 1-channel image")
    nimg = nimg[..., :3]
    if float(nimg.max()) < 0.02:
        raise ValueError(
            "The normal map is all black: the normal-adapted model produced nothing. Check the KSampler that made it "
            "(normal-adapted SD1.5 checkpoint, VAE, denoise 1.0) and connect its decoded IMAGE."
        )
    n_view, n_valid = normal_image_to_view_normals(nimg)
    if n_view.shape[:2] != (h, w):
        notes.append(f"normal map {nimg.shape[1]}x{nimg.shape[0]} resized to {w}x{h}")
        n_view = F.normalize(_resize(n_view, h, w), dim=-1)
        n_valid = _resize(n_valid.float(), h, w, "nearest") > 0.5

    dimg = _as_hwc(depth_image, "depth map")
    disp = _to_gray(dimg).clamp(0, 1)
    if disp.shape[:2] != (h, w):
        notes.append(f"depth map {dimg.shape[1]}x{dimg.shape[0]} resized to {w}x{h}")
        disp = _resize(disp, h, w)
    if float(disp.max()) < 0.02:
        raise ValueError("The depth map is all black: check the KSampler of the depth-adapted model and connect its decoded IMAGE.")

    oval = face_mask_from_landmarks(landmarks, h, w) if landmarks is not None else None
    mask = None
    fallback = ""
    if head_mask is not None:
        mask = _mask_input(head_mask, "head mask", h, w, notes)
        sources["mask"] = "head MASK input"
    elif head_mask_source == "portrait":
        from .face.segment import SegmenterUnavailable, head_mask_from_portrait

        try:
            found = head_mask_from_portrait(img, landmarks, segmenter)
            mask = found.mask
            sources["mask"] = found.source
        except (SegmenterUnavailable, ValueError) as e:  # no segmenter here, or it found no person
            fallback = str(e)
            log.warning("IDSculpt Geo Supervision: no head mask from the portrait (%s); using the generated maps instead", e)
    if mask is None:
        mask = _maps_estimate(n_valid, disp, depth_convention)
        what = "generated maps: valid normals with non-zero depth"
        if oval is not None:
            mask = torch.maximum(mask, oval)
            what += " ∪ face oval"
        if fallback:
            sources["mask"] = f"fallback to the {what} (portrait segmentation unavailable: {fallback})"
        else:
            sources["mask"] = f"{what} (head_mask_source = generated_maps)"
    if float(mask.sum()) < 16:
        raise ValueError(
            "The head mask is empty. Connect a head MASK that covers the head in the portrait (white = head), "
            "or, without one, check that the normal map has a black background and the depth map is not black."
        )
    valid_in_mask = float((n_valid.float() * mask).sum() / mask.sum())
    if valid_in_mask < 0.2:
        raise ValueError(
            f"Only {100 * valid_in_mask:.0f}% of the head has a valid normal: this does not look like a normal map in "
            "the HumanNorm convention (RGB = (normal + 1) / 2). Connect the normal-adapted model's output."
        )
    if valid_in_mask < 0.9:
        notes.append(f"{100 * (1 - valid_in_mask):.0f}% of the head has no valid normal (dropped from the face mask)")

    if depth_convention == "far_is_bright":
        disp = torch.where(mask > 0.5, 1.0 - disp, disp)
        notes.append("depth map inverted (far_is_bright)")
    inside = disp[mask > 0.5]
    lo, hi = float(inside.min()), float(inside.max())
    if hi - lo < 1e-3:
        raise ValueError("The depth map is flat inside the head mask: it carries no shape. Check the depth-adapted model's output.")
    disp = torch.where(mask > 0.5, ((disp - lo) / (hi - lo)).clamp(0, 1), torch.zeros_like(disp))

    if face_mask is not None:
        fmask = _mask_input(face_mask, "face mask", h, w, notes)
        sources["face_mask"] = "face MASK input"
    elif oval is not None:
        fmask = oval
        sources["face_mask"] = "estimated: MediaPipe face oval of the portrait (no face MASK given)"
    else:
        fmask = mask.clone()
        sources["face_mask"] = "head mask (no face MASK and no landmarks given)"
    face_region = fmask * mask
    # the normal loss only where the normal map holds a normal: invalid pixels would be supervised
    # toward garbage directions (the texture stage gets face_region, which they do not cut)
    fmask = face_region * n_valid.float()
    if float(fmask.sum()) < 16:
        raise ValueError(
            "The face mask is empty (or does not overlap the head mask / valid normals). Connect a face MASK "
            "(white = face skin) that matches the portrait."
        )

    normal_view = torch.where(mask > 0.5, n_view, torch.zeros_like(n_view))
    depth_mask = mask * (disp > depth_mask_threshold).float()
    sources["notes"] = "; ".join(notes)
    log.info("IDSculpt Geo Supervision: head mask from %s", sources["mask"])
    return ReferenceGeometry(image=img, camera=camera, normal_view=normal_view, disparity=disp, mask=mask,
                             face_mask=fmask, depth_mask=depth_mask, sources=sources, face_region=face_region)


def preview_reference_geometry(ref: ReferenceGeometry) -> torch.Tensor:
    """[3,H,W,3] preview: portrait with the head mask (blue) and face mask (green) tinted, the
    decoded normals re-encoded (background (0.5, 0.5, 1)), and the disparity."""
    over = ref.image.clone()
    over = torch.where(ref.mask > 0.5, 0.75 * over + 0.25 * torch.tensor([0.1, 0.3, 1.0]), 0.5 * over)
    over = torch.where(ref.face_mask > 0.5, 0.7 * over + 0.3 * torch.tensor([0.1, 1.0, 0.2]), over)
    return torch.stack([over.clamp(0, 1), ref.normal_image().clamp(0, 1), ref.disparity.expand(-1, -1, 3)])


def summary(ref: ReferenceGeometry) -> str:
    """One text line for the user: sizes, coverage and where masks came from."""
    h, w = ref.height, ref.width
    parts = [
        f"reference geometry {w}x{h}",
        f"head {100 * float(ref.mask.mean()):.1f}% of the image",
        f"face {100 * float(ref.face_mask.mean()):.1f}%",
        f"mask: {ref.sources.get('mask', '?')}",
        f"face mask: {ref.sources.get('face_mask', '?')}",
    ]
    if ref.sources.get("notes"):
        parts.append(ref.sources["notes"])
    return "; ".join(parts)
