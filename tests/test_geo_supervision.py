"""Geo Supervision: decode the normal-/depth-adapted models' images of a known mesh back to geometry.

The "generated" maps are renders of a known head-like mesh drawn in HumanNorm's conventions
(normal image (n_view + 1) / 2 on a black background, disparity min-max normalised, background 0),
quantised to 8 bits like a decoded IMAGE. Geo Supervision must give back the camera-frame normals.
"""
from __future__ import annotations

import math

import pytest
import torch
import trimesh

from idsculpt.core.camera import EG3D_FOCAL, EG3D_RADIUS, Cameras, view_to_world_normals, world_to_view_normals
from idsculpt.core.face.raycast import raycast
from idsculpt.core.face.landmarks import FaceLandmarks2D
from idsculpt.core.geo_supervision import (
    build_reference_geometry,
    normal_image_to_view_normals,
    preview_reference_geometry,
    summary,
)
from idsculpt.core.mesh import HeadMesh
from idsculpt.core.stage_types import ReferenceGeometry

render = pytest.importorskip("idsculpt.core.render")

RES = 128
EG3D_FOV = math.degrees(2 * math.atan(0.5 / EG3D_FOCAL))


def head_with_nose() -> HeadMesh:
    s = trimesh.creation.icosphere(subdivisions=4)
    v = torch.tensor(s.vertices, dtype=torch.float32)
    bump = 0.25 * torch.exp(-(v[:, 0] ** 2 + (v[:, 1] + 0.1) ** 2) / 0.02) * (v[:, 2] > 0)
    v = v * (1 + bump[:, None])
    return HeadMesh(v * torch.tensor([0.24, 0.30, 0.27]), torch.tensor(s.faces))


@pytest.fixture(scope="module")
def scene():
    mesh = head_with_nose()
    cam = Cameras.orbit(5.0, 10.0, EG3D_RADIUS, EG3D_FOV * 1.6, RES)  # slightly turned and above: non-trivial
    out = render.render_mesh(mesh.vertices, mesh.faces, cam, antialias=False, backend="torch")
    mask = out.coverage[0]
    normal_img = torch.where(mask > 0.5, (out.normal_view[0] + 1) / 2, torch.zeros(3))  # HumanNorm: black bg
    q = lambda x: torch.round(x * 255) / 255  # noqa: E731  (a decoded 8-bit IMAGE)
    portrait = torch.rand(RES, RES, 3, generator=torch.Generator().manual_seed(0))
    return mesh, cam, out, mask, q(normal_img)[None], q(out.disparity[0].expand(-1, -1, 3))[None], portrait[None]


def _cos(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> float:
    sel = m[..., 0] > 0.5
    return float((a[sel] * b[sel]).sum(-1).mean())


def test_recovers_camera_frame_normals(scene):
    mesh, cam, out, mask, nimg, dimg, portrait = scene
    ref = build_reference_geometry(portrait, cam, nimg, dimg, head_mask_source="generated_maps")
    assert isinstance(ref, ReferenceGeometry) and ref.normal_view.shape == (RES, RES, 3)
    # the head mask read off the maps is the silhouette (valid normals with non-zero disparity)
    inter = float((ref.mask * mask).sum())
    union = float(((ref.mask + mask) > 0.5).float().sum())
    assert inter / union > 0.97
    assert ref.sources["mask"].startswith("generated maps") and ref.sources["face_mask"].startswith("head mask")
    common = ref.mask * mask
    assert _cos(ref.normal_view, out.normal_view[0], common) >= 0.99
    # and in the world: the interpolated vertex normals at the ray hits, computed independently
    o, d = cam.rays()
    sel = common[..., 0] > 0.5
    t, tri, bary = raycast(o[0][sel], d[0][sel], mesh.vertices, mesh.faces)
    assert torch.isfinite(t).all()
    vn = mesh.vertex_normals()[mesh.faces[tri]]
    nw = torch.nn.functional.normalize((1 - bary.sum(-1, keepdim=True)) * vn[:, 0] + bary[:, :1] * vn[:, 1] + bary[:, 1:] * vn[:, 2], dim=-1)
    assert float((ref.normal_world()[sel] * nw).sum(-1).mean()) >= 0.99
    # disparity: larger = nearer; the nose tip is the nearest point of the head
    z = cam.to_camera(o[0][sel] + d[0][sel] * t[:, None])[0, :, 2]
    disp = ref.disparity[sel][:, 0]
    assert float(torch.corrcoef(torch.stack([disp, 1 / z]))[0, 1]) > 0.99
    assert float(ref.disparity.max()) == pytest.approx(1.0) and float(ref.disparity[~sel].max()) <= 1.0
    prev = preview_reference_geometry(ref)
    assert prev.shape == (3, RES, RES, 3) and torch.isfinite(prev).all()
    assert "reference geometry 128x128" in summary(ref)


def test_normal_colour_convention_on_a_sphere():
    """HumanNorm's encoding: R = (x+1)/2 toward the image right, G = (y+1)/2 toward the image top,
    B = (z+1)/2 toward the camera. Known answers at a sphere's centre, right and top edges."""
    s = trimesh.creation.icosphere(subdivisions=5)
    cam = Cameras.orbit(0.0, 0.0, 4.0, 40.0, 96)
    out = render.render_mesh(torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces), cam, antialias=False, backend="torch")
    img = (out.normal_view[0] + 1) / 2
    n, _ = normal_image_to_view_normals(img)
    cov = out.coverage[0, ..., 0] > 0.5
    rows, cols = cov.nonzero(as_tuple=True)
    c = 48
    assert n[c, c, 2] > 0.99  # facing the camera: blue (0.5, 0.5, 1)
    right = n[c, int(cols[rows == c].max())]
    top = n[int(rows[cols == c].min()), c]
    assert right[0] > 0.8 and abs(right[1]) < 0.1  # red high at the image right
    assert top[1] > 0.8 and abs(top[0]) < 0.1  # green high at the image top
    # view <-> world round trip, and the camera frame: view z toward the camera = -camera forward
    nw = view_to_world_normals(n, cam)
    assert torch.allclose(world_to_view_normals(nw, cam), n, atol=1e-5)
    assert torch.allclose(nw[c, c], torch.tensor([0.0, 0.0, 1.0]), atol=0.02)  # camera on +z sees the +z pole


def test_resized_inputs_and_masks(scene):
    mesh, cam, out, mask, nimg, dimg, portrait = scene
    big = torch.nn.functional.interpolate(nimg.permute(0, 3, 1, 2), scale_factor=2, mode="nearest").permute(0, 2, 3, 1)
    head = mask[..., 0][None]
    face = torch.zeros(1, RES, RES)
    face[:, 30:90, 40:100] = 1.0
    ref = build_reference_geometry(portrait, cam.with_resolution(256), big, dimg, head_mask=head, face_mask=face)
    notes = ref.sources["notes"]
    assert "normal map 256x256 resized to 128x128" in notes and "reference camera 256x256" in notes
    assert ref.sources["mask"] == "head MASK input" and ref.sources["face_mask"] == "face MASK input"
    assert _cos(ref.normal_view, out.normal_view[0], mask) >= 0.99
    assert float(ref.face_mask.sum()) <= float((face[0] * mask[..., 0]).sum()) + 1
    assert ref.camera.height == RES


def test_face_mask_from_landmarks(scene):
    from idsculpt.core.face.landmarks import face_oval_polygon, mediapipe_connections

    pytest.importorskip("mediapipe")
    mesh, cam, out, mask, nimg, dimg, portrait = scene
    conns = mediapipe_connections()
    loop = face_oval_polygon(conns)
    pts = torch.zeros(478, 3)
    ang = torch.linspace(0, 2 * math.pi, len(loop) + 1)[:-1]
    pts[loop, 0] = 64 + 20 * torch.cos(ang)  # a circle of radius 20 px around the centre
    pts[loop, 1] = 64 + 20 * torch.sin(ang)
    lm = FaceLandmarks2D(pts * 2, (256, 256), conns)  # detected on a 2x portrait: normalised coords count
    ref = build_reference_geometry(portrait, cam, nimg, dimg, landmarks=lm, head_mask_source="generated_maps")
    assert ref.sources["face_mask"].startswith("estimated: MediaPipe face oval")
    area = float(ref.face_mask.sum())
    assert abs(area - math.pi * 20**2) < 0.1 * math.pi * 20**2
    assert float((ref.face_mask * (1 - ref.mask)).sum()) == 0.0
    # an artefact of the normal map (a black hole in the face) cuts the maps' silhouette; with the
    # landmarks the head mask is that silhouette united with the face oval, so the hole is filled
    holed = nimg.clone()
    holed[:, 60:68, 60:68] = 0.0
    alone = build_reference_geometry(portrait, cam, holed, dimg, head_mask_source="generated_maps")
    assert float(alone.mask[60:68, 60:68].sum()) == 0.0
    ref = build_reference_geometry(portrait, cam, holed, dimg, landmarks=lm, head_mask_source="generated_maps")
    assert ref.sources["mask"].startswith("generated maps: valid normals with non-zero depth ∪ face oval")
    oval = ref.texture_face_mask
    assert abs(float(oval.sum()) - math.pi * 20**2) < 0.1 * math.pi * 20**2 and float(oval[60:68, 60:68].min()) == 1.0
    assert torch.equal(ref.mask, torch.maximum(alone.mask, oval))
    # the normal loss avoids the hole (no normal there); the face region for the texture stage does not
    assert float(ref.face_mask[60:68, 60:68].sum()) == 0.0 and torch.equal(ref.face_mask, oval * alone.mask)


def test_far_is_bright_inverts(scene):
    mesh, cam, out, mask, nimg, dimg, portrait = scene
    near = build_reference_geometry(portrait, cam, nimg, dimg, head_mask_source="generated_maps")
    far_img = torch.where(dimg > 0, 1 - dimg, dimg)
    far_img = torch.where(mask[None].expand_as(far_img) > 0.5, far_img.clamp_min(1 / 255), far_img)
    far = build_reference_geometry(portrait, cam, nimg, far_img, head_mask=mask[..., 0][None], depth_convention="far_is_bright")
    sel = (near.mask * far.mask)[..., 0] > 0.5
    assert float(torch.corrcoef(torch.stack([near.disparity[sel][:, 0], far.disparity[sel][:, 0]]))[0, 1]) > 0.99


def test_bad_inputs_have_clear_messages(scene):
    mesh, cam, out, mask, nimg, dimg, portrait = scene
    with pytest.raises(ValueError, match="normal map is all black"):
        build_reference_geometry(portrait, cam, torch.zeros_like(nimg), dimg)
    with pytest.raises(ValueError, match="depth map is all black"):
        build_reference_geometry(portrait, cam, nimg, torch.zeros_like(dimg))
    with pytest.raises(ValueError, match="head mask is empty"):
        build_reference_geometry(portrait, cam, nimg, dimg, head_mask=torch.zeros(1, RES, RES))
    with pytest.raises(ValueError, match="face mask is empty"):
        build_reference_geometry(portrait, cam, nimg, dimg, face_mask=torch.zeros(1, RES, RES), head_mask_source="generated_maps")
    with pytest.raises(ValueError, match="head_mask_source"):
        build_reference_geometry(portrait, cam, nimg, dimg, head_mask_source="parsing")
    with pytest.raises(ValueError, match="does not look like a normal map"):
        build_reference_geometry(portrait, cam, torch.full_like(nimg, 0.5), dimg, head_mask=mask[..., 0][None])
    with pytest.raises(ValueError, match="flat inside the head mask"):
        build_reference_geometry(portrait, cam, nimg, torch.where(dimg > 0, torch.full_like(dimg, 0.6), dimg),
                                 head_mask_source="generated_maps")
    with pytest.raises(ValueError, match="one reference camera"):
        build_reference_geometry(portrait, Cameras.cat([cam, cam]), nimg, dimg)
