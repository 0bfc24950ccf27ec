"""PanoHead stage 1 on a tiny generator: camera conventions, inversion + PTI, mesh, GAN views, alignment, template."""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from panohead_fixtures import ELLIPSOID, plant_ellipsoid, tiny_generator  # noqa: E402
from torch_threads import one_thread  # noqa: E402,F401  (autouse: this module runs single-threaded)

from idsculpt.core.camera import Cameras, eg3d_frontal_label  # noqa: E402
from idsculpt.core.panohead import align as al  # noqa: E402
from idsculpt.core.panohead.extract import extract_mesh, gan_view_cameras, render_gan_views  # noqa: E402
from idsculpt.core.panohead.invert import InversionConfig, invert  # noqa: E402
from idsculpt.core.panohead.perceptual import VGG16Perceptual  # noqa: E402
from idsculpt.core.panohead.template import render_sdf_views  # noqa: E402

# PanoHead's documented frontal label (EG3D/PanoHead dataset.json convention; camera on +z at 2.7)


PANOHEAD_FRONTAL = [1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1]


@pytest.fixture(scope="module")
def planted():
    g = tiny_generator(seed=1)
    return g, plant_ellipsoid(g)


def _ellipsoid_sdf(p: torch.Tensor, scale: float = math.sqrt(0.7)) -> torch.Tensor:
    r = torch.tensor(ELLIPSOID) * scale  # planted sigma = 100 (1 - q) - 10 = 20 at q = 0.7
    k0 = (p / r).norm(dim=-1)
    k1 = (p / r ** 2).norm(dim=-1).clamp_min(1e-9)
    return k0 * (k0 - 1) / k1


def test_frontal_label_is_panoheads():
    assert torch.allclose(eg3d_frontal_label()[0], torch.tensor(PANOHEAD_FRONTAL, dtype=torch.float32), atol=1e-5)
    assert torch.allclose(al.label_from_rotation(np.eye(3))[0], torch.tensor(PANOHEAD_FRONTAL, dtype=torch.float32), atol=1e-6)


def test_generator_rays_equal_core_camera_rays(planted):
    """PanoHead's world and ours coincide: same label -> same rays, pixel for pixel."""
    g, _ = planted
    cams = Cameras.orbit([10.0, -20.0], [35.0, -120.0], 2.7, 18.0, resolution=16)
    lab = cams.eg3d_label()
    o, d = g.ray_sampler(lab[:, :16].view(-1, 4, 4), lab[:, 16:].view(-1, 3, 3), 16)
    o2, d2 = cams.rays()
    assert torch.allclose(d, d2.reshape(2, -1, 3), atol=1e-5) and torch.allclose(o, o2.reshape(2, -1, 3), atol=1e-5)


def test_gan_view_cameras_follow_panohead_sampler():
    cams = gan_view_cameras(resolution=64)
    assert len(cams) == 40
    # LookAtPoseSampler(pi/2 + yaw, pi/2 - 5deg, radius 2.7): polar angle arccos(1 - 2 v / pi)
    v = (math.pi / 2 - math.radians(5)) / math.pi
    phi = math.acos(1 - 2 * v)
    for i in (0, 10, 25):
        yaw = math.radians(9 * i)
        h = math.pi / 2 + yaw
        want = [2.7 * math.sin(phi) * math.cos(math.pi - h), 2.7 * math.cos(phi), 2.7 * math.sin(phi) * math.sin(math.pi - h)]
        assert torch.allclose(cams.position[i], torch.tensor(want, dtype=torch.float32), atol=1e-5)
    focal = 1 / (math.tan(25 * 3.14159 / 360) * 1.414)  # PanoHead's FOV_to_intrinsics(25)
    assert torch.allclose(cams.focal_normalized(), torch.full((40,), focal), atol=1e-5)


def test_mesh_is_watertight_and_where_the_camera_sees_it(planted):
    import cv2
    import trimesh

    g, planes = planted
    mesh = extract_mesh(g, planes=planes, resolution=48)
    tm = trimesh.Trimesh(mesh.vertices.numpy(), mesh.faces.numpy(), process=False)
    assert tm.is_watertight and tm.volume > 0  # closed, outward-facing
    a, b, c = (x * math.sqrt(0.7) for x in ELLIPSOID)
    assert abs(tm.volume / (4 / 3 * math.pi * a * b * c) - 1) < 0.08
    assert np.allclose(tm.extents / 2, [a, b, c], atol=0.03)
    # volume-rendered silhouette (the generator's own renderer) vs the mesh projected by core.camera
    for label in (eg3d_frontal_label(), Cameras.orbit(15.0, 70.0, 2.7, 13.4).eg3d_label()):
        res = 48
        with torch.no_grad():
            out = g.synthesis(None, label, neural_rendering_resolution=res, planes=planes, superresolve=False)
        vol = (out["image_weight"][0, 0] > 0.5).numpy()
        cam = Cameras.from_eg3d_label(label, res)
        uv = cam.project(mesh.vertices)[0].numpy()
        sil = np.zeros((res, res), np.uint8)
        cv2.fillPoly(sil, [np.round(uv[f] * 16).astype(np.int32) for f in mesh.faces.numpy()], 1, shift=4)
        iou = (vol & (sil > 0)).sum() / max((vol | (sil > 0)).sum(), 1)
        assert iou > 0.85, iou


def test_marching_only_the_surface_box_gives_the_whole_grids_mesh():
    """mesh_from_grid marches the box around the voxels above the level; the mesh must be the whole grid's:
    the same triangles in the same order at the same places (skimage on the full padded grid as reference),
    for a head off the grid's centre, and for one touching the border (clamped box)."""
    from skimage.measure import marching_cubes

    from idsculpt.core.panohead.extract import mesh_from_grid

    n, box = 64, 1.0
    lin = torch.linspace(-box / 2, box / 2, n)
    x, y, z = torch.meshgrid(lin, lin, lin, indexing="ij")
    for centre, radii, border in (((0.08, -0.05, 0.11), (0.17, 0.21, 0.15), 4), ((0.0, 0.0, 0.0), (0.49, 0.3, 0.3), 1)):
        q = ((x - centre[0]) / radii[0]) ** 2 + ((y - centre[1]) / radii[1]) ** 2 + ((z - centre[2]) / radii[2]) ** 2
        sigma = 100 * (1 - q) - 10  # 20 on the surface q = 0.7
        sigma[3, 5, 7] = float("nan")  # NaN counts as empty, as before
        mesh = mesh_from_grid(sigma, box, level=20.0, border=border, largest_component=False)
        g = np.nan_to_num(sigma.numpy().copy(), nan=-1000.0)
        g[:border], g[-border:], g[:, :border], g[:, -border:], g[:, :, :border], g[:, :, -border:] = (-1000,) * 6
        step = box / (n - 1)
        verts, faces, _, _ = marching_cubes(g, level=20.0, spacing=(step, step, step), gradient_direction="descent")
        assert np.array_equal(mesh.faces.numpy(), faces[:, [0, 2, 1]])
        assert np.allclose(mesh.vertices.numpy(), verts - box / 2, atol=1e-6)
        assert len(faces) > 500
    with pytest.raises(RuntimeError, match="never exceeds"):
        mesh_from_grid(torch.zeros(16, 16, 16), box, level=20.0)


def test_gan_views_normals_and_masks_match_the_planted_shape(planted):
    g, planes = planted
    cams = gan_view_cameras(resolution=24)[[0, 10, 20, 30]]
    views = render_gan_views(g, planes=planes, cameras=cams, resolution=24)
    assert views.normals.shape == (4, 24, 24, 3) and views.masks.shape == (4, 24, 24, 1)
    n_ref, m_ref = render_sdf_views(_ellipsoid_sdf, cams.with_resolution(24))
    both = (views.masks[..., 0] > 0) & (m_ref[..., 0] > 0)
    iou = both.sum() / ((views.masks[..., 0] > 0) | (m_ref[..., 0] > 0)).sum()
    assert iou > 0.8, iou
    cos = (views.normals * n_ref).sum(-1)[both]
    assert cos.mean() > 0.9, cos.mean()
    assert torch.isfinite(views.normals).all()
    from idsculpt.core.sculpt.views import check_gan_views  # what DMTet Sculpt accepts

    check_gan_views(views)


def test_inversion_and_pti_losses_decrease():
    g = tiny_generator(seed=2)
    torch.manual_seed(0)
    vgg = VGG16Perceptual()  # the real architecture, random weights (no download here)
    for m in vgg.features:
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight)
    lab = eg3d_frontal_label()
    with torch.no_grad():
        z = torch.randn(1, g.z_dim, generator=torch.Generator().manual_seed(5))
        target = g.synthesis(g.mapping(z, lab), lab, neural_rendering_resolution=32)["image"]
    image = ((target + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1)
    cfg = InversionConfig(w_steps=10, pti_steps=5, w_avg_samples=128, neural_rendering_resolution=32, perceptual_size=32,
                          preview_every=10)
    seen = []
    res = invert(g, image, lab, vgg, cfg, progress=lambda s, t, p: seen.append((s, t, p is not None)))
    assert np.mean(res.w_losses[-3:]) < 0.8 * np.mean(res.w_losses[:3])
    assert np.mean(res.pti_losses[-2:]) < np.mean(res.pti_losses[:2])
    assert seen[-1][:2] == (15, 15) and any(p for *_, p in seen)
    # camera self-adaptation moved the camera a little, along the translation only
    assert torch.equal(res.label[0, [0, 1, 2, 4, 5, 6, 8, 9, 10]], lab[0, [0, 1, 2, 4, 5, 6, 8, 9, 10]])
    assert 0 < (res.label - lab).abs().max() < 0.1
    assert g.rendering_kwargs["ray_start"] == res.generator.rendering_kwargs["ray_start"] == 2.25
    # the tuned copy changed, the input generator did not
    assert not torch.equal(res.generator.decoder.net[0].weight, g.decoder.net[0].weight)
    # seeded: same config, same pivot
    res2 = invert(g, image, lab, vgg, InversionConfig(**{**cfg.__dict__, "w_steps": 2, "pti_steps": 0}))
    res3 = invert(g, image, lab, vgg, InversionConfig(**{**cfg.__dict__, "w_steps": 2, "pti_steps": 0}))
    assert torch.equal(res2.ws, res3.ws) and not torch.equal(res2.ws, res.ws)
    def stop() -> None:  # the contract (core/stage_types.py InterruptFn): interrupt raises to stop
        raise InterruptedError("cancelled")

    with pytest.raises(InterruptedError, match="cancelled"):
        invert(g, image, lab, vgg, cfg, interrupt=stop)


# Eye midpoint, mouth centre (fractions of the crop) and inter-ocular distance that MediaPipe finds in
# PanoHead's own published crops (3DDFA_V2_cropping/crop_samples/img/{man,woman}.jpg,
# dataset/testdata_img/{000134,000157}.jpg): eyes y 0.448-0.484, mouth y 0.708-0.730, IOD 0.243-0.257.
PANOHEAD_EYES_Y, PANOHEAD_MOUTH_Y, PANOHEAD_IOD = 0.463, 0.720, 0.250
TOL_Y, TOL_X, TOL_IOD = 0.05, 0.05, 0.12  # absolute (fraction of crop), absolute, relative


@pytest.mark.parametrize("name", ["musk_1.jpg", "jolie_1.jpg", "bezos_2.jpg", "pichai_2.jpg"])
def test_alignment_puts_eyes_and_mouth_where_panohead_does(portraits_dir, name):
    import cv2

    img = cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, name)), cv2.COLOR_BGR2RGB)
    a = al.align_portrait(img)
    assert a.image.shape == (512, 512, 3)
    lm = al.detect_landmarks(a.image).points.double().numpy() / 512.0  # measured on the crop itself, as for PanoHead's crops
    le, re = lm[list(al.MP_EYE_IMG_LEFT), :2].mean(0), lm[list(al.MP_EYE_IMG_RIGHT), :2].mean(0)
    mouth = lm[list(al.MP_MOUTH_CORNERS), :2].mean(0)
    eyes = (le + re) / 2
    assert abs(eyes[1] - PANOHEAD_EYES_Y) < TOL_Y and abs(mouth[1] - PANOHEAD_MOUTH_Y) < TOL_Y
    assert abs(eyes[0] - 0.5) < TOL_X
    assert abs(np.linalg.norm(re - le) / PANOHEAD_IOD - 1) < TOL_IOD
    cam = a.cameras
    assert torch.allclose(cam.position.norm(), torch.tensor(2.7), atol=1e-4)
    assert abs(a.yaw_pitch_roll[0]) < 30 and abs(a.yaw_pitch_roll[2]) < 5


def test_template_fallback(portraits_dir):
    import cv2
    import trimesh

    from idsculpt.core.panohead.pipeline import run_stage1
    from idsculpt.core.panohead.template import KEYPOINTS, _MP_KEYPOINTS

    img = cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, "pichai_2.jpg")), cv2.COLOR_BGR2RGB)
    out = run_stage1(img, None, mesh_resolution=64, view_resolution=32, n_views=8)
    assert out.init == "template" and "template" in out.info
    tm = trimesh.Trimesh(out.mesh.vertices.numpy(), out.mesh.faces.numpy(), process=False)
    assert tm.is_watertight and tm.volume > 0
    assert out.gan_views.masks.shape == (8, 32, 32, 1) and (out.gan_views.masks.flatten(1).sum(1) > 20).all()
    # the placed template's eyes/nose/mouth project onto the portrait's landmarks (within 5% of the crop)
    from idsculpt.core.panohead.template import place_template

    p = place_template(out.landmarks, out.reference_camera)
    kp = torch.tensor([KEYPOINTS[k] for k in KEYPOINTS]) * p.scale + torch.tensor(p.translation)
    uv = out.reference_camera.project(kp)[0].numpy()
    want = np.stack([out.landmarks[list(_MP_KEYPOINTS[k]), :2].mean(0) for k in KEYPOINTS])
    assert np.abs(uv - want).max() / 512 < 0.05


# PanoHead's own labels (3DDFA_V2_cropping/crop_samples/img/dataset.json "man.jpg",
# dataset/testdata_img/dataset.json "000157.jpg"), written by its eg3dcamparams(R)
PANOHEAD_LABELS = [
    [0.997649, -0.015475, 0.064940, -0.175337, -0.015415, -0.992914, -0.118841, 0.320872, 0.067236, 0.118079, -0.990818,
     2.675209, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1],
    [0.975032, -0.009496, 0.221723, -0.598652, -0.008519, -0.999792, -0.020003, 0.054008, 0.221925, 0.018354, -0.974910,
     2.632258, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1],
]


@pytest.mark.parametrize("label", PANOHEAD_LABELS)
def test_label_from_rotation_reproduces_panohead_labels(label):
    lab = torch.tensor(label)
    r = al.rotation_from_label(lab)
    assert np.allclose(r @ r.T, np.eye(3), atol=2e-2)  # 3DDFA's R is only nearly orthonormal (r3 = r1 x r2)
    assert torch.allclose(al.label_from_rotation(r)[0], lab, atol=1e-4)
    # and core.camera reads it as a camera 2.7 from the origin looking at it
    cam = Cameras.from_eg3d_label(lab, 512)
    assert abs(float(cam.position.norm()) - 2.7) < 1e-3
    assert torch.allclose(cam.project(torch.zeros(1, 3))[0, 0], torch.tensor([256.0, 256.0]), atol=0.5)
