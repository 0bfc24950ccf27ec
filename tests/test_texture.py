"""Stage 3 (texture) oracle tests on CPU: no diffusion, known answers.

A textured ground-truth head (tests/texture_oracle.py: an ellipsoid with a nose, colours a smooth function of 3D position)
stands in for the diffusion model: the oracle "inpainter" returns renders of it, the oracle "denoiser"
returns its renders too. Baking those views must reproduce the ground truth at novel views.
"""
from __future__ import annotations

import math

import pytest
import torch

from idsculpt.core.camera import Cameras
from idsculpt.core.texture import (
    CropBox,
    InpaintConfig,
    ReferenceView,
    RefineConfig,
    TextureState,
    alpha_crop_box,
    crop_image,
    default_view_plan,
    fill_holes,
    format_view_plan,
    normalbae_control,
    parse_view_plan,
    progressive_inpaint,
    project_reference,
    project_texels,
    rasterize_uv,
    refine_texture,
    render_textured,
    unwrap_uv,
)
from idsculpt.core.texture.project import erode, sample_in_crop, view_cosine
from texture_oracle import OracleDenoiser, OracleInpainter, gt_color, head_mesh
from texture_oracle import masked_psnr as psnr

TEX = 256
RES = 96

@pytest.fixture(scope="module")
def scene():
    mesh, info = unwrap_uv(head_mesh(), TEX)
    texels = rasterize_uv(mesh, TEX)
    gt_tex = fill_holes(torch.where(texels.covered[..., None], gt_color(texels.position), torch.zeros(1)), texels.covered)
    return mesh, texels, mesh.with_(texture=gt_tex), info


@pytest.fixture(scope="module")
def baked(scene):
    mesh, texels, gt, _ = scene
    oracle = OracleInpainter(gt)
    seen = []
    res = progressive_inpaint(mesh, oracle, config=InpaintConfig(render_resolution=RES, resolution=RES), progress=lambda s, t, p: seen.append((s, t)))
    return res, oracle, seen


# ------------------------------------------------------------------------------------ acceptance
def test_baked_texture_rerenders_ground_truth_at_novel_views(scene, baked):
    _, _, gt, _ = scene
    res, oracle, seen = baked
    cams = Cameras.orbit([0, 10, 30, -10, 20, 0, 40, -5], [20, 70, 160, -110, -30, -160, 100, -60], 3.8, 30, RES)
    a, _ = render_textured(gt, gt.texture, cams)
    b, _ = render_textured(res.mesh, res.mesh.texture, cams)
    for i in range(len(cams)):
        cov = a.mask[i, ..., 0] > 0.5
        assert psnr(a.color[i], b.color[i], cov) >= 30.0, f"novel view {i}"
    assert seen[-1] == (15, 15) and len(oracle.calls) >= 10
    assert oracle.calls[0][1] > 0.5  # the first view generates most of the head


def test_reference_projection_reproduces_portrait(scene):
    mesh, texels, gt, _ = scene
    cam = Cameras.orbit(0.0, 0.0, 2.7, 13.37, 128)  # EG3D-like reference camera (focal 4.2647)
    ref_render, _ = render_textured(gt, gt.texture, cam)
    ref = ReferenceView(ref_render.color[0], cam)
    state = TextureState.blank(TEX)
    cfg = InpaintConfig()
    written = project_reference(mesh, state, texels, ref, cfg)
    assert int(written.sum()) > 500 and bool(state.locked.equal(written))
    out, _ = render_textured(mesh, state.filled(), cam)
    cos = view_cosine(ref_render.normal_world, cam)[0]
    face = erode((ref_render.mask[0, ..., 0] > 0.5) & (cos > 0.3), cfg.erosion_radius(128) + 2)
    assert face.float().mean() > 0.3
    assert psnr(out.color[0], ref.image, face) >= 35.0
    # a different portrait projected the same way is reproduced too (no hidden dependence on the GT)
    other = ref.image.flip(-1)
    state2 = TextureState.blank(TEX)
    project_reference(mesh, state2, texels, ReferenceView(other, cam), cfg)
    out2, _ = render_textured(mesh, state2.filled(), cam)
    assert psnr(out2.color[0], other, face) >= 35.0


def test_every_visible_texel_ends_painted(scene, baked):
    mesh, texels, gt, _ = scene
    res, _, _ = baked
    cams = Cameras.orbit([v.elevation for v in default_view_plan()], [v.azimuth for v in default_view_plan()], 3.8, 30, RES)
    out, _ = render_textured(mesh, gt.texture, cams)
    visible = torch.zeros(TEX * TEX, dtype=torch.bool)
    best = torch.full((TEX * TEX,), -1.0)
    for i in range(len(cams)):
        proj = project_texels(texels, cams[i], out.depth[i, ..., 0])
        visible[proj.index[proj.visible & (proj.cosine > 0)]] = True
        best[proj.index] = torch.maximum(best[proj.index], torch.where(proj.visible, proj.cosine, torch.tensor(-1.0)))
    visible = visible.reshape(TEX, TEX)
    best = best.reshape(TEX, TEX)
    painted = res.state.painted
    assert bool((painted <= texels.covered).all())  # only surface texels are painted by views
    assert bool(painted[best > 0.5].all())  # every texel some view sees head-on is painted by a view
    assert (painted & visible).sum() / visible.sum() > 0.97  # grazing-only texels may be cut by the erosion...
    err = (res.mesh.texture - gt.texture).abs().amax(-1)
    assert (err[visible] < 0.1).float().mean() > 0.98, float(err[visible].max())
    hole = visible & ~painted
    grey_err = (0.5 - gt.texture).abs().amax(-1)
    assert err[hole].mean() < 0.5 * grey_err[hole].mean()  # ...and are filled from painted neighbours, not left grey
    assert bool(torch.isfinite(res.mesh.texture).all())


# ------------------------------------------------------------------------------------ units
def test_default_view_plan_and_parsing():
    plan = default_view_plan()
    assert len(plan) == 15 and plan[0].elevation == -15 and plan[0].azimuth == -45 and plan[9].azimuth == 180
    assert [v.elevation for v in plan[10:]] == [45.0] * 5 and all(v.distance == 3.8 and v.fov == 30 for v in plan)
    assert parse_view_plan(format_view_plan(plan)) == plan
    custom = parse_view_plan("0, 0\n-10 90 3.0 40; 20,180")
    assert [(v.elevation, v.azimuth, v.distance, v.fov) for v in custom] == [(0, 0, 3.8, 30), (-10, 90, 3.0, 40), (20, 180, 3.8, 30)]
    with pytest.raises(ValueError, match="elevation"):
        parse_view_plan("a, b")
    with pytest.raises(ValueError, match="below 90"):
        parse_view_plan("90, 0")


def test_normalbae_encoding():
    n = torch.tensor([[[[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]])  # [1,1,4,3]
    m = torch.tensor([[[[1.0], [1.0], [1.0], [0.0]]]])
    img = normalbae_control(n, m)[0, 0]
    assert torch.allclose(img[0], torch.tensor([0.5, 0.5, 1.0]))  # facing the camera: blue
    assert torch.allclose(img[1], torch.tensor([0.0, 0.5, 0.5]))  # pointing right: red drops (red = left)
    assert torch.allclose(img[2], torch.tensor([0.5, 1.0, 0.5]))  # pointing up: green
    assert torch.allclose(img[3], torch.tensor([0.5, 0.5, 1.0]))  # background: flat wall


def test_normal_control_of_rendered_sphere_left_side_is_red(scene):
    mesh, _, _, _ = scene
    cam = Cameras.orbit(0.0, 0.0, 3.8, 30, 64)
    out, _ = render_textured(mesh, mesh.texture, cam)
    ctl = normalbae_control(out.normal_view[0], out.mask[0])
    row = ctl[32]
    cols = torch.nonzero(out.mask[0, 32, :, 0] > 0.5).flatten()
    assert row[cols[0] + 1, 0] > 0.8 and row[cols[-1] - 1, 0] < 0.2  # image-left edge red, right edge not


def test_crop_roundtrip():
    img = torch.rand(80, 100, 3)
    mask = torch.zeros(80, 100)
    mask[20:50, 30:70] = 1
    box = alpha_crop_box(mask, 1.1)
    assert math.isclose(box.size, 44.0) and math.isclose(box.x0, 28.0) and math.isclose(box.y0, 13.0)
    crop = crop_image(img, box, 44, mode="nearest")
    assert torch.allclose(crop, img[13:57, 28:72])
    pix = torch.tensor([[30.5, 20.5], [69.5, 49.5]])
    assert torch.allclose(sample_in_crop(crop, box, pix), img[[20, 49], [30, 69]], atol=1e-5)
    big = crop_image(img, CropBox(-10, -10, 120), 32, background=0.25)  # padding outside the frame
    assert torch.allclose(big[0, 0], torch.full((3,), 0.25))
    large = torch.rand(256, 256, 3)  # strong downscales are area-averaged, not aliased
    pooled = torch.nn.functional.avg_pool2d(large[64:192, 32:160].permute(2, 0, 1)[None], 4)[0].permute(1, 2, 0)
    assert torch.allclose(crop_image(large, CropBox(32, 64, 128), 32), pooled, atol=1e-6)


def test_backprojection_policies():
    from idsculpt.core.texture.project import TexelProjection, backproject

    mask = torch.ones(4, 4, dtype=torch.bool)
    proj = lambda cos: TexelProjection(torch.arange(4), torch.full((4, 2), 1.5), torch.tensor([True, True, True, False]), torch.tensor(cos))  # noqa: E731
    for policy, expect in (("first", 0.2), ("best_cosine", 0.9)):
        st = TextureState.blank(2)
        w = backproject(st, proj([0.5, 0.5, -0.5, 0.9]), torch.full((4, 3), 0.2), mask, policy=policy)
        assert w.reshape(-1).tolist() == [True, True, False, False]  # back-facing and occluded texels stay unpainted
        backproject(st, proj([0.9, 0.52, 0.9, 0.9]), torch.full((4, 3), 0.9), mask, policy=policy)
        t = st.texture.reshape(-1, 3)[:, 0]
        assert math.isclose(float(t[0]), expect, abs_tol=1e-6)  # a more head-on view overwrites only with best_cosine
        assert math.isclose(float(t[1]), 0.2, abs_tol=1e-6)  # within the margin: kept
        assert math.isclose(float(t[2]), 0.9, abs_tol=1e-6)  # unpainted before: painted now
    st = TextureState.blank(2)
    backproject(st, proj([0.5, 0.5, 0.5, 0.5]), torch.full((4, 3), 0.2), mask, policy="best_cosine", lock=True)
    backproject(st, proj([0.9, 0.9, 0.9, 0.9]), torch.full((4, 3), 0.9), mask, policy="best_cosine")
    assert float(st.texture.reshape(-1, 3)[0, 0]) == pytest.approx(0.2)  # the portrait's texels are locked
    with pytest.raises(ValueError, match="policy"):
        backproject(st, proj([0.9] * 4), torch.zeros(4, 3), mask, policy="blend")


def test_fill_holes_keeps_known_and_continues_smoothly():
    y, x = torch.meshgrid(torch.linspace(0, 1, 64), torch.linspace(0, 1, 64), indexing="ij")
    tex = torch.stack([x, y, 0.5 * torch.ones_like(x)], -1)
    known = torch.ones(64, 64, dtype=torch.bool)
    known[20:30, 20:40] = False
    holed = torch.where(known[..., None], tex, torch.zeros(1))
    filled = fill_holes(holed, known)
    assert torch.equal(filled[known], tex[known])
    assert (filled - tex).abs()[~known].max() < 0.1


def test_fill_holes_grows_each_chart_from_its_own_border():
    """Two charts 4 texels apart: the gutter texels next to each chart (what a bilinear lookup at the
    chart's edge reads) take that chart's colour, not a blend with the chart across the gutter."""
    tex = torch.zeros(32, 32, 3)
    known = torch.zeros(32, 32, dtype=torch.bool)
    known[4:28, 4:14], known[4:28, 18:28] = True, True
    tex[4:28, 4:14] = torch.tensor([1.0, 0.0, 0.0])
    tex[4:28, 18:28] = torch.tensor([0.0, 0.0, 1.0])
    filled = fill_holes(tex, known)
    assert torch.equal(filled[known], tex[known])
    assert torch.equal(filled[6:26, 14:16], tex[6:26, 13:14].expand(-1, 2, -1))  # two rings of red
    assert torch.equal(filled[6:26, 16:18], tex[6:26, 18:19].expand(-1, 2, -1))  # two rings of blue


def test_unwrap_decimates_large_meshes_and_validates_size():
    mesh = head_mesh(4)  # 5120 faces
    small, info = unwrap_uv(mesh, 512, max_faces=2000)
    assert info.decimated and info.faces_in == 5120 and info.faces_out <= 2100 and "decimated" in info.summary()
    assert small.uvs.min() >= 0 and small.uvs.max() <= 1 and small.texture.shape == (512, 512, 3)
    with pytest.raises(ValueError, match="texture size"):
        unwrap_uv(mesh, 1000)


def test_bad_inpainter_output_is_reported(scene):
    mesh = scene[0]

    class Broken:
        def inpaint(self, image, generate_mask, normal_control, context):
            return torch.full_like(image, float("nan"))

    with pytest.raises(RuntimeError, match="NaN"):
        progressive_inpaint(mesh, Broken(), plan=parse_view_plan("0, 0"), config=InpaintConfig(render_resolution=48, resolution=48))
    with pytest.raises(ValueError, match="UVs"):
        progressive_inpaint(head_mesh(1), Broken())


def test_interrupt_stops_the_loop(scene):
    mesh = scene[0]

    class Stop(Exception):
        pass

    def interrupt():
        raise Stop

    with pytest.raises(Stop):
        progressive_inpaint(mesh, OracleInpainter(scene[2]), config=InpaintConfig(render_resolution=48, resolution=48), interrupt=interrupt)


# ------------------------------------------------------------------------------------ refinement
def test_refinement_moves_texture_toward_denoised_views(scene):
    mesh, texels, gt, _ = scene
    g = torch.Generator().manual_seed(1)
    blotch = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(TEX, TEX), mode="bilinear")[0].permute(1, 2, 0)
    start = (gt.texture + 0.4 * (blotch - 0.5)).clamp(0.02, 0.98)
    cams = Cameras.orbit([0, 20, -10, 30], [0, 90, -90, 180], 3.0, 35, 64)
    a, _ = render_textured(gt, gt.texture, cams)
    b0, _ = render_textured(mesh, start, cams)
    cov = a.mask[..., 0] > 0.5
    before = psnr(a.color, b0.color, cov)
    den = OracleDenoiser(gt)
    cfg = RefineConfig(refine_steps=8, resolution=64, learning_rate=0.2, seed=3)
    res = refine_texture(mesh.with_(texture=start), den, None, cfg, perceptual=lambda x, y: (x - y).abs().mean())
    b1, _ = render_textured(res.mesh, res.mesh.texture, cams)
    after = psnr(a.color, b1.color, cov)
    assert after > before + 2.0, (before, after)
    assert len(den.ts) == 8 and all(50 <= t < 200 for t in den.ts)
    assert res.losses[0]["kind"] == "random" and "perceptual" in res.losses[0]
    assert res.mesh.texture.min() >= 0 and res.mesh.texture.max() <= 1


def test_refinement_reference_steps_fit_the_portrait(scene):
    mesh, _, gt, _ = scene
    cam = Cameras.orbit(0.0, 0.0, 2.7, 20.0, 64)
    ref_img, _ = render_textured(gt, gt.texture, cam)
    face = (ref_img.mask[0, ..., 0] > 0.5).float()
    ref = ReferenceView(ref_img.color[0], cam, mask=face)
    start = torch.full_like(gt.texture, 0.5)
    den = OracleDenoiser(gt)
    res = refine_texture(mesh.with_(texture=start), den, ref, RefineConfig(refine_steps=10, resolution=48, learning_rate=0.2, seed=0))
    kinds = [r["kind"] for r in res.losses]
    assert kinds[:4] == ["random", "reference", "random", "reference"]
    ref_l1 = [r["l1"] for r in res.losses if r["kind"] == "reference"]
    assert ref_l1[-1] < 0.6 * ref_l1[0]
    with pytest.raises(ValueError, match="textured mesh"):
        refine_texture(mesh.with_(texture=None), den, ref)
