"""Landmarks on a head mesh: ray casting, similarity fit, 3D alignment, landmark images.

The synthetic head is an ellipsoid in the EG3D frame seen by the EG3D frontal camera; its "true"
3D landmarks are the surface points under a real MediaPipe layout, and the "MediaPipe output" fed
to the alignment is their image position plus weak-perspective depth, as MediaPipe reports it.
"""
from __future__ import annotations

import math
import os

import cv2
import numpy as np
import pytest
import torch
import trimesh

from idsculpt.core.camera import EG3D_FOCAL, EG3D_RADIUS, Cameras, preview_cameras
from idsculpt.core.face.align import align_landmarks_to_mesh
from idsculpt.core.face.raycast import pixel_rays, raycast, raycast_bruteforce
from idsculpt.core.face.similarity import ransac_similarity, umeyama
from idsculpt.core.face.landmark_image import GROUP_COLORS_BGR, GROUP_COLORS_RGB, PUPIL_COLORS_RGB, draw_landmark_image
from idsculpt.core.face.landmarks import KEYPOINTS_7, FaceLandmarks2D
from idsculpt.core.mesh import HeadMesh

mp = pytest.importorskip("mediapipe")

EG3D_FOV = math.degrees(2 * math.atan(0.5 / EG3D_FOCAL))
RES = 512
AZIMUTHS = (0.0, 45.0, -45.0, 90.0, -90.0, 180.0)


def ellipsoid_head(subdiv: int = 4) -> HeadMesh:
    s = trimesh.creation.icosphere(subdivisions=subdiv)
    v = torch.tensor(s.vertices, dtype=torch.float32) * torch.tensor([0.24, 0.30, 0.27])
    return HeadMesh(v, torch.tensor(s.faces))


@pytest.fixture(scope="module")
def real_layout(portraits_dir) -> FaceLandmarks2D:
    from idsculpt.core.face.landmarks import detect_landmarks

    img = cv2.imread(os.path.join(portraits_dir, "musk_1.jpg"))[:, :, ::-1].copy()
    return detect_landmarks(torch.from_numpy(img).float() / 255.0)


@pytest.fixture(scope="module")
def synthetic(real_layout):
    """(mesh, reference camera, true 3D landmarks [478,3], MediaPipe-like 2D landmarks at 1024 px)."""
    mesh = ellipsoid_head()
    cam = Cameras.orbit(0.0, 0.0, EG3D_RADIUS, EG3D_FOV, RES)
    px = real_layout.normalized[:, :2] * RES
    o, d = pixel_rays(cam, px[None])
    t, _, _ = raycast(o[0], d[0], mesh.vertices, mesh.faces)
    assert torch.isfinite(t).all()
    truth = o[0] + d[0] * t[:, None]
    # MediaPipe-like output: image position + weak-perspective depth in pixel units, at 1024 px
    zc = cam.to_camera(truth)[0, :, 2]
    z0 = zc.mean()
    f = cam.focal_pixels()[0]
    uv = cam.project(truth)[0]
    pts = torch.stack([uv[:, 0], uv[:, 1], f * (zc - z0) / z0], -1) * (1024 / RES)
    lm = FaceLandmarks2D(points=pts, image_size=(1024, 1024), connections=real_layout.connections)
    return mesh, cam, truth, lm


def test_raycast_sphere_known_answer():
    s = trimesh.creation.icosphere(subdivisions=5)
    v, f = torch.tensor(s.vertices, dtype=torch.float32), torch.tensor(s.faces)
    o = torch.tensor([[0.0, 0.0, 3.0], [0.3, 0.2, 3.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    d = torch.tensor([[0.0, 0.0, -1.0], [0.0, 0.0, -2.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    t, tri, _ = raycast(o, d, v, f)
    assert abs(float(t[0]) - 2.0) < 2e-3  # unit sphere, from z=3
    z_hit = math.sqrt(1 - 0.3**2 - 0.2**2)
    assert abs(float(t[1]) * 2 - (3 - z_hit)) < 2e-3  # t in units of |direction| = 2
    assert math.isinf(float(t[2])) and int(tri[2]) == -1
    assert abs(float(t[3]) - 1.0) < 2e-3  # from the centre outward: both faces count


def test_camera_ray_grid_path_matches_bruteforce():
    mesh = ellipsoid_head(5)
    cam = Cameras.orbit(20.0, 35.0, 1.2, 40.0, 64)
    o, d = cam.rays()
    o, d = o.reshape(-1, 3)[::7], d.reshape(-1, 3)[::7] * 1.7  # non-unit directions, shared origin
    t1, f1, b1 = raycast(o, d, mesh.vertices, mesh.faces)
    t2, f2, b2 = raycast_bruteforce(o, d, mesh.vertices, mesh.faces)
    hit = torch.isfinite(t2)
    assert 100 < int(hit.sum()) < o.shape[0] and torch.equal(torch.isfinite(t1), hit)
    assert torch.allclose(t1[hit], t2[hit], atol=1e-5) and float((f1 == f2).float().mean()) > 0.99


def test_umeyama_and_ransac_recover_a_similarity():
    g = torch.Generator().manual_seed(0)
    src = torch.randn(7, 3, generator=g)
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=g))
    rot = q * torch.sign(torch.det(q))
    s, t = 0.37, torch.tensor([0.1, -0.2, 2.0])
    dst = s * src @ rot.T + t
    s2, r2, t2 = umeyama(src, dst)
    assert abs(s2 - s) < 1e-5 and torch.allclose(r2, rot, atol=1e-5) and torch.allclose(t2, t, atol=1e-5)
    bad = dst.clone()
    bad[4] += torch.tensor([0.5, 0.0, 0.0])  # one wrong keypoint
    s3, r3, t3, inl = ransac_similarity(src, bad, threshold=0.05)
    assert inl.tolist() == [True] * 4 + [False] + [True] * 2
    assert abs(s3 - s) < 1e-5 and torch.allclose(r3, rot, atol=1e-5)


def test_aligned_landmarks_project_back_within_2px(synthetic):
    mesh, cam, truth, lm = synthetic
    l3 = align_landmarks_to_mesh(lm, mesh, cam)
    assert l3.points.shape == (478, 3) and l3.fit["keypoints_hit"] == 7
    ref_err = (cam.project(l3.points)[0] - cam.project(truth)[0]).norm(dim=-1)
    assert float(ref_err.max()) < 0.5
    err3d = (l3.points - truth).norm(dim=-1)
    assert float(err3d.median()) < 1e-3 and float(err3d.max()) < 0.02
    side = Cameras.orbit(10.0, [30.0, -30.0], EG3D_RADIUS, EG3D_FOV, RES)
    vis = l3.visibility(side)
    err = (side.project(l3.points) - side.project(truth)).norm(dim=-1)
    assert float(err[vis].max()) < 2.0 and int(vis.sum()) > 500
    # the authors' pure similarity: weak perspective leaves pixels of error (why we refine on the rays)
    l0 = align_landmarks_to_mesh(lm, mesh, cam, refine="none")
    none_err = (cam.project(l0.points)[0] - cam.project(truth)[0]).norm(dim=-1)
    assert float(none_err.max()) > float(ref_err.max()) + 0.5


def test_three_quarter_portrait_keeps_hidden_landmarks_behind(real_layout):
    """A 3/4 reference view of a head with a nose: landmarks the face hides in the portrait must not
    be snapped onto the occluding surface (they would jump to the nose and draw there in other views)."""
    s = trimesh.creation.icosphere(subdivisions=4)
    v = torch.tensor(s.vertices, dtype=torch.float32)
    bump = 0.25 * torch.exp(-(v[:, 0] ** 2 + (v[:, 1] + 0.1) ** 2) / 0.02) * (v[:, 2] > 0)
    mesh = HeadMesh(v * (1 + bump[:, None]) * torch.tensor([0.24, 0.30, 0.27]), torch.tensor(s.faces))
    front = Cameras.orbit(0.0, 0.0, EG3D_RADIUS, EG3D_FOV, RES)
    o, d = pixel_rays(front, (real_layout.normalized[:, :2] * RES)[None])
    t, _, _ = raycast(o[0], d[0], mesh.vertices, mesh.faces)
    truth = o[0] + d[0] * t[:, None]
    cam = Cameras.orbit(0.0, 45.0, EG3D_RADIUS, EG3D_FOV, RES)
    zc = cam.to_camera(truth)[0, :, 2]
    uv = cam.project(truth)[0]
    f = cam.focal_pixels()[0]
    lm = FaceLandmarks2D(torch.stack([uv[:, 0], uv[:, 1], f * (zc - zc.mean()) / zc.mean()], -1), (RES, RES),
                         real_layout.connections)
    ro, rd = pixel_rays(cam, uv[None])
    th, _, _ = raycast(ro[0], rd[0], mesh.vertices, mesh.faces)
    true_hidden = th < zc - 0.005
    assert int(true_hidden.sum()) > 30
    l3 = align_landmarks_to_mesh(lm, mesh, cam)
    assert l3.fit["hidden_in_portrait"] > 0
    ref_err = (cam.project(l3.points)[0] - uv).norm(dim=-1)
    assert float(ref_err.max()) < 0.5
    err3d = (l3.points - truth).norm(dim=-1)
    assert float(err3d[~true_hidden].median()) < 1e-4
    assert float(err3d.max()) < 0.1 * 0.21  # a tenth of the face width, also for the hidden ones
    err_front = (front.project(l3.points)[0] - front.project(truth)[0]).norm(dim=-1)
    assert float(err_front.median()) < 0.5 and float(err_front.quantile(0.9)) < 3.0
    # without the hidden-landmark handling, the far-side landmarks land on the nose
    snapped_all = ro[0] + rd[0] * th[:, None]
    assert float((snapped_all - truth).norm(dim=-1)[true_hidden].max()) > 3 * float(err3d.max())


def _nosed_head_landmarks(real_layout, subdivisions: int):
    """An ellipsoid head with a nose (icosphere of ``subdivisions``) and the portrait's landmarks placed
    on it from the frontal reference camera: (head, FaceLandmarks3D)."""
    s = trimesh.creation.icosphere(subdivisions=subdivisions)
    v = torch.tensor(s.vertices, dtype=torch.float32) * torch.tensor([0.24, 0.30, 0.27])
    nose = 0.09 * torch.exp(-(v[:, 0] ** 2 + (v[:, 1] + 0.02) ** 2) / 0.004) * (v[:, 2] > 0)
    head = HeadMesh(v + nose[:, None] * torch.tensor([0.0, 0.0, 1.0]), torch.tensor(s.faces))
    cam = Cameras.orbit(0.0, 0.0, EG3D_RADIUS, EG3D_FOV, RES)
    o, d = pixel_rays(cam, (real_layout.normalized[:, :2] * RES)[None])
    t, _, _ = raycast(o[0], d[0], head.vertices, head.faces)
    truth = o[0] + d[0] * t.nan_to_num(posinf=0.0)[:, None]
    zc = cam.to_camera(truth)[0, :, 2]
    f = cam.focal_pixels()[0]
    pts = torch.stack([*cam.project(truth)[0].unbind(-1), f * (zc - zc.mean()) / zc.mean()], -1) * (1024 / RES)
    lm = align_landmarks_to_mesh(FaceLandmarks2D(points=pts, image_size=(1024, 1024), connections=real_layout.connections), head, cam)
    return head, lm


def test_occlusion_on_the_decimated_head_matches_the_full_mesh(real_layout):
    """The landmarks keep a decimated copy of a dense head for their occlusion test (a PanoHead mesh has
    ~2 M faces and ISD tests occlusion at every guidance step): its verdicts must match the full mesh's."""
    from idsculpt.core.face.align import OCCLUDER_MAX_FACES

    dense, lm = _nosed_head_landmarks(real_layout, 7)  # 327,680 faces
    assert lm.mesh_faces.shape[0] <= 1.05 * OCCLUDER_MAX_FACES < dense.faces.shape[0]
    cams = Cameras.orbit([0.0] * 12 + [30.0] * 12, [a * 30.0 - 165.0 for a in range(12)] * 2, 3.8, 30.0, 128)
    facing = lm.visibility(cams, occlusion=False)  # in front of the camera and on a surface facing it
    hidden_full = facing & ~lm.visibility(cams, mesh=dense)  # ...but hidden by the full mesh (nose, cheeks)
    hidden_dec = facing & ~lm.visibility(cams)  # ...by the decimated occluder
    print("facing", int(facing.sum()), "hidden (full)", int(hidden_full.sum()), "hidden (decimated)", int(hidden_dec.sum()))
    assert int(hidden_full.sum()) >= 20  # the occlusion test matters on this head
    assert int((hidden_dec & hidden_full).sum()) >= 0.95 * int(hidden_full.sum())  # hides what the mesh hides
    assert int((hidden_dec & ~hidden_full).sum()) <= 0.01 * int((facing & ~hidden_full).sum())  # and little else


def test_zbuffer_visibility_matches_ray_casting(real_layout):
    """ISD's occlusion test on the GPU reads the occluder's depth buffer instead of casting rays (no host
    sync); here both run on the CPU (torch rasteriser) and must give the same verdicts, pixel-centre
    rounding aside, and the drawn images must be the ones ``draw`` gives."""
    _, l3 = _nosed_head_landmarks(real_layout, 5)
    cams = Cameras.orbit([0.0] * 12 + [30.0] * 12, [a * 30.0 - 165.0 for a in range(12)] * 2, 3.8, 30.0, 256)
    facing = l3.visibility(cams, occlusion=False)
    ray = l3.visibility(cams, method="ray")
    zb = l3.visibility(cams, method="zbuffer")
    hidden = facing & ~ray
    assert int(hidden.sum()) >= 20  # the test matters for these views (nose, cheeks)
    assert float((ray == zb).float().mean()) > 0.99, int((ray != zb).sum())
    # landmarks the rays hide, the depth buffer hides too (misses: pixel-centre rounding at the nose's rim)
    assert int((hidden & ~zb).sum()) >= 0.9 * int(hidden.sum()), (int((hidden & ~zb).sum()), int(hidden.sum()))
    with pytest.raises(ValueError, match="visibility method"):
        l3.visibility(cams, method="raster")
    assert torch.equal(l3.draw_async(cams[:3]).result(), l3.draw(cams[:3]))


def test_alignment_rejects_a_wrong_keypoint(synthetic):
    mesh, cam, truth, lm = synthetic
    bad = lm.points.clone()
    bad[KEYPOINTS_7[4], 2] += 150.0  # nose tip depth off by 15% of the image width
    l3 = align_landmarks_to_mesh(FaceLandmarks2D(bad, lm.image_size, lm.connections), mesh, cam)
    inl = l3.fit["keypoint_inliers"]
    assert not bool(inl[4]) and int(inl.sum()) >= 5
    err3d = (l3.points - truth).norm(dim=-1)
    assert float(err3d.median()) < 1e-3


def test_keypoints_missing_the_mesh_message(synthetic):
    mesh, _, _, lm = synthetic
    away = Cameras.orbit(0.0, 0.0, EG3D_RADIUS, EG3D_FOV, RES, target=(3.0, 0.0, 0.0))
    with pytest.raises(RuntimeError, match="keypoints hit the head mesh.*must belong together"):
        align_landmarks_to_mesh(lm, mesh, away)


def _palette() -> set[tuple[int, int, int]]:
    return {tuple(c) for c in GROUP_COLORS_RGB.values()} | {tuple(c) for c in PUPIL_COLORS_RGB.values()}


def _count(img: np.ndarray, color) -> int:
    return int((img == np.array(color, np.uint8)).all(-1).sum())


def test_landmark_images_at_six_azimuths(synthetic, output_dir):
    mesh, cam, _, lm = synthetic
    l3 = align_landmarks_to_mesh(lm, mesh, cam)
    cams = preview_cameras(AZIMUTHS, RES, fov=30.0, elevation=0.0, frame=mesh.vertices)
    ims = (l3.draw(cams).numpy() * 255).round().astype(np.uint8)
    assert ims.shape == (6, RES, RES, 3)
    for az, im in zip(AZIMUTHS, ims):
        cv2.imwrite(os.path.join(output_dir, f"landmarks_az{int(az):+04d}.png"), im[:, :, ::-1])
    cv2.imwrite(os.path.join(output_dir, "landmarks_strip.png"), np.concatenate(list(ims), 1)[:, :, ::-1])
    pal = _palette()
    for im in ims:
        cols = {tuple(int(v) for v in c) for c in np.unique(im.reshape(-1, 3), axis=0)} - {(0, 0, 0)}
        assert cols and cols <= pal  # only the ControlNet's colours (thickness-2 LINE_8: no anti-aliasing)
    front, back = ims[0], ims[5]
    oval, reye, leye = GROUP_COLORS_RGB["face_oval"], GROUP_COLORS_RGB["right_eye"], GROUP_COLORS_RGB["left_eye"]
    # frontal: everything, both pupils; the subject's right eye is on the image left
    assert all(_count(front, c) > 0 for c in pal)
    xs = np.arange(RES)[None, :].repeat(RES, 0)
    assert xs[(front == reye).all(-1)].mean() < xs[(front == leye).all(-1)].mean()
    # behind: only the face oval
    assert _count(back, oval) > 100 and all(_count(back, c) == 0 for c in pal - {tuple(oval)})
    # +-90 is still a side view: every contour is drawn, the far eye too (seen through the head)
    assert all(_count(im, c) > 0 for im in ims[1:5] for c in (oval, reye, leye))
    # with the (non-default) occlusion test: at +90 (camera on the subject's left) the right eye is
    # hidden behind the head, -90 mirrored; at +-45 the near eye is fully drawn, the far one partly
    occ = (l3.draw(cams, occlusion=True).numpy() * 255).round().astype(np.uint8)
    assert _count(occ[3], reye) == 0 and _count(occ[4], leye) == 0
    assert _count(occ[3], oval) > 0 and _count(occ[4], oval) > 0
    assert _count(occ[1], leye) > _count(occ[1], reye) and _count(occ[2], reye) > _count(occ[2], leye)
    assert np.array_equal(occ[5], back)  # behind: the oval alone either way


def test_side_and_back_hints_as_the_authors_draw_them(synthetic):
    """ID-Sculpt's DrawLaion: |azimuth| <= 90 draws all 478 landmarks' contours (no facing or hidden-
    surface test), |azimuth| > 90 only the face oval. At 80 degrees (camera on the subject's left) the
    far (right) eye is behind the head, yet drawn; the occlusion option removes it."""
    mesh, cam, _, lm = synthetic
    l3 = align_landmarks_to_mesh(lm, mesh, cam)
    cams = preview_cameras((80.0, 100.0), RES, fov=30.0, elevation=0.0, frame=mesh.vertices)
    ims = (l3.draw(cams).numpy() * 255).round().astype(np.uint8)
    oval, reye, leye = GROUP_COLORS_RGB["face_oval"], GROUP_COLORS_RGB["right_eye"], GROUP_COLORS_RGB["left_eye"]
    side, behind = ims
    assert _count(side, reye) > 0 and _count(side, leye) > 0 and _count(side, oval) > 0
    assert _count(side, PUPIL_COLORS_RGB[468]) > 0  # the far pupil too
    hidden = (l3.draw(cams, occlusion=True).numpy() * 255).round().astype(np.uint8)
    assert _count(hidden[0], reye) == 0 and _count(hidden[0], leye) > 0
    # the option also travels on the landmarks object (what the ISD hints use: draw() without arguments)
    l3.occlusion = True
    assert np.array_equal((l3.to("cpu").draw(cams).numpy() * 255).round().astype(np.uint8), hidden)
    cols = {tuple(int(v) for v in c) for c in np.unique(behind.reshape(-1, 3), axis=0)} - {(0, 0, 0)}
    assert cols == {tuple(oval)}


def test_drawing_matches_mediapipe_drawing_utils(real_layout):
    """Our RGB drawing == MediaPipe's own drawing_utils on a BGR canvas, channel-reversed, + the pupils
    as ID-Sculpt's draw_pupils makes them (the recipe of the MediaPipe-face ControlNet's data)."""
    from mediapipe.framework.formats import landmark_pb2
    from mediapipe.python.solutions import drawing_utils

    h, w = 384, 320
    norm = real_layout.normalized.numpy()
    conns = real_layout.connections
    groups = ("face_oval", "left_eye", "left_eyebrow", "right_eye", "right_eyebrow", "lips")
    edges = [e for g in groups for e in conns[g]]
    spec = {e: drawing_utils.DrawingSpec(color=GROUP_COLORS_BGR[g], thickness=2) for g in groups for e in conns[g]}
    lml = landmark_pb2.NormalizedLandmarkList(landmark=[landmark_pb2.NormalizedLandmark(x=float(x), y=float(y), z=float(z)) for x, y, z in norm])
    bgr = np.zeros((h, w, 3), np.uint8)
    drawing_utils.draw_landmarks(bgr, lml, connections=edges, landmark_drawing_spec=None, connection_drawing_spec=spec)
    for idx, col in ((468, (10, 200, 250)), (473, (250, 200, 10))):
        x, y = int(math.floor(norm[idx, 0] * w)), int(math.floor(norm[idx, 1] * h))
        bgr[y - 2 : y + 2, x - 2 : x + 2] = col
    ours = draw_landmark_image(norm[:, :2] * [w, h], None, h, w, conns)
    assert np.array_equal(ours, bgr[:, :, ::-1])
