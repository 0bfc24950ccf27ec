"""The texture stage as the authors' code runs it, each setting pinned by a known answer (CPU, no diffusion).

* refinement losses: hand-computed closed forms of 0.1·0.5·SSE/B + 50·ΣLPIPS/B and 1000·L1 + 5e-4·TV
  (threestudio's tv_loss: a sum of squared neighbour differences);
* renders: white background, unpainted texels grey 0.5 while views are inpainted;
* view-dependent prompts: every inpaint and refine view tells its angles to the sampler;
* head frame: a head normalised to L∞ 0.9 covers the analytic projected disc / ellipse in the
  reference, inpaint and refine cameras, and the inpaint erosion removes the analytic ring.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import trimesh

from idsculpt.core.camera import EG3D_FOCAL, Cameras
from idsculpt.core.mesh import HeadMesh
from idsculpt.core.render import render_mesh
from idsculpt.core.texture import (
    InpaintConfig,
    ReferenceView,
    RefineConfig,
    default_view_plan,
    head_frame_warning,
    progressive_inpaint,
    random_view_loss,
    reference_loss,
    refine_texture,
    render_textured,
    shade,
    tv_loss,
    unwrap_uv,
)
from idsculpt.core.texture.inpaint import view_backprojection_mask
from idsculpt.core.texture.project import erode
from idsculpt.core.texture.views import alpha_crop_box

PANOHEAD_FOV = math.degrees(2 * math.atan(0.5 / EG3D_FOCAL))  # 13.37°


# ------------------------------------------------------------------------------------ 1. losses
def test_tv_loss_is_threestudios_sum_of_squared_neighbour_differences():
    x = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 2.0]])[None, ..., None]  # [1,2,3,1]
    # vertical: (2-0)² + (2-1)² + (2-3)² = 6; horizontal: (1-0)² + (3-1)² + 0 + 0 = 5
    assert float(tv_loss(x)) == pytest.approx(11.0)
    # a ramp a·i + b·j over [B,H,W,C]: B·C·((H-1)·W·a² + H·(W-1)·b²)
    b, h, w, c, a_, b_ = 2, 5, 7, 3, 0.1, -0.03
    i, j = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    ramp = (a_ * i + b_ * j)[None, ..., None].expand(b, h, w, c)
    assert float(tv_loss(ramp)) == pytest.approx(b * c * ((h - 1) * w * a_**2 + h * (w - 1) * b_**2), rel=1e-12)


def test_random_view_loss_is_half_the_summed_squared_error_and_summed_lpips_per_batch():
    render = torch.full((2, 8, 8, 3), 0.3, dtype=torch.float64)
    target = torch.full((2, 8, 8, 3), 0.5, dtype=torch.float64)
    target[1] = 0.7
    calls = []

    def lpips(a, b):  # one value per image, as LPIPS returns
        calls.append(a.shape)
        return (a - b).abs().mean(dim=(1, 2, 3))

    loss, parts = random_view_loss(render, target, lpips)
    sse = 8 * 8 * 3 * (0.2**2 + 0.4**2)  # Σ over both images
    assert parts["l2"] == pytest.approx(0.5 * sse / 2)
    assert parts["perceptual"] == pytest.approx((0.2 + 0.4) / 2)
    assert float(loss) == pytest.approx(0.1 * 0.5 * sse / 2 + 50 * (0.2 + 0.4) / 2)
    assert calls == [(2, 3, 8, 8)]  # [B,3,H,W], channels first
    loss, parts = random_view_loss(render, target, None)  # no perceptual network: the L2 term alone
    assert float(loss) == pytest.approx(0.1 * 0.5 * sse / 2) and "perceptual" not in parts


def test_reference_loss_is_mean_l1_in_the_head_mask_plus_summed_tv():
    h = w = 6
    j = torch.arange(w, dtype=torch.float64)
    pred = (0.2 + 0.05 * j)[None, None, :, None].expand(1, h, w, 3).clone()  # a horizontal ramp
    gt = torch.full((1, h, w, 3), 0.9, dtype=torch.float64)
    mask = torch.zeros(1, h, w, 1, dtype=torch.float64)
    mask[:, :, :3] = 0.8  # > 0.5: held; the rest 0.3 (< 0.5): free
    mask[:, :, 3:] = 0.3
    loss, parts = reference_loss(pred, gt, mask)
    l1 = sum(0.9 - (0.2 + 0.05 * k) for k in range(3)) * h * 3 / (h * w * 3)  # the mean runs over every element
    tv = h * (w - 1) * 3 * 0.05**2
    assert parts["l1"] == pytest.approx(l1) and parts["tv"] == pytest.approx(tv)
    assert float(loss) == pytest.approx(1000 * l1 + 5e-4 * tv)


def _scene(tex: int = 256):
    s = trimesh.creation.icosphere(3)
    mesh, _ = unwrap_uv(HeadMesh(torch.tensor(s.vertices, dtype=torch.float32) * 0.9, torch.tensor(s.faces)), tex)
    return mesh


@pytest.fixture(scope="module")
def sphere():
    return _scene()


def test_refine_steps_use_those_losses_with_white_background(sphere):
    """One random step and one reference step of refine_texture report exactly the closed-form terms of
    their first render, and the random view is rendered on white."""
    mesh = sphere
    g = torch.Generator().manual_seed(0)
    start = torch.rand(256, 256, 3, generator=g) * 0.8 + 0.1
    seen = {}

    class Grey:
        def denoise(self, image, normal_control, view, t):
            seen["image"], seen["view"] = image.clone(), view
            return torch.full_like(image, 0.5)

    res = refine_texture(mesh.with_(texture=start), Grey(), None, RefineConfig(refine_steps=1, resolution=32, seed=2))
    rec = res.losses[0]
    img = seen["image"]
    assert rec["kind"] == "random" and rec["l2"] == pytest.approx(0.5 * float(((img - 0.5) ** 2).sum()), rel=1e-5)
    assert rec["loss"] == pytest.approx(0.1 * rec["l2"], rel=1e-6)
    out, _ = render_textured(mesh, start, seen["view"].camera, background=1.0)
    assert torch.allclose(img, out.color[0], atol=1e-5)
    bg = out.mask[0, ..., 0] == 0
    assert bool(bg.any()) and torch.equal(img[bg], torch.ones_like(img[bg]))  # white background

    cam = Cameras.orbit(0.0, 0.0, 3.0, 35.0, 32)
    portrait = torch.rand(32, 32, 3, generator=g)
    head = torch.zeros(32, 32)
    head[4:28, 6:26] = 1.0  # the whole-head mask: hair and neck included
    res = refine_texture(mesh.with_(texture=start), None, ReferenceView(portrait, cam, head), RefineConfig(refine_steps=1, seed=0))
    rec = res.losses[0]
    geometry, _ = render_textured(mesh, start, cam, background=1.0)
    pred = shade(geometry, start, background=1.0)  # the reference view re-textures its one rasterisation
    assert bool((pred[0][geometry.mask[0, ..., 0] == 0] == 1).all())  # white background here too
    loss, parts = reference_loss(pred, portrait[None], head[None, ..., None])
    assert rec["kind"] == "reference"
    assert rec["l1"] == pytest.approx(parts["l1"], rel=1e-4) and rec["tv"] == pytest.approx(parts["tv"], rel=1e-4)
    assert rec["loss"] == pytest.approx(float(loss), rel=1e-4)


# ------------------------------------------------------------------------------------ 3. renders
def test_inpaint_views_render_unpainted_texels_grey_on_white(sphere):
    """View 1 sees an unpainted head: grey 0.5 inside, white outside. The oracle paints it red; view 2
    (from the other side) shows the red texels and grey where nothing is painted yet, not red continued
    from the painted ones."""
    mesh = sphere
    images, masks = [], []

    class Red:
        def inpaint(self, image, generate_mask, normal_control, context):
            images.append(image.clone())
            masks.append(context.alpha.clone())
            return torch.tensor([0.9, 0.1, 0.1]).expand_as(image).clone()

    plan = [v for v in default_view_plan()[:2]]  # azimuth -45 then +45
    res = progressive_inpaint(mesh, Red(), plan, config=InpaintConfig(render_resolution=64, resolution=64), texture_size=256)
    inside0, outside0 = masks[0] > 0.999, masks[0] < 1e-6
    assert bool(inside0.any()) and bool(outside0.any())
    assert torch.allclose(images[0][inside0], torch.full((1, 3), 0.5), atol=1e-6)
    assert torch.equal(images[0][outside0], torch.ones_like(images[0][outside0]))
    inside1 = masks[1] > 0.999
    px = images[1][inside1]
    red = (px - torch.tensor([0.9, 0.1, 0.1])).abs().amax(-1) < 1e-3
    grey = (px - 0.5).abs().amax(-1) < 1e-3
    assert red.float().mean() > 0.05 and grey.float().mean() > 0.05  # both present...
    assert (red | grey).float().mean() > 0.8  # ...and little else (seams between them blend)
    # view 1's whole generated region is shown to view 2, also the ring the erosion kept from being painted
    assert bool(res.painted.any()) and bool((res.state.shown_mask & ~res.painted).any())


# ------------------------------------------------------------------------------------ 4. view angles
def test_every_inpaint_and_refine_view_passes_its_angles(sphere):
    mesh = sphere
    seen = []

    class Record:
        def inpaint(self, image, generate_mask, normal_control, context):
            seen.append((context.index, context.view.elevation, context.view.azimuth, context.camera.position[0].clone()))
            return torch.full_like(image, 0.5)

    plan = default_view_plan()
    progressive_inpaint(mesh, Record(), plan, config=InpaintConfig(render_resolution=32, resolution=32), texture_size=256)
    index = [k for k, _, _, _ in seen]
    assert len(seen) >= 10 and index == sorted(set(index))  # views with nothing left to paint are skipped
    assert [(e, a) for _, e, a, _ in seen] == [(plan[k].elevation, plan[k].azimuth) for k in index]
    for _, e, a, pos in seen:  # the angles are the camera's: position = 3.8·(cos e sin a, sin e, cos e cos a)
        er, ar = math.radians(e), math.radians(a)
        expect = 3.8 * torch.tensor([math.cos(er) * math.sin(ar), math.sin(er), math.cos(er) * math.cos(ar)])
        assert torch.allclose(pos, expect, atol=1e-4)

    views = []

    class Den:
        def denoise(self, image, normal_control, view, t):
            views.append(view)
            return image

    refine_texture(mesh, Den(), None, RefineConfig(refine_steps=6, resolution=32, seed=5))
    assert len(views) == 6
    for v in views:
        er, ar = math.radians(v.elevation), math.radians(v.azimuth)
        expect = v.distance * torch.tensor([math.cos(er) * math.sin(ar), math.sin(er), math.cos(er) * math.cos(ar)])
        assert torch.allclose(v.camera.position[0], expect, atol=1e-4)
        assert -20 <= v.elevation <= 45 and -180 <= v.azimuth <= 180 and 2.5 <= v.distance <= 3.5 and 30 <= v.fov <= 45
        assert float(v.camera.fov[0]) == pytest.approx(v.fov)


# ------------------------------------------------------------------------------------ 5. head frame
def _ellipsoid(axes=(0.9, 0.9, 0.9), subdiv: int = 3) -> torch.Tensor:
    # icosphere vertices include (±1,0,0), (0,±1,0), (0,0,±1) from subdivision 1 on: the max |coordinate|
    # of the scaled mesh is exactly max(axes)
    s = trimesh.creation.icosphere(subdiv)
    return torch.tensor(s.vertices, dtype=torch.float32) * torch.tensor(axes), torch.tensor(s.faces)


def _coverage(v, f, cam) -> float:
    return float(render_mesh(v, f, cam).mask.sum())  # antialiased coverage: the silhouette area in pixels


def _disc(semi_a: float, semi_b: float, depth_axis: float, distance: float, focal_px: float) -> float:
    """Projected area (px²) of an ellipsoid centred on the optical axis: an ellipse with semi-axes
    f·a/√(d² − c²) and f·b/√(d² − c²) (the tangent cone of the unit sphere, scaled by the axes)."""
    k = focal_px / math.sqrt(distance**2 - depth_axis**2)
    return math.pi * semi_a * k * semi_b * k


def _focal_px(fov: float, res: int) -> float:
    return 0.5 / math.tan(math.radians(fov) / 2) * res


def test_normalised_sphere_fills_the_analytic_disc_in_reference_inpaint_and_refine_views():
    v, f = _ellipsoid()
    assert float(v.abs().max()) == pytest.approx(0.9) and head_frame_warning(v) is None
    res = 256
    # the reference camera: PanoHead's (focal 4.2647 ≈ 13.37° FoV) at radius 2.7 around a PanoHead-frame head
    # of max |coordinate| 0.25; normalised with the head (×0.9/0.25) it sits at 9.72 and sees the same image
    small = v * (0.25 / 0.9)
    raw = _coverage(small, f, Cameras.orbit(0.0, 0.0, 2.7, PANOHEAD_FOV, res))
    normalised = _coverage(v, f, Cameras.orbit(0.0, 0.0, 2.7 * 0.9 / 0.25, PANOHEAD_FOV, res))
    expect = _disc(0.9, 0.9, 0.9, 2.7 * 0.9 / 0.25, EG3D_FOCAL * res)
    assert raw == pytest.approx(normalised, rel=2e-3)
    assert normalised == pytest.approx(expect, rel=0.01)
    # an inpaint view (radius 3.8, FoV 30°) and two refine views (3.5 / 45°, 3.0 / 40°)
    for el, az, d, fov in ((-15.0, 45.0, 3.8, 30.0), (20.0, -120.0, 3.5, 45.0), (-10.0, 170.0, 3.0, 40.0)):
        got = _coverage(v, f, Cameras.orbit(el, az, d, fov, res))
        assert got == pytest.approx(_disc(0.9, 0.9, 0.9, d, _focal_px(fov, res)), rel=0.01), (el, az, d, fov)
    # the inpaint view frames the normalised head as the authors': its disc spans 91 % of the frame height
    assert 2 * 0.9 * _focal_px(30.0, 1) / math.sqrt(3.8**2 - 0.81) == pytest.approx(0.91, abs=0.01)


def test_normalised_ellipsoid_fills_the_analytic_ellipse():
    axes = (0.7, 0.9, 0.8)  # x (ear to ear), y (up), z (front)
    v, f = _ellipsoid(axes)
    res = 256
    front = _coverage(v, f, Cameras.orbit(0.0, 0.0, 3.8, 30.0, res))  # looks along z: semi-axes x, y
    side = _coverage(v, f, Cameras.orbit(0.0, 90.0, 3.8, 30.0, res))  # looks along x: semi-axes z, y
    fp = _focal_px(30.0, res)
    assert front == pytest.approx(_disc(0.7, 0.9, 0.8, 3.8, fp), rel=0.01)
    assert side == pytest.approx(_disc(0.8, 0.9, 0.7, 3.8, fp), rel=0.01)


def _square_eroded_disc_area(rho: float, r: float) -> float:
    """Area of a disc of radius rho eroded by a square of half-width r: the points p with
    (|px| + r)² + (|py| + r)² ≤ rho², four times ∫_r^√(rho²−r²) (√(rho²−u²) − r) du."""
    def prim(u: float) -> float:  # ∫ √(rho² − u²) du
        return 0.5 * (u * math.sqrt(max(rho * rho - u * u, 0.0)) + rho * rho * math.asin(min(u / rho, 1.0)))

    top = math.sqrt(rho * rho - r * r)
    return 4 * (prim(top) - prim(r) - r * (top - r))


def test_inpaint_erosion_is_16_pixels_of_the_512_crop_and_removes_the_analytic_ring():
    cv2 = pytest.importorskip("cv2")
    v, f = _ellipsoid()
    res = 512
    cam = Cameras.orbit(-15.0, 45.0, 3.8, 30.0, res)
    out = render_mesh(v, f, cam)
    alpha = out.mask[0, ..., 0]
    box = alpha_crop_box(alpha, 1.1)
    cfg = InpaintConfig()
    rho = _focal_px(30.0, res) * 0.9 / math.sqrt(3.8**2 - 0.81)  # disc radius in render pixels
    assert box.size == pytest.approx(2 * rho * 1.1, abs=2.5)
    r = cfg.erosion_radius(box.size)
    assert r == round(16 * box.size / 512)  # 8 iterations of 5×5 = 16 px of the 512 crop
    # at a 2× render the same head's ring is twice as many render pixels: the same 16 crop pixels
    assert cfg.erosion_radius(2 * box.size) == round(32 * box.size / 512)
    head = alpha > 0.5
    mask = view_backprojection_mask(out, cam, box, cfg)
    removed = 1 - float(mask.sum()) / float(head.sum())
    expect = 1 - _square_eroded_disc_area(rho, r) / (math.pi * rho * rho)
    # the pre-erosion mask also drops the grazing limb (depth slope > 8: the outermost ~1 %), so the ring
    # is a pixel or two wider than the square erosion of the silhouette alone
    assert expect - 0.005 < removed < expect + 0.03, (removed, expect)
    # the erosion itself is cv2.erode with a 5×5 kernel iterated r/2 times (the authors' call)
    pre = head.numpy().astype(np.uint8)
    ours = erode(torch.from_numpy(pre.astype(bool)), r).numpy()
    ref = cv2.erode(pre, np.ones((5, 5), np.uint8), iterations=r // 2) if r % 2 == 0 else cv2.erode(pre, np.ones((2 * r + 1,) * 2, np.uint8))
    assert np.array_equal(ours, ref.astype(bool))
    silhouette_removed = 1 - ours.sum() / pre.sum()
    assert silhouette_removed == pytest.approx(expect, abs=0.006)


def test_head_frame_warning_names_the_scale_and_the_fix():
    v, _ = _ellipsoid(subdiv=1)
    assert head_frame_warning(v * (1.1 / 0.9)) is None and head_frame_warning(v * (0.65 / 0.9)) is None
    small = head_frame_warning(v * (0.4 / 0.9))  # a PanoHead-world head
    assert small and "0.4 " in small and "0.9" in small and "DMTet Sculpt" in small and "reference_camera" in small
    assert head_frame_warning(v * 2.0)
    off = head_frame_warning(v + torch.tensor([0.0, 0.5, 0.0]) * 0.9)
    assert off and "vertex mean" in off


def test_refine_elevations_follow_threestudios_half_uniform_half_spherical_draw():
    from idsculpt.core.texture.refine import sample_elevation

    gen = torch.Generator().manual_seed(0)
    lo, hi = -20.0, 45.0
    e = np.array([sample_elevation(lo, hi, gen) for _ in range(20000)])
    assert e.min() >= lo and e.max() <= hi
    s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    for x in (-10.0, 0.0, 15.0, 30.0, 40.0):
        cdf = 0.5 * (x - lo) / (hi - lo) + 0.5 * (math.sin(math.radians(x)) - s_lo) / (s_hi - s_lo)
        assert float((e <= x).mean()) == pytest.approx(cdf, abs=0.012), x  # 20k draws: σ ≤ 0.0036
    # the spherical half puts more views near the equator than degrees-uniform would
    assert float((e <= 30.0).mean()) > (30.0 - lo) / (hi - lo) + 0.01
