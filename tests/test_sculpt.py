"""Stage-2 sculpting (core.sculpt) on CPU: known targets, no diffusion.

The target is the procedural head of core.dmtet.procedural (skull + nose, brow, chin, cheeks, eye
sockets): supervision images are rendered from it, the fit starts from a sphere, and the result is
measured against the target (Chamfer distance, mask IoU).
"""
from __future__ import annotations


import pytest
import torch

from torch_threads import one_thread  # noqa: F401  (autouse: this module runs single-threaded)
from unchanged import assert_unchanged, snapshot
from idsculpt.core.camera import Cameras
import math

from idsculpt.core.dmtet import (MeshNormalization, TetGrid, chamfer_distance, laplacian_loss, marching_tets, normal_consistency_loss,
                                 normalize_mesh, procedural_head_mesh, sphere_sdf)
from idsculpt.core.mesh import HeadMesh
from idsculpt.core.render import render_mesh
from idsculpt.core.sculpt import (
    GanViews,
    NonFiniteError,
    ReferenceGeometry,
    SculptConfig,
    Sculptor,
    depth_losses,
    gan_normal_loss,
    mask_iou,
    scheduled_weight,
    sculpt,
    step_schedule,
)

SPHERE_R = 0.55


@pytest.fixture(scope="module")
def target() -> HeadMesh:
    return procedural_head_mesh(64)


@pytest.fixture(scope="module")
def sphere() -> HeadMesh:
    g = TetGrid(32)
    v, f = marching_tets(g, g.vertices(), sphere_sdf(g.vertices(), SPHERE_R))
    return HeadMesh(v, f)


def gan_views_of(mesh: HeadMesh, res: int = 64) -> GanViews:
    az = torch.tensor([0, 45, 90, 135, 180, -135, -90, -45, 0, 90, -90, 180.0])
    el = torch.tensor([0.0] * 8 + [30, 30, 30, -20])
    cams = Cameras.orbit(el, az, 2.7, 30.0, res)
    out = render_mesh(mesh.vertices, mesh.faces, cams)
    return GanViews(cams, out.normal_world.detach(), (out.mask.detach() > 0.5).float())


def reference_of(mesh: HeadMesh, res: int = 64, azimuth: float = 20.0) -> ReferenceGeometry:
    cam = Cameras.orbit(5.0, azimuth, 2.7, 30.0, res)
    out = render_mesh(mesh.vertices, mesh.faces, cam)
    mask = (out.mask[0] > 0.5).float()
    hard = out.coverage[0]
    inv = torch.where(hard > 0, 1 / out.depth[0].clamp_min(1e-6), torch.zeros_like(hard))
    disp = torch.where(hard > 0, (inv - inv[hard > 0].min()) / (inv[hard > 0].max() - inv[hard > 0].min()), inv)
    nv = torch.nn.functional.normalize(out.normal_view[0], dim=-1) * hard
    face = mask * (nv[..., 2:3] > 0.3).float()  # the camera-facing part stands in for the face mask
    return ReferenceGeometry(image=out.normal_image()[0], camera=cam, normal_view=nv.detach(), disparity=disp.detach(),
                             mask=mask, face_mask=face, depth_mask=mask * (disp > 0.2).float())


def _cfg(**kw) -> SculptConfig:
    base = dict(grid_resolution=64, lr=0.02, seed=0, gan_batch=2, preview_every=0, log_every=10,
                views=None)
    base.update(kw)
    if base["views"] is None:
        from idsculpt.core.sculpt import RandomViewRanges

        base["views"] = RandomViewRanges(resolution=32)
    return SculptConfig(**base)


# ---------------------------------------------------------------------------- losses
def test_depth_losses_are_scale_shift_invariant():
    t = torch.rand(16, 16, 1, generator=torch.Generator().manual_seed(0))
    m = torch.ones_like(t)
    mse, pear = depth_losses(3.0 * t + 0.7, t, m)
    assert float(mse) < 1e-8 and float(pear) < 1e-6
    mse2, pear2 = depth_losses(torch.rand(16, 16, 1, generator=torch.Generator().manual_seed(1)), t, m)
    assert float(mse2) > 1e-3 and float(pear2) > 0.5


def test_gan_normal_loss_known_pixels():
    """Mean over GAN-mask pixels of 1 − cos(render composited over (−1,−1,−1), target): a covered pixel
    with the target's normal costs 0, an uncovered one 1 − cos((−1,−1,−1), t), a half-covered one blends;
    pixels outside the GAN mask do not count."""
    t = torch.tensor([[[0.0, 0, 1], [0, 0, 1]], [[0, 1, 0], [1, 0, 0]]])[None]  # [1,2,2,3]
    cover = torch.tensor([[[1.0], [0.0]], [[0.5], [1.0]]])[None]
    n = torch.tensor([[[0.0, 0, 1], [0, 0, 0]], [[0.5, 0, 0], [0, 1, 0]]])[None]  # premultiplied: half of +x at (1,0)
    mask = torch.tensor([[[1.0], [1.0]], [[1.0], [0.0]]])[None]
    b = torch.tensor([-1.0, -1, -1])
    blend = torch.tensor([0.5, 0, 0]) + 0.5 * b
    expect = (0.0 + (1 - float(torch.nn.functional.cosine_similarity(b, t[0, 0, 1], dim=0)))
              + (1 - float(torch.nn.functional.cosine_similarity(blend, t[0, 1, 0], dim=0)))) / 3
    assert abs(float(gan_normal_loss(n, cover, t, mask)) - expect) < 1e-6
    assert abs((1 - float(torch.nn.functional.cosine_similarity(b, t[0, 0, 1], dim=0))) - (1 + 1 / math.sqrt(3))) < 1e-6


def test_regularizer_schedule_matches_threestudio_C():
    """threestudio C([1000, a, b, 1001]) = a + (b − a)·clamp((step − 1000)/1, 0, 1): a through step 1000 (the
    GAN-normal fit and the first reference step), b from 1001 on. The config holds the authors' literals."""
    c = SculptConfig()
    assert tuple(c.lambda_normal_consistency) == (1000, 500.0, 10000.0, 1001)
    assert tuple(c.lambda_laplacian) == (1000, 1e5, 1.5e5, 1001)
    want = {0: (500.0, 1e5), 999: (500.0, 1e5), 1000: (500.0, 1e5), 1001: (10000.0, 1.5e5), 5999: (10000.0, 1.5e5)}
    for step, (nc, lap) in want.items():
        assert scheduled_weight(c.lambda_normal_consistency, step) == nc
        assert scheduled_weight(c.lambda_laplacian, step) == lap
    # the node's before/after inputs build the same schedule from gan_steps (default 1000)
    assert step_schedule(500.0, 10000.0, c.gan_steps) == tuple(c.lambda_normal_consistency)
    # the general C form: linear between its steps, a 3-list starts at step 0, numbers are constant
    assert scheduled_weight((10, 1.0, 3.0, 20), 15) == 2.0 and scheduled_weight((10, 1.0, 3.0, 20), 25) == 3.0
    assert scheduled_weight((1.0, 3.0, 4), 1) == 1.5 and scheduled_weight(7, 123) == 7.0
    with pytest.raises(ValueError, match="start_step, start_value, end_value, end_step"):
        SculptConfig(lambda_laplacian=(1e5, 1.5e5)).validate()  # the old (start, end) ramp pair


def _known_normal_views(s: Sculptor, theta: float, res: int = 32) -> GanViews:
    """GAN views whose target normals are the current surface's rendered normals turned by exactly ``theta``
    (t = cos θ·n + sin θ·u, u ⟂ n), on interior pixels only (antialiased coverage exactly 1)."""
    v, f = s.current()
    cams = Cameras.orbit(torch.tensor([0.0, 20, -10]), torch.tensor([0.0, 100, -150]), 2.7, 30.0, res)
    out = render_mesh(v, f, cams)
    n = torch.nn.functional.normalize(out.normal_world, dim=-1)
    u = torch.nn.functional.normalize(torch.linalg.cross(n, torch.tensor([0.3, 0.5, 0.8]).expand_as(n), dim=-1), dim=-1)
    inside = ((out.mask >= 1 - 1e-6) & (out.coverage > 0)).float()
    return GanViews(cams, (math.cos(theta) * n + math.sin(theta) * u) * inside, inside)


def test_stage_a_loss_is_10000_one_minus_cos_plus_regularizers():
    """Stage A step = 10000·(1 − cos θ) + 500·normal consistency + 1e5·Laplacian (the authors' weights up to
    step 1000), no mask term; a 3-step run checks the schedule's boundary inside the loop."""
    theta = 0.3
    cfg = _cfg(steps=3, gan_steps=3, grid_resolution=32, gan_batch=1)
    probe = Sculptor(procedural_head_mesh(16), None, reference_of(procedural_head_mesh(16), 32), None, cfg,
                     normalization=MeshNormalization.identity(), initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    views = _known_normal_views(probe, theta)
    s = Sculptor(procedural_head_mesh(16), views, None, None, cfg, normalization=MeshNormalization.identity(),
                 initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    v, f = s.current()
    rec = s.step()
    assert rec["kind"] == "gan" and set(rec) == {"step", "kind", "loss", "faces", "gan_normal", "normal_consistency", "laplacian"}
    assert math.isclose(rec["gan_normal"], 10000 * (1 - math.cos(theta)), rel_tol=1e-4)
    assert math.isclose(rec["normal_consistency"], 500 * float(normal_consistency_loss(v, f)), rel_tol=1e-5)
    assert math.isclose(rec["laplacian"], 1e5 * float(laplacian_loss(v, f)), rel_tol=1e-5)
    assert math.isclose(rec["loss"], rec["gan_normal"] + rec["normal_consistency"] + rec["laplacian"], rel_tol=1e-6)
    assert s.optimizer.defaults["eps"] == 1e-15 and s.geometry.deform_fraction == 0.5

    # The step boundary inside the loop: C([1, 3, 7, 2]) = 3 at steps 0 and 1, 7 from step 2.
    cfg2 = _cfg(steps=3, gan_steps=3, grid_resolution=32, gan_batch=1, lambda_normal_consistency=0.0,
                lambda_laplacian=(1, 3.0, 7.0, 2))
    s2 = Sculptor(procedural_head_mesh(16), views, None, None, cfg2, normalization=MeshNormalization.identity(),
                  initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    for w in (3.0, 3.0, 7.0):
        v, f = s2.current()
        rec = s2.step()
        assert "normal_consistency" not in rec  # weight 0: skipped, as threestudio's `if C(λ) > 0`
        assert math.isclose(rec["laplacian"], w * float(laplacian_loss(v, f)), rel_tol=1e-5), (w, rec)


# ---------------------------------------------------------------------------- stage A
@pytest.mark.slow
def test_stage_a_gan_views_fit_nonconvex_target(target):
    """The authors' stage A alone (10000·(1 − cos) over the GAN masks, no mask term) grows a sphere inside
    the head onto it. The sphere starts INSIDE (r 0.45): only GAN-mask pixels count, so nothing in stage A
    pulls in a surface that sticks out of the silhouettes (in the method the init is the GAN mesh itself).
    Regularisers off: relative to the image term their pull grows with the cell size, and this test grid's
    cells are 4× the default's; at the authors' weights they hold the sphere (Chamfer × 1/1.1; the stage-A
    loss test below covers them). Measured here: Chamfer × 1/6.3."""
    r = 0.45
    g = TetGrid(32)
    start = HeadMesh(*marching_tets(g, g.vertices(), sphere_sdf(g.vertices(), r)))
    views = gan_views_of(target)
    cfg = _cfg(steps=120, gan_steps=120, lambda_normal_consistency=0.0, lambda_laplacian=0.0)
    s = Sculptor(start, views, None, None, cfg, normalization=MeshNormalization.identity(),
                 initial_sdf=lambda p: sphere_sdf(p, r))
    res = s.run()
    before = chamfer_distance(start.vertices, start.faces, target.vertices, target.faces, n=5000)
    after = chamfer_distance(res.mesh.vertices, res.mesh.faces, target.vertices, target.faces, n=5000)
    assert before / after >= 5.0, (before, after)
    assert all(h["kind"] == "gan" for h in res.history) and all("gan_mask" not in h for h in res.history)


# ---------------------------------------------------------------------------- stage B, reference only
def test_reference_only_fit_reaches_mask_iou(target, sphere):
    ref = reference_of(target)
    cfg = _cfg(steps=60, gan_steps=0, lambda_normal_consistency=0.0, lambda_laplacian=0.0)
    s = Sculptor(sphere, None, ref, None, cfg, normalization=MeshNormalization.identity(),
                 initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    iou0 = mask_iou(render_mesh(sphere.vertices, sphere.faces, ref.camera).mask[0], ref.mask)
    res = s.run()
    assert all(h["kind"] == "reference" for h in res.history)
    iou = mask_iou(render_mesh(res.mesh.vertices, res.mesh.faces, ref.camera).mask[0], ref.mask)
    assert iou >= 0.95 and iou > iou0, (iou0, iou)


# ---------------------------------------------------------------------------- guidance interface
class OracleGuidance:
    """A stand-in for ISD with a known answer: pull the normal image toward the target's render at
    the same camera (what a perfect denoiser of this shape would do)."""

    def __init__(self, target: HeadMesh):
        self.target = target
        self.calls: list[dict] = []
        self.entered = self.exited = 0

    def __enter__(self):
        self.entered += 1
        return self

    def __exit__(self, *a):
        self.exited += 1

    def __call__(self, images, cameras, azimuth=None, elevation=None, step=None, total_steps=None):
        assert images.requires_grad and images.dim() == 4 and images.shape[-1] == 3
        assert float(images.detach().min()) >= 0 and float(images.detach().max()) <= 1
        self.calls.append(dict(step=step, total=total_steps, az=azimuth.clone(), el=elevation.clone(), shape=tuple(images.shape)))
        with torch.no_grad():
            want = render_mesh(self.target.vertices, self.target.faces, cameras).normal_image()
        return ((images - want) ** 2).mean() * 100


def test_stage_b_alternates_reference_and_guidance(target, sphere):
    g = OracleGuidance(procedural_head_mesh(24))
    cfg = _cfg(steps=10, gan_steps=4, guidance_views=2, preview_every=4, preview_resolution=24)
    s = Sculptor(sphere, gan_views_of(target, 32), reference_of(target, 32), g, cfg,
                 normalization=MeshNormalization.identity(), initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    kinds = [s.kind(i) for i in range(10)]
    assert kinds == ["gan"] * 4 + ["reference", "guidance"] * 3
    seen = []
    res = s.run(progress=lambda step, total, prev: seen.append((step, total, prev)))
    assert g.entered == 1 and g.exited == 1
    assert {k: v["steps"] for k, v in res.step_ms.items()} == {"gan": 4, "reference": 3, "guidance": 3}
    assert all(v["mean_ms"] > 0 and v["median_ms"] > 0 for v in res.step_ms.values())
    assert sum(v["steps"] * v["mean_ms"] for v in res.step_ms.values()) <= 1000 * res.seconds
    assert [c["step"] for c in g.calls] == [5, 7, 9] and all(c["total"] == 10 for c in g.calls)
    assert all(c["shape"] == (2, 32, 32, 3) for c in g.calls)
    az = torch.cat([c["az"] for c in g.calls])
    el = torch.cat([c["el"] for c in g.calls])
    assert bool((az.abs() <= 180).all()) and bool(((el >= -15) & (el <= 45)).all())
    assert [x[0] for x in seen] == list(range(1, 11)) and seen[-1][1] == 10
    previews = {x[0]: x[2] for x in seen if x[2] is not None}
    assert sorted(previews) == [4, 8, 10]  # every preview_every steps, and the final state
    assert previews[10].shape == (24, 4 * 24, 3) and 0 <= float(previews[10].min()) and float(previews[10].max()) <= 1


def test_profile_hook_writes_report_and_keeps_the_run(target, sphere, tmp_path, monkeypatch):
    """profile_folder (the node's IDSCULPT_PROFILE_SCULPT) profiles a few stage-B steps of a real run: the report has
    each kind's per-step wall times, the run still takes every step (with progress), and the profiled steps are
    left out of step_ms."""
    from idsculpt.core.speed import profiling

    monkeypatch.setattr(profiling, "PROFILE_AFTER", 1)
    monkeypatch.setattr(profiling, "PROFILE_STEPS", 4)
    g = OracleGuidance(procedural_head_mesh(24))
    cfg = _cfg(steps=10, gan_steps=2, guidance_views=1, preview_every=0, profile_folder=str(tmp_path / "prof"))
    s = Sculptor(sphere, gan_views_of(target, 32), reference_of(target, 32), g, cfg,
                 normalization=MeshNormalization.identity(), initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    seen = []
    res = s.run(progress=lambda step, total, prev: seen.append(step))
    assert seen == list(range(1, 11)) and len(g.calls) == 4
    report = (tmp_path / "prof" / "sculpt_steps_profile.txt").read_text()
    assert "reference: 2 steps, wall ms" in report and "guidance: 2 steps, wall ms" in report
    assert "host syncs" in report and "aten::" in report
    assert {k: v["steps"] for k, v in res.step_ms.items()} == {"gan": 2, "reference": 2, "guidance": 2}


def test_guidance_only_mode_improves_toward_oracle(target, sphere):
    g = OracleGuidance(procedural_head_mesh(32))  # a coarse oracle: it renders at every step
    cfg = _cfg(steps=30, gan_steps=0, guidance_views=2, lambda_normal_consistency=0.0, lambda_laplacian=0.0)
    s = Sculptor(sphere, None, None, g, cfg, normalization=MeshNormalization.identity(),
                 initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    assert all(s.kind(i) == "guidance" for i in range(30))
    res = s.run()
    before = chamfer_distance(sphere.vertices, sphere.faces, target.vertices, target.faces, n=3000)
    after = chamfer_distance(res.mesh.vertices, res.mesh.faces, target.vertices, target.faces, n=3000)
    assert after < 0.7 * before


# ---------------------------------------------------------------------------- safety
def test_nan_guidance_stops_with_clear_message(target, sphere):
    def bad(images, cameras, **kw):
        return images.sum() * float("nan")

    cfg = _cfg(steps=6, gan_steps=2, grid_resolution=32)
    s = Sculptor(sphere, gan_views_of(target, 32), reference_of(target, 32), bad, cfg,
                 initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    with pytest.raises(NonFiniteError, match="NaN/inf at step 3"):
        s.run()
    assert s.step_index == 3  # steps 0-2 done, nothing applied from the broken step


def test_interrupt_stops_promptly(target, sphere):
    calls = []

    class Stop(Exception):
        pass

    def interrupt():
        calls.append(1)
        if len(calls) > 3:
            raise Stop()

    s = Sculptor(sphere, gan_views_of(target, 32), None, None, _cfg(steps=100, gan_steps=100, grid_resolution=32),
                 initial_sdf=lambda p: sphere_sdf(p, SPHERE_R))
    with pytest.raises(Stop):
        s.run(interrupt=interrupt)
    assert len(calls) == 4 and s.step_index == 3


def test_bad_inputs_are_reported(target, sphere):
    with pytest.raises(ValueError, match="needs something to fit"):
        Sculptor(sphere, None, None, None, _cfg(steps=2))
    v = gan_views_of(target, 32)
    broken = GanViews(v.cameras, v.normals[:, :16], v.masks)
    with pytest.raises(ValueError, match="normals must be"):
        Sculptor(sphere, broken, None, None, _cfg(steps=2))
    with pytest.raises(ValueError, match="steps"):
        Sculptor(sphere, v, None, None, _cfg(steps=0))


def test_seeded_and_frame_preserving(target):
    # A head stored at another scale/offset (as a GAN mesh would be): it is normalised (vertex mean,
    # L∞ 0.9) for sculpting, the cameras follow, and SculptResult.mesh is the result back in the input frame.
    offset, scale = torch.tensor([0.3, -0.2, 0.1]), 1.7
    stored = HeadMesh(target.vertices * scale + offset, target.faces)
    views = gan_views_of(target, 32)
    cams = Cameras(views.cameras.cam2world.clone(), views.cameras.fov, 32, 32)
    cams.cam2world[:, :3, 3] = cams.cam2world[:, :3, 3] * scale + offset
    views = GanViews(cams, views.normals, views.masks)
    cfg = _cfg(steps=5, gan_steps=5, grid_resolution=48)
    a = sculpt(stored, views, None, None, cfg)
    b = sculpt(stored, views, None, None, cfg)
    assert torch.equal(a.mesh.vertices, b.mesh.vertices) and torch.equal(a.mesh.faces, b.mesh.faces)
    assert abs(float(a.mesh_normalized.vertices.abs().max()) - 0.9) < 0.05  # the sculpted head, ~the init's extent
    ch = chamfer_distance(a.mesh.vertices, a.mesh.faces, stored.vertices, stored.faces, n=3000)
    assert ch < 0.05 * scale, ch


def test_normalised_head_and_camera_render_like_the_input_frame(target):
    """The texture stage gets SculptResult.mesh_normalized with the reference camera mapped by the same
    similarity (MeshNormalization.apply_cameras): every image is unchanged — the normalised head seen by
    the mapped camera equals the input-frame head seen by the input camera (mask, view-space normals)."""
    offset, scale = torch.tensor([0.05, -0.4, 0.2]), 0.45  # about PanoHead's scale: a head ~0.5 units tall
    stored = HeadMesh(target.vertices * scale + offset, target.faces)
    cam = Cameras.orbit(5.0, 20.0, 2.7, 30.0, 48)
    cam_in = Cameras(cam.cam2world.clone(), cam.fov, 48, 48)
    cam_in.cam2world[:, :3, 3] = cam.cam2world[:, :3, 3] * scale + offset
    ref = reference_of(stored, 48)
    ref = ReferenceGeometry(image=ref.image, camera=cam_in, normal_view=ref.normal_view, disparity=ref.disparity,
                            mask=ref.mask, face_mask=ref.face_mask, depth_mask=ref.depth_mask)
    res = sculpt(stored, None, ref, None, _cfg(steps=2, gan_steps=0, grid_resolution=48))
    nm = res.normalization
    assert abs(float(nm.apply(stored.vertices).abs().max()) - 0.9) < 1e-6
    a = render_mesh(res.mesh.vertices, res.mesh.faces, cam_in)
    b = render_mesh(res.mesh_normalized.vertices, res.mesh_normalized.faces, nm.apply_cameras(cam_in))
    assert float((a.mask - b.mask).abs().mean()) < 2e-3
    assert float((a.normal_view - b.normal_view).abs().mean()) < 2e-3
    # the head fills far more of a texture view (r 3.8, FoV 30°) in the normalised frame than in the input one
    tex = Cameras.orbit(0.0, 0.0, 3.8, 30.0, 48)
    fill_in = float(render_mesh(res.mesh.vertices, res.mesh.faces, tex).mask.mean())
    fill_norm = float(render_mesh(res.mesh_normalized.vertices, res.mesh_normalized.faces, tex).mask.mean())
    assert fill_norm > 3 * fill_in, (fill_in, fill_norm)


def test_guidance_gets_cameras_in_the_input_frame(target):
    """ISD draws its landmark hints (placed on the input, PanoHead-frame mesh) from the cameras it is given:
    those must be the random views expressed in the input frame. Rendering the input-frame head with the
    cameras the guidance gets reproduces the silhouette of the image it gets (rendered in the sculpting frame)."""
    offset, scale = torch.tensor([0.3, -0.2, 0.1]), 0.45
    stored = HeadMesh(target.vertices * scale + offset, target.faces)
    seen = []

    def guidance(images, cameras, **kw):
        seen.append((images.detach(), cameras))
        return (images * 0).sum()

    s = Sculptor(stored, None, None, guidance, _cfg(steps=1, gan_steps=0, grid_resolution=48, guidance_views=2),
                 initial_sdf=None)
    s.step()
    images, cams = seen[0]
    drawn = render_mesh(stored.vertices, stored.faces, cams).mask[..., 0] > 0.5
    fg = (images - torch.tensor([0.5, 0.5, 1.0])).abs().amax(-1) > 1e-3
    assert mask_iou(drawn.float(), fg.float()) > 0.9


# ---------------------------------------------------------------------------- the ComfyUI node
@pytest.mark.comfy
def test_dmtet_sculpt_node_in_comfyui(comfy_inprocess, target, sphere):
    nodes = comfy_inprocess.load_pack_nodes()
    node = nodes["IDSculptDMTetSculpt"]
    schema = node.define_schema()
    assert all(getattr(i, "tooltip", None) for i in schema.inputs)
    with torch.inference_mode():  # as ComfyUI hands them over: inference tensors
        views = gan_views_of(target, 32)
        ref = reference_of(target, 32)
        views = GanViews(views.cameras, views.normals.clone(), views.masks.clone())
    given = snapshot((sphere, ref, views))
    out = comfy_inprocess.run_node(node, head_mesh=sphere, reference_geometry=ref, gan_views=views, steps=6, gan_steps=3,
                                   grid_resolution=32, lr=0.01, render_resolution=64, seed=0)
    assert_unchanged(given, (sphere, ref, views))
    mesh, preview, camera = out.args
    assert [o.display_name for o in schema.outputs] == ["head", "preview", "reference_camera"]
    assert isinstance(mesh, HeadMesh) and mesh.faces.shape[0] > 100 and torch.isfinite(mesh.vertices).all()
    assert preview.shape == (8, 512, 512, 3) and 0 <= float(preview.min()) and float(preview.max()) <= 1
    # The result is in the authors' normalised frame: the input sphere (r 0.55, centred) scaled to L∞ 0.9,
    # then sculpted 6 steps toward the (larger) head on a coarse grid (cells 0.0625): about 0.9.
    assert abs(float(mesh.vertices.abs().max()) - 0.9) < 0.1
    # reference_camera sees it as the input camera saw the input frame: the same images.
    assert isinstance(camera, Cameras) and len(camera) == 1
    nm = normalize_mesh(sphere.vertices)
    assert torch.allclose(camera.cam2world, nm.apply_cameras(ref.camera).cam2world, atol=1e-5)
    a = render_mesh(nm.invert(mesh.vertices), mesh.faces, ref.camera).mask
    b = render_mesh(mesh.vertices, mesh.faces, camera).mask
    assert float((a - b).abs().mean()) < 2e-3


class _StubGuidance:
    """Records each guidance call's view count; has a predictor whose cuda_graphs flag low_vram overrides."""

    def __init__(self) -> None:
        self.views: list[int] = []
        self.graphs_seen: list[bool] = []
        self.predictor = type("P", (), {"cuda_graphs": True})()
        self.given_predictor = self.predictor  # the object the upstream node output holds
        self.given_seen: list[bool] = []

    def __call__(self, images, cameras, **kw):
        self.views.append(int(images.shape[0]))
        self.graphs_seen.append(self.predictor.cuda_graphs)
        self.given_seen.append(self.given_predictor.cuda_graphs)
        return (images * 0.0).sum()


@pytest.mark.comfy
def test_sculpt_node_low_vram_mode_takes_one_view_and_no_graphs(comfy_inprocess, target, sphere):
    node = comfy_inprocess.load_pack_nodes()["IDSculptDMTetSculpt"]
    with torch.inference_mode():
        ref = reference_of(target, 32)
    stub = _StubGuidance()
    comfy_inprocess.run_node(node, head_mesh=sphere, reference_geometry=ref, guidance=stub, steps=4, gan_steps=0,
                             grid_resolution=32, lr=0.01, render_resolution=64, guidance_views=3, seed=0, vram_mode="low_vram")
    assert stub.views and set(stub.views) == {1} and not any(stub.graphs_seen)
    # the guidance is ISD Guidance's cached output: never changed, not even while the sculpt runs (it gets a copy)
    assert stub.predictor.cuda_graphs is True and stub.given_seen and all(stub.given_seen)
    stub2 = _StubGuidance()
    comfy_inprocess.run_node(node, head_mesh=sphere, reference_geometry=ref, guidance=stub2, steps=4, gan_steps=0,
                             grid_resolution=32, lr=0.01, render_resolution=64, guidance_views=3, seed=0)
    assert set(stub2.views) == {3} and all(stub2.graphs_seen)  # offload (default): as asked
