"""Issue 22's schedule evidence, item 1 (oracle guidance): the schedules' known relations and the oracle
denoiser of bench/sculpt_schedule_harness.py, driven through the pack's real ISDGuidance.

Known answers: FAST's ISD view samples are the fewest that passed both sculpt evidence pieces at full scale
(bench/results, bench/evidence_summary.py); the oracle's ISD gradient in latent space is
k * w(t) / sigma_t * (z - z_T) (k = CFG on views with ID, CFG - 1 elsewhere; harness.OraclePredictor's
docstring), zero when the render is the target's; and it sculpts a head toward the target.
"""
from __future__ import annotations

import json
import math
import os
import sys

import pytest
import torch

from torch_threads import one_thread  # noqa: F401  (autouse: this module runs single-threaded)

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
import sculpt_schedule_harness as H  # noqa: E402  (the pack is already loaded as ``idsculpt`` by conftest)

from idsculpt.core.camera import Cameras  # noqa: E402
from idsculpt.core.dmtet import MeshNormalization, chamfer_distance, procedural_head_mesh, sphere_sdf  # noqa: E402
from idsculpt.core.guidance import ISDConfig, ISDGuidance, NoisePredictor  # noqa: E402
from idsculpt.core.render import render_mesh  # noqa: E402
from idsculpt.core.schedules import FAST, PAPER  # noqa: E402
from idsculpt.core.sculpt import RandomViewRanges, SculptConfig, Sculptor  # noqa: E402


# ---------------------------------------------------------------------------- the schedules
def test_isd_view_samples_of_the_schedules():
    """Stage B asks the guidance every second step: (6000 - 1000) / 2 = 2500 steps of one view (paper) and
    (874 - 250) / 2 = 312 steps of four views (fast): 1,248 view samples."""
    assert (PAPER.isd_steps, PAPER.guidance_views, PAPER.isd_view_samples) == (2500, 1, 2500)
    assert (FAST.isd_steps, FAST.guidance_views, FAST.isd_view_samples) == (312, 4, 1248)


def _evidence(path: str) -> dict:
    with open(path) as fh:
        return json.load(fh)


def test_fast_sculpt_schedule_rests_on_the_measured_full_scale_evidence():
    """FAST's sculpt steps are a run of BOTH sculpt evidence pieces as measured at full scale on a GPU (bench/results:
    grid 256, the shipped step counts, a trained prior that sculpted toward the person) that passed both bars (oracle
    5 %, trained prior 10 % over PAPER's Chamfer); and no passing run spends fewer ISD view samples. Changing FAST's
    sculpt schedule without new evidence fails here."""
    import evidence_summary as S

    oracle, prior = _evidence(S.ORACLE), _evidence(S.PRIOR)
    s = S.summarize(oracle, prior)
    assert s["full_scale"] == {"oracle": True, "prior": True} and s["prior_sculpts_toward_person"]
    assert "cpu" not in (s["cards"]["oracle"], s["cards"]["prior"])
    fields = ("sculpt_steps", "gan_steps", "guidance_views", "sculpt_lr")
    fast = [n for n, r in oracle["runs"].items() if all(r["schedule_fields"][f] == getattr(FAST, f) for f in fields)]
    assert fast, "no oracle run has FAST's sculpt schedule"
    name = fast[0]
    assert all(prior["runs"][name]["schedule_fields"][f] == getattr(FAST, f) for f in fields)
    assert oracle["runs"]["paper"]["schedule_fields"]["sculpt_steps"] == PAPER.sculpt_steps
    assert name in s["passing"] and s["fewest_isd_steps"] == name
    assert s["schedules"][name]["oracle"] <= 1.05 and s["schedules"][name]["prior"] <= 1.10


def test_evidence_summary_applies_both_bars_and_the_full_scale_rule():
    """bench/evidence_summary.py on edited copies of the measured files: a run over either bar, a smoke-scale
    oracle, or a prior that did not sculpt toward the person passes nothing."""
    import copy

    import evidence_summary as S

    oracle, prior = _evidence(S.ORACLE), _evidence(S.PRIOR)
    assert S.summarize(oracle, prior)["passing"]
    o2 = copy.deepcopy(oracle)
    o2["runs"]["fast_isd312"]["chamfer"] = 1.051 * o2["runs"]["paper"]["chamfer"]
    assert "fast_isd312" not in S.summarize(o2, prior)["passing"]
    p2 = copy.deepcopy(prior)
    p2["runs"]["fast_isd312"]["chamfer"] = 1.101 * p2["chamfer_paper"]
    assert "fast_isd312" not in S.summarize(oracle, p2)["passing"]
    o3 = copy.deepcopy(oracle)
    o3["scale"]["shipped_step_counts"] = False
    assert S.summarize(o3, prior)["passing"] == []
    p3 = dict(prior, sculpted_toward_person=False)
    assert S.summarize(oracle, p3)["passing"] == [] and S.summarize(oracle, p3)["fewest_isd_steps"] is None


def test_harness_builds_the_sculpt_config_as_the_node_does():
    """steps / gan_steps / guidance_views / lr from the schedule; the regularisers switch after step gan_steps
    (threestudio's C([gan_steps, before, after, gan_steps + 1]), the node's step_schedule)."""
    c = H.sculpt_config(FAST, grid_resolution=64, render_resolution=128)
    assert (c.steps, c.gan_steps, c.guidance_views, c.lr) == (874, 250, 4, 0.005)
    assert tuple(c.lambda_normal_consistency) == (250, 500.0, 10000.0, 251)
    assert tuple(c.lambda_laplacian) == (250, 1e5, 1.5e5, 251)
    assert (c.grid_resolution, c.views.resolution) == (64, 128)
    p = H.sculpt_config(PAPER)
    d = SculptConfig()
    assert (p.steps, p.gan_steps, p.guidance_views) == (6000, 1000, 1)
    assert tuple(p.lambda_normal_consistency) == tuple(d.lambda_normal_consistency)  # the authors' (1000, 500, 1e4, 1001)
    assert tuple(p.lambda_laplacian) == tuple(d.lambda_laplacian)
    i = H.shipped_isd_config()
    assert (i.cfg, i.t_min, i.t_max, i.estimator, i.id_azimuth_limit) == (50.0, 20, 500, "authors", 70.0)
    v = H.paper_stage_a(FAST, PAPER)
    assert (v.gan_steps, v.sculpt_steps, v.isd_view_samples) == (1000, 1624, 1248)


def test_evidence_runs_the_shipped_schedules_and_scales_them_evenly():
    """bench/evidence_oracle_sculpt.py runs PAPER and FAST themselves at --step-scale 1; a CPU smoke scale scales
    the stage-A and ISD steps alike (0.016: 40 x 1 and 5 x 4) and keeps the stage-B layout (2 steps per ISD step)."""
    import evidence_oracle_sculpt as E

    full = E.schedules(1.0)
    assert full["paper"] == PAPER and full["fast"] == FAST
    assert full["fast_lr2"].sculpt_lr == 2 * FAST.sculpt_lr and full["fast_paper_stage_a"].gan_steps == PAPER.gan_steps
    small = E.schedules(0.016)
    assert (small["paper"].gan_steps, small["paper"].isd_steps, small["paper"].sculpt_steps) == (16, 40, 96)
    assert (small["fast"].gan_steps, small["fast"].isd_steps, small["fast"].sculpt_steps) == (4, 5, 14)
    assert (small["paper"].isd_view_samples, small["fast"].isd_view_samples) == (40, 20)


def test_the_isd_step_variants_change_only_the_isd_steps():
    """Both sculpt evidence scripts sculpt FAST with 625 and 400 ISD steps beside PAPER and FAST: stage A, views per
    step, lr and the regulariser switch are FAST's; the reference steps follow the ISD steps (stage B alternates)."""
    import evidence_oracle_sculpt as E
    import evidence_trained_prior as P

    full = E.schedules(1.0)
    assert H.ISD_STEP_VARIANTS == (625, 400)
    for k in H.ISD_STEP_VARIANTS:
        for c in (full[f"fast_isd{k}"], P.job_schedule(f"fast_isd{k}", 1)):
            assert (c.isd_steps, c.isd_view_samples, c.sculpt_steps) == (k, 4 * k, FAST.gan_steps + 2 * k)
            assert (c.gan_steps, c.guidance_views, c.sculpt_lr, c.refine_steps) == (FAST.gan_steps, 4, FAST.sculpt_lr, 400)
    assert P.job_schedule("paper", 1) == PAPER and P.job_schedule("fast", 1) == FAST
    assert P.job_schedule("fast_isd400", 20).isd_steps == 20 and P.JOBS[2:4] == ("fast_isd625", "fast_isd400")


# ---------------------------------------------------------------------------- the oracle's gradient
class _SpyOracle(H.OraclePredictor):
    """The oracle, keeping the latents ISD differentiates (their .grad is d loss / d z = grad_z / B)."""

    def encode(self, images):
        z = super().encode(images)
        z.retain_grad()
        self.z = z
        return z


@pytest.fixture(scope="module")
def small_target():
    return H.procedural_target(n=24)


def _cams(res: int = 32) -> Cameras:
    # azimuth 10 (ID on, |az| < 70), 120 and -150 (ID off); PanoHead's distance and FoV
    return Cameras.orbit(torch.tensor([5.0, 0.0, 20.0]), torch.tensor([10.0, 120.0, -150.0]), 2.7, 18.0, res)


def test_oracle_is_a_noise_predictor(small_target):
    p = H.OraclePredictor(small_target)
    assert isinstance(p, NoisePredictor)
    z = p.encode(torch.rand(2, 32, 40, 3))
    assert z.shape == (2, 3, 4, 5) and float(z.min()) >= -1 and float(z.max()) <= 1


@pytest.mark.parametrize("t", [20, 500])
def test_oracle_isd_gradient_has_the_closed_form(small_target, t):
    """grad_z = k * w / sigma * (z - z_T), k = 50 on the ID view (the authors' estimator: eps_est = cond_no_id
    = keep-current), 49 on the others (eps_est = cond); zero for the target's own render."""
    cams = _cams()
    cfg = ISDConfig(t_min=t, t_max=t, cfg=50.0, estimator="authors", id_azimuth_limit=70.0)
    with torch.no_grad():
        own = render_mesh(small_target.vertices, small_target.faces, cams).normal_image()
        other = render_mesh(small_target.vertices * 1.1, small_target.faces, cams).normal_image()

    # the target's own render: nothing to do
    p = _SpyOracle(small_target)
    g = ISDGuidance(p, cfg, torch.Generator().manual_seed(0))
    img = own.clone().requires_grad_(True)
    loss = g(img, cams)
    loss.backward()
    assert float(loss.detach()) == 0.0 and float(img.grad.abs().max()) == 0.0
    assert bool(g.last_stats.id_enabled.tolist() == [True, False, False])

    # another head: the closed form, row by row
    p = _SpyOracle(small_target)
    g = ISDGuidance(p, cfg, torch.Generator().manual_seed(0))
    loss = g(other.clone().requires_grad_(True), cams)
    loss.backward()
    b = len(cams)
    z, z_t = p.z.detach(), p.target_latents(cams)
    sigma = float(g.sigmas[t])
    w = sigma**2 / (1 + sigma**2)
    k = torch.tensor([50.0, 49.0, 49.0]).view(-1, 1, 1, 1)
    want = k * (w / sigma) * (z - z_t)
    got = p.z.grad * b
    assert float((z - z_t).abs().max()) > 0.05  # the heads differ visibly
    assert torch.allclose(got, want, rtol=1e-4, atol=1e-6), float((got - want).abs().max())
    # a descent direction toward the target, finite at both ends of the timestep range
    assert float((got * (z - z_t)).sum()) > 0 and bool(torch.isfinite(got).all())
    assert int(g.last_stats.nonfinite) == 0


def test_oracle_needs_the_current_latents_and_cameras(small_target):
    p = H.OraclePredictor(small_target)
    g = ISDGuidance(p, H.shipped_isd_config(), torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="cameras"):
        g(torch.rand(1, 32, 32, 3, requires_grad=True), None)
    x = torch.zeros(1, 3, 4, 4)
    with pytest.raises(RuntimeError, match="encode"):
        H.OraclePredictor(small_target).predict_noise(x, torch.ones(1), None)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------- it sculpts
def test_oracle_isd_sculpts_toward_the_target():
    """Guidance-only sculpting (no GAN views, no reference, regularisers off) through the real ISDGuidance at
    the shipped settings (CFG 50, t 20..500, the authors' estimator, ID for |az| < 70) around the oracle: a
    sphere inside the head grows onto it. Measured: Chamfer x 1/1.9 in 30 steps of two views.
    (A uniformly scaled copy of the head moves far less: its normal images differ only at the silhouette,
    which the normal-image guidance sees through the antialiased edge alone -- as real ISD would.)"""
    target = procedural_head_mesh(32)  # radius ~0.9: already the sculpting frame (identity normalisation)
    cfg = SculptConfig(steps=30, gan_steps=0, grid_resolution=48, lr=0.02, guidance_views=2, seed=0, preview_every=0,
                       lambda_normal_consistency=0.0, lambda_laplacian=0.0, views=RandomViewRanges(resolution=48))
    g = ISDGuidance(H.OraclePredictor(target), H.shipped_isd_config(), torch.Generator().manual_seed(1))
    sc = Sculptor(target, None, None, g, cfg, normalization=MeshNormalization.identity(),
                  initial_sdf=lambda p: sphere_sdf(p, 0.55))
    v0, f0 = sc.current()
    before = chamfer_distance(v0, f0, target.vertices, target.faces, n=3000)
    res = sc.run()
    after = chamfer_distance(res.mesh.vertices, res.mesh.faces, target.vertices, target.faces, n=3000)
    assert all(h["kind"] == "guidance" for h in res.history) and g.predictor.calls == 30
    assert math.isfinite(after) and before / after >= 1.6, (before, after)
