"""The head mask from the portrait itself (core.face.segment), and Geo Supervision's fallback.

The authors' ``mask`` is BiSeNet parsing > 0 of the 512² crop, eroded once by 5×5: the whole person.
Ours is MediaPipe's selfie segmentation ∪ the face oval, eroded the same way. Checked on real
portraits (shared/data/portraits, MIT-licensed deepface test photos) aligned into PanoHead's crop.
"""
from __future__ import annotations

import logging
import math
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idsculpt.core.face import segment
from idsculpt.core.face.landmarks import FaceLandmarks2D, face_oval_polygon
from idsculpt.core.face.segment import (
    MediaPipeSelfieSegmenter,
    SegmenterUnavailable,
    erosion_kernel,
    face_oval_mask,
    head_mask_from_portrait,
)
from idsculpt.core.geo_supervision import build_reference_geometry, normal_image_to_view_normals, summary

cv2 = pytest.importorskip("cv2")


def _mediapipe_or_skip():
    pytest.importorskip("mediapipe")
    try:
        MediaPipeSelfieSegmenter()
    except SegmenterUnavailable as e:
        pytest.skip(f"no MediaPipe selfie segmentation here: {e}")


@pytest.fixture(scope="module")
def aligned(portraits_dir):
    """{name: (aligned 512² crop uint8, its FaceLandmarks2D)} for three different portraits."""
    _mediapipe_or_skip()
    from idsculpt.core.face.landmarks import detect_landmarks
    from idsculpt.core.panohead.align import align_portrait

    out = {}
    for name in ("jolie_1", "musk_1", "bezos_1"):
        img = cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, f"{name}.jpg")), cv2.COLOR_BGR2RGB)
        crop = align_portrait(img).image
        out[name] = (crop, detect_landmarks(crop))
    return out


def _torch_erode(mask: np.ndarray, k: int) -> np.ndarray:
    """An independent erosion (max-pool of the complement); outside the frame does not erode, as cv2's."""
    x = torch.from_numpy(~mask).float()[None, None]
    r = k // 2
    x = F.pad(x, (r, r, r, r), value=0.0)
    return ~(F.max_pool2d(x, k, stride=1)[0, 0].numpy() > 0)


def _circle_landmarks(cx: float, cy: float, radius: float, size: int) -> FaceLandmarks2D:
    from idsculpt.core.face.landmarks import mediapipe_connections

    conns = mediapipe_connections()
    loop = face_oval_polygon(conns)
    pts = torch.zeros(478, 3)
    ang = torch.linspace(0, 2 * math.pi, len(loop) + 1)[:-1]
    pts[loop, 0] = cx + radius * torch.cos(ang)
    pts[loop, 1] = cy + radius * torch.sin(ang)
    return FaceLandmarks2D(pts, (size, size), conns)


# ------------------------------------------------------------------------------ real portraits
@pytest.mark.parametrize("name", ["jolie_1", "musk_1", "bezos_1"])
def test_segmentation_covers_the_face_oval_and_leaves_the_background(aligned, name):
    crop, lm = aligned[name]
    found = head_mask_from_portrait(crop, lm)
    m = found.mask[..., 0].numpy() > 0.5
    oval = face_oval_mask(lm, 512, 512)
    assert found.source.startswith("portrait: MediaPipe selfie segmentation ∪ face oval, eroded 5x5")
    # the segmenter alone already covers the whole face; after the erosion the mask keeps all of it but
    # the odd pixel where the oval touches the silhouette (a cheek against the background)
    assert found.segmented_face >= 0.99 and (m & oval).sum() >= 0.999 * oval.sum()
    # PanoHead's crop has background in its top corners (these three have no hair there)
    corners = np.zeros_like(m)
    corners[:96, :96] = corners[:96, -96:] = True
    assert m[corners].mean() < 0.1
    # known background: the crop shrunk onto a synthetic canvas; everything beside and above it is background
    # (below it the segmenter may continue the body, as a parser would call it cloth)
    yy, xx = np.mgrid[0:512, 0:512] / 511.0
    canvas = (np.stack([0.3 + 0.4 * xx, 0.5 + 0.3 * yy, 0.6 - 0.3 * xx * yy], -1) * 255).astype(np.uint8)
    canvas[128:384, 128:384] = cv2.resize(crop, (256, 256), interpolation=cv2.INTER_AREA)
    from idsculpt.core.face.landmarks import detect_landmarks

    small = head_mask_from_portrait(canvas, detect_landmarks(canvas))
    sm = small.mask[..., 0].numpy() > 0.5
    background = np.ones_like(sm)
    background[128:, 128:384] = False
    background[384:] = False
    assert sm[background].mean() < 0.01
    assert small.segmented_face >= 0.99 and 0.3 < sm[128:384, 128:384].mean() < 0.9


# ------------------------------------------------------------------------------ known answers
def test_erosion_kernel_follows_the_authors_5x5_at_512():
    assert [erosion_kernel(s, s) for s in (128, 256, 512, 1024)] == [1, 3, 5, 9]


def test_plugged_segmenter_union_with_oval_then_eroded():
    """A segmenter returning a rectangle (the extension point for a face-parsing model): the head mask is
    (rectangle ∪ face oval) eroded by the authors' 5×5 at 512 px -- checked against an independent erosion."""
    pytest.importorskip("mediapipe")

    class Box:
        name = "box segmenter"

        def __call__(self, rgb):
            p = np.zeros(rgb.shape[:2], np.float32)
            p[100:300, 150:350] = 0.9
            return p

    img = np.zeros((512, 512, 3), np.uint8)
    alone = head_mask_from_portrait(img, None, Box())
    got = alone.mask[..., 0].numpy() > 0.5
    want = np.zeros((512, 512), bool)
    want[102:298, 152:348] = True  # a 5×5 erosion takes 2 px off each side
    assert np.array_equal(got, want) and alone.source == "portrait: box segmenter, eroded 5x5"
    lm = _circle_landmarks(250.0, 330.0, 60.0, 512)  # an oval reaching below the box
    both = head_mask_from_portrait(img, lm, Box())
    box = np.zeros((512, 512), bool)
    box[100:300, 150:350] = True
    oval = face_oval_mask(lm, 512, 512)
    assert np.array_equal(both.mask[..., 0].numpy() > 0.5, _torch_erode(box | oval, 5))
    assert both.segmented_face == pytest.approx((box & oval).sum() / oval.sum()) and 0.0 < both.segmented_face < 0.5
    with pytest.raises(ValueError, match="found no person"):
        head_mask_from_portrait(img, None, type("Empty", (), {"name": "empty", "__call__": lambda self, rgb: np.zeros(rgb.shape[:2])})())


# ------------------------------------------------------------------------------ fallback
def test_segmenter_unavailable_reasons(monkeypatch, tmp_path):
    # a mediapipe without the model files in its wheel: refused before anything could be fetched
    monkeypatch.setattr(segment, "_mediapipe_dir", lambda: str(tmp_path))
    with pytest.raises(SegmenterUnavailable, match="no selfie-segmentation model in its wheel"):
        MediaPipeSelfieSegmenter()
    monkeypatch.setattr(segment, "_mediapipe_dir", lambda: None)
    with pytest.raises(SegmenterUnavailable, match="mediapipe is not installed"):
        segment.load_portrait_segmenter()


def _no_legacy(*_a, **_k):
    raise ModuleNotFoundError("No module named 'mediapipe.python.solutions'")


@pytest.fixture(scope="module")
def maps():
    """A 128² sphere-ish head rendered as HumanNorm normal / disparity images, and a portrait of it."""
    render = pytest.importorskip("idsculpt.core.render")
    import trimesh

    from idsculpt.core.camera import EG3D_RADIUS, Cameras

    s = trimesh.creation.icosphere(subdivisions=4)
    v = torch.tensor(s.vertices, dtype=torch.float32) * torch.tensor([0.24, 0.30, 0.27])
    cam = Cameras.orbit(0.0, 0.0, EG3D_RADIUS, 21.0, 128)
    out = render.render_mesh(v, torch.tensor(s.faces), cam, antialias=False, backend="torch")
    cov = out.coverage[0]
    nimg = torch.where(cov > 0.5, (out.normal_view[0] + 1) / 2, torch.zeros(3))
    nimg[58:70, 58:70] = 0.0  # an artefact: a black hole in the middle of the face
    dimg = out.disparity[0].expand(-1, -1, 3)
    portrait = torch.where(cov > 0.5, torch.tensor([0.8, 0.6, 0.5]), torch.tensor([0.2, 0.3, 0.4]))
    return portrait[None], cam, nimg[None], dimg[None]


def test_geo_supervision_falls_back_and_says_so(monkeypatch, caplog, maps):
    """Without the legacy segmenter (a newer mediapipe): the head mask is the generated maps' estimate ∪ the
    face oval, ``sources`` / ``summary`` say so, and a warning is logged."""
    pytest.importorskip("mediapipe")
    portrait, cam, nimg, dimg = maps
    monkeypatch.setattr(segment, "import_mediapipe", _no_legacy)
    lm = _circle_landmarks(64.0, 64.0, 20.0, 128)
    with caplog.at_level(logging.WARNING, logger="IDSculpt"):
        ref = build_reference_geometry(portrait, cam, nimg, dimg, landmarks=lm)
    src = ref.sources["mask"]
    assert src.startswith("fallback to the generated maps: valid normals with non-zero depth ∪ face oval")
    assert "mediapipe legacy solutions unavailable" in src and "fallback" in summary(ref)
    assert any("no head mask from the portrait" in r.getMessage() for r in caplog.records)
    # known answer: (valid decoded normal ∧ disparity > 0.02) ∪ filled oval
    _, valid = normal_image_to_view_normals(nimg[0])
    est = (valid & (dimg[0, ..., :1] > 0.02)).float()
    oval = torch.from_numpy(face_oval_mask(lm, 128, 128)).float()[..., None]
    assert torch.equal(ref.mask, torch.maximum(est, oval))
    assert float(ref.mask[58:70, 58:70].min()) == 1.0  # the oval fills the artefact's hole


def test_portrait_mask_is_not_cut_by_map_artefacts(maps):
    """With a segmenter, the maps' artefacts no longer reach the head mask or the texture's face region;
    only the normal-loss domain (face_mask) skips the pixels without a normal."""
    portrait, cam, nimg, dimg = maps

    class Silhouette:
        name = "silhouette segmenter"

        def __call__(self, rgb):
            return (rgb[..., 0] > 150).astype(np.float32)  # the portrait's head colour

    lm = _circle_landmarks(64.0, 64.0, 20.0, 128)
    ref = build_reference_geometry(portrait, cam, nimg, dimg, landmarks=lm, segmenter=Silhouette())
    assert ref.sources["mask"].startswith("portrait: silhouette segmenter ∪ face oval, eroded 1x1")
    head = (portrait[0, ..., :1] > 0.7).float()
    oval = torch.from_numpy(face_oval_mask(lm, 128, 128)).float()[..., None]
    assert torch.equal(ref.mask, torch.maximum(head, oval))  # kernel 1 at 128 px: no erosion
    assert torch.equal(ref.texture_face_mask, oval * ref.mask) and float(ref.texture_face_mask[58:70, 58:70].min()) == 1.0
    assert float(ref.face_mask[58:70, 58:70].sum()) == 0.0
