"""Run the REAL sculpt stage toward a known head under a step schedule (issue 22 evidence).

Shared by the schedule-evidence scripts (``bench/evidence_oracle_sculpt.py`` with the oracle denoiser
below; the small-trained-prior evidence with its own ``NoisePredictor``). The API is small:

    target = procedural_target()                       # the known head, at PanoHead's scale
    start = start_head(target, "perturbed")            # what the run starts from ("sphere" | "perturbed")
    run = run_schedule(target, start, FAST, OraclePredictor(target),
                       grid_resolution=64, render_resolution=128)
    run["chamfer"], run["seconds"]

What runs is the pack's own stage 2: ``core.sculpt.Sculptor`` with
  * GAN views: the target rendered from PanoHead's 40-camera ring (``core.panohead.extract.gan_view_cameras``:
    yaw 0..351 step 9, radius 2.7, PanoHead's FoV) -- normals and masks as stage 1 hands them over;
  * reference geometry: the target seen from the frontal portrait camera (camera-frame normals,
    relative disparity, head mask, a face mask = the camera-facing part, depth mask = disparity > 0.2
    as core.geo_supervision cuts it);
  * guidance: ``core.guidance.ISDGuidance`` at the shipped settings (``shipped_isd_config``: CFG 50,
    t in [20, 500], the "authors" estimator, ID for |azimuth| < 70) around the given ``NoisePredictor``;
  * ``SculptConfig`` built from the ``core.schedules.Schedule`` exactly as the DMTet Sculpt node builds it
    (steps, gan_steps, guidance_views, lr; the regulariser switch after step gan_steps
    through ``step_schedule``); only the scale knobs (grid, render resolution) are arguments.

The target lives in the input (PanoHead-like) frame; the Sculptor normalises the START head as it
normalises PanoHead's mesh, and the Chamfer distance is measured in the input frame.

The oracle ``OraclePredictor`` is a perfect denoiser toward the target (docstring of the class).
"""
from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from typing import Any

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402

_pack.load()

from idsculpt.core.camera import Cameras, look_at  # noqa: E402
from idsculpt.core.dmtet import (TetGrid, chamfer_distance, mesh_edges, mesh_sdf_on_grid, normalize_mesh,  # noqa: E402
                                 procedural_head_mesh)
from idsculpt.core.geo_supervision import DEPTH_MASK_THRESHOLD  # noqa: E402
from idsculpt.core.guidance import ISDConfig, ISDGuidance, NoisePrediction, NoisePredictor, ViewBatch, sd15_alphas_cumprod  # noqa: E402
from idsculpt.core.mesh import HeadMesh  # noqa: E402
from idsculpt.core.panohead.extract import gan_view_cameras  # noqa: E402
from idsculpt.core.render import render_mesh  # noqa: E402
from idsculpt.core.schedules import Schedule  # noqa: E402
from idsculpt.core.sculpt import GanViews, RandomViewRanges, ReferenceGeometry, SculptConfig, Sculptor, mask_iou, step_schedule  # noqa: E402

__all__ = ["procedural_target", "start_head", "gan_views_of", "reference_of", "OraclePredictor", "shipped_isd_config",
           "sculpt_config", "prepare_start", "run_schedule", "PANOHEAD_HEAD_SCALE"]

#: The procedural head (core.dmtet.procedural, radius ~0.9, neck included) scaled to PanoHead's size: the
#: whole head fits PanoHead's GAN views (radius 2.7, true vertical FoV ~17.8 deg: half-height 0.42).
PANOHEAD_HEAD_SCALE = 0.42


# ----------------------------------------------------------------------------- the known head
def procedural_target(scale: float = PANOHEAD_HEAD_SCALE, n: int = 96, device: torch.device | str = "cpu") -> HeadMesh:
    """The procedural non-convex head (nose, brow, chin, cheeks, eye sockets), marched on an n-cube grid,
    scaled to PanoHead's frame (+y up, face toward +z, centred near the origin)."""
    m = procedural_head_mesh(n)
    return HeadMesh(m.vertices * scale, m.faces).to(device)


def _smooth(vertices: torch.Tensor, faces: torch.Tensor, iterations: int, step: float = 0.5) -> torch.Tensor:
    """Uniform Laplacian smoothing: v <- v + step * (mean of the neighbours - v), ``iterations`` times."""
    e = mesh_edges(faces, vertices.shape[0])
    src, dst = torch.cat([e[:, 0], e[:, 1]]), torch.cat([e[:, 1], e[:, 0]])
    deg = torch.zeros(vertices.shape[0], dtype=vertices.dtype).index_add(0, src, torch.ones_like(src, dtype=vertices.dtype))
    v = vertices.clone()
    for _ in range(iterations):
        mean = torch.zeros_like(v).index_add(0, src, v.index_select(0, dst)) / deg.clamp_min(1)[:, None]
        v = v + step * (mean - v)
    return v


def start_head(target: HeadMesh, kind: str = "perturbed", smooth_iterations: int = 30,
               scale: tuple[float, float, float] = (1.06, 0.95, 1.03), sphere_radius: float = 0.3) -> HeadMesh:
    """The head a run starts from.

    "perturbed" (default; the real run starts from PanoHead's mesh, which is near the person): the
        target with its detail smoothed away (``smooth_iterations`` of uniform Laplacian smoothing:
        nose, brow and eye sockets flatten) and its proportions off (per-axis ``scale`` about the
        centroid).
    "sphere": a sphere of ``sphere_radius`` at the target's centroid (the template-free worst case).
    """
    v, f = target.vertices.detach().float().cpu(), target.faces.cpu()
    c = v.mean(0)
    if kind == "perturbed":
        s = _smooth(v, f, smooth_iterations) if smooth_iterations > 0 else v
        return HeadMesh((s - c) * torch.tensor(scale) + c, f)
    if kind == "sphere":
        g = TetGrid(32)
        from idsculpt.core.dmtet import marching_tets, sphere_sdf

        sv, sf = marching_tets(g, g.vertices(), sphere_sdf(g.vertices(), 1.0))
        return HeadMesh(sv.detach() * sphere_radius + c, sf)
    raise ValueError(f"start head kind must be 'perturbed' or 'sphere', got {kind!r}")


# ----------------------------------------------------------------------------- supervision from the target
def gan_views_of(target: HeadMesh, resolution: int = 512, n_views: int = 40) -> GanViews:
    """Stage 1's supervision rendered from the target: PanoHead's camera ring, world normals (0 outside)
    and 0/1 masks."""
    cams = gan_view_cameras(n_views, resolution=resolution).to(target.vertices.device)
    with torch.no_grad():
        out = render_mesh(target.vertices, target.faces, cams)
        mask = (out.mask > 0.5).float()
        normals = F.normalize(out.normal_world, dim=-1) * mask
    return GanViews(cams, normals, mask)


def portrait_camera(resolution: int = 512, device: torch.device | str = "cpu") -> Cameras:
    """The frontal portrait camera: PanoHead's ring camera at yaw 0 (radius 2.7, the same FoV), level."""
    ring = gan_view_cameras(1, pitch=0.0, resolution=resolution)
    eye = ring.position
    return Cameras(look_at(eye), ring.fov, resolution, resolution).to(device)


def reference_of(target: HeadMesh, resolution: int = 512) -> ReferenceGeometry:
    """The reference-view targets (what Geo Supervision hands the sculpt) rendered from the target."""
    cam = portrait_camera(resolution, target.vertices.device)
    with torch.no_grad():
        out = render_mesh(target.vertices, target.faces, cam)
        hard = out.coverage[0]
        mask = (out.mask[0] > 0.5).float()
        nv = F.normalize(out.normal_view[0], dim=-1) * hard
        disp = out.disparity[0]
        face = mask * (nv[..., 2:3] > 0.3).float()  # the camera-facing part stands in for the face oval
        return ReferenceGeometry(image=out.normal_image()[0], camera=cam, normal_view=nv, disparity=disp, mask=mask,
                                 face_mask=face, depth_mask=mask * (disp > DEPTH_MASK_THRESHOLD).float())


# ----------------------------------------------------------------------------- the oracle denoiser
class OraclePredictor:
    """A perfect denoiser toward the target head, as a ``core.guidance.NoisePredictor`` (goes through
    ``ISDGuidance`` unchanged).

    Latents: ``encode`` maps the normal image to [-1, 1] and area-downsamples it by 8 -- a pixel-space,
    differentiable stand-in for SD's VAE latent grid (same 1/8 size, 3 channels).

    Predictions for x = z + sigma * eps (z = the current render's latents, ISD's ``noise`` = eps):
      * cond (every view, ID on or off): the perfect denoiser of a data distribution that is the target's
        own render at the same camera, z_T:  eps_c = (x - z_T) / sigma.
      * uncond and cond_no_id: the denoiser that keeps the current image (it knows nothing of the target
        head: the negative prompt, or the positive prompt with the subject's ID tokens off):
        eps_u = (x - z) / sigma = eps, exactly the injected noise.
    So eps_c - eps_u = (z - z_T) / sigma, and ISD's gradient (core.guidance.isd_gradient, "authors":
    grad = w * ((eps_c - eps_est) + (cfg - 1) * (eps_c - eps_u)), eps_est = cond_no_id on ID views, cond
    elsewhere) is
        grad_z = k * w(t) / sigma_t * (z - z_T),   k = cfg on views with ID (|az| < 70), cfg - 1 elsewhere,
    a descent direction straight toward the target's render, zero when the render already is the target's,
    finite for every t in [20, 500] (w / sigma = sigma / (1 + sigma^2) <= 1/2). ("sds" gives k = cfg.)

    The keep-current prediction needs z, which ISD computes with this predictor's ``encode`` right before
    ``predict_noise``: the predictor keeps the last encoded latents (detached) for that call. The target is
    rendered at ``views.cameras``, which the sculpt hands over in the INPUT mesh's frame (the Guidance
    protocol in core/sculpt/stages.py) -- the frame the target lives in, so the images agree.
    """

    def __init__(self, target: HeadMesh, downsample: int = 8):
        self.target = target
        self.downsample = int(downsample)
        self.alphas_cumprod = sd15_alphas_cumprod()
        self._last: torch.Tensor | None = None
        self.calls = 0

    def latents(self, images: torch.Tensor) -> torch.Tensor:
        """[B,H,W,3] in 0..1 -> [B,3,H/8,W/8] in -1..1 (area average), differentiable; no state."""
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"the oracle encodes images [B,H,W,3], got shape {tuple(images.shape)}")
        x = images.float().permute(0, 3, 1, 2) * 2.0 - 1.0
        h, w = x.shape[-2:]
        return F.interpolate(x, size=(max(1, h // self.downsample), max(1, w // self.downsample)), mode="area")

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        z = self.latents(images)
        self._last = z.detach()
        return z

    def target_latents(self, cameras: Cameras) -> torch.Tensor:
        """z_T: the target's normal image at ``cameras`` (input frame), encoded."""
        t = self.target.to(cameras.device) if self.target.vertices.device != cameras.device else self.target
        with torch.no_grad():
            img = render_mesh(t.vertices, t.faces, cameras).normal_image()
        return self.latents(img)

    def predict_noise(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction:
        z = self._last
        if z is None or z.shape != x.shape:
            raise RuntimeError("the oracle denoiser needs the latents of the current render: call encode() on the "
                               f"same images first (have {None if z is None else tuple(z.shape)}, x {tuple(x.shape)})")
        if views.cameras is None:
            raise ValueError("the oracle denoiser renders the target at the views' cameras: ViewBatch.cameras is None")
        self.calls += 1
        with torch.no_grad():
            z_t = self.target_latents(views.cameras.to(x.device)).to(x.dtype)
            s = sigma.to(x).view(-1, 1, 1, 1)
            keep = (x - z.to(x)) / s
            toward = (x - z_t) / s
        wants = views.wants_cond_no_id()
        return NoisePrediction(cond=toward, uncond=keep, cond_no_id=keep.clone() if any(wants) else None)



# ----------------------------------------------------------------------------- configs
def shipped_isd_config() -> ISDConfig:
    """ISD as the shipped workflows run it: CFG 50, t in [20, 500], the authors' estimator, ID for |az| < 70."""
    c = ISDConfig(t_min=20, t_max=500, cfg=50.0, estimator="authors", id_azimuth_limit=70.0)
    return c


def sculpt_config(schedule: Schedule, grid_resolution: int = 256, render_resolution: int = 512, seed: int = 0,
                  **overrides: Any) -> SculptConfig:
    """SculptConfig from a Schedule, built as nodes/sculpt_nodes.py builds it from the node's widgets:
    steps, gan_steps, guidance_views, lr, and the regulariser weights switching from their
    "before" to their "after" value after step gan_steps (threestudio's C([gan_steps, a, b, gan_steps + 1]))."""
    d = SculptConfig()
    nc, lap = d.lambda_normal_consistency, d.lambda_laplacian  # (1000, before, after, 1001)
    kw: dict[str, Any] = dict(
        steps=schedule.sculpt_steps, gan_steps=schedule.gan_steps, guidance_views=schedule.guidance_views,
        lr=schedule.sculpt_lr, grid_resolution=grid_resolution, seed=seed,
        lambda_normal_consistency=step_schedule(nc[1], nc[2], schedule.gan_steps),
        lambda_laplacian=step_schedule(lap[1], lap[2], schedule.gan_steps),
        views=RandomViewRanges(resolution=render_resolution), preview_every=0, log_every=max(1, schedule.sculpt_steps // 20))
    kw.update(overrides)
    return SculptConfig(**kw)


def prepare_start(start: HeadMesh, grid_resolution: int, device: torch.device | str = "cpu"):
    """(normalisation, initial SDF on the grid) of the start head, as the Sculptor computes them; computed
    once and shared by every run at this grid (the SDF init costs seconds at 256)."""
    norm = normalize_mesh(start.vertices.float().cpu())
    grid = TetGrid.from_resolution(grid_resolution, 1.0, device)
    sdf = mesh_sdf_on_grid(norm.apply(start.vertices.float().cpu()).to(device), start.faces.to(device), grid)
    return norm, sdf.to(device)


def eval_cameras(resolution: int = 128, device: torch.device | str = "cpu") -> Cameras:
    """Eight orbit views (every 45 deg, elevation 10) at PanoHead's distance and FoV, for mask IoU and normals."""
    ring = gan_view_cameras(1, resolution=resolution)
    az = torch.arange(8) * 45.0
    az = torch.where(az > 180, az - 360, az)
    return Cameras.orbit(10.0, az, 2.7, float(ring.fov[0]), resolution).to(device)


def shape_metrics(mesh: HeadMesh, target: HeadMesh, chamfer_samples: int = 20000, eval_resolution: int = 128) -> dict:
    """Chamfer distance (core.dmtet.chamfer_distance, input-frame units), mask IoU and mean normal cosine over
    the pixels both cover, at eight eval views."""
    m, t = mesh.to("cpu"), target.to("cpu")
    ch = chamfer_distance(m.vertices, m.faces, t.vertices, t.faces, n=chamfer_samples)
    cams = eval_cameras(eval_resolution)
    with torch.no_grad():
        a, b = render_mesh(m.vertices, m.faces, cams), render_mesh(t.vertices, t.faces, cams)
        both = ((a.coverage > 0) & (b.coverage > 0))[..., 0]
        cos = (F.normalize(a.normal_world, dim=-1) * F.normalize(b.normal_world, dim=-1)).sum(-1)
        ncos = float(cos[both].mean()) if bool(both.any()) else float("nan")
        iou = float(mask_iou((a.mask > 0.5).float(), (b.mask > 0.5).float()))
    return {"chamfer": ch, "mask_iou": iou, "normal_cos": ncos}


# ----------------------------------------------------------------------------- one run
def run_schedule(target: HeadMesh, start: HeadMesh, schedule: Schedule, predictor: NoisePredictor, *,
                 grid_resolution: int = 256, render_resolution: int = 512, gan_resolution: int | None = None,
                 reference_resolution: int | None = None, device: torch.device | str = "cpu", seed: int = 0,
                 isd: ISDConfig | None = None, prepared=None, chamfer_samples: int = 20000, progress=None) -> dict:
    """Sculpt ``start`` toward ``target`` with the real Sculptor under ``schedule`` and ISD around ``predictor``.

    grid_resolution: tet grid (256 ships); render_resolution: the random ISD views (512 ships);
    gan_resolution / reference_resolution: the GAN views and the portrait view (default: render_resolution).
    prepared: ``prepare_start(start, grid_resolution, device)``'s result to share the SDF init between runs.
    Returns {"schedule", "chamfer", "chamfer_start" (the start mesh), "chamfer_init" (the start as the tet grid
    holds it after the SDF init: the grid's floor), "mask_iou", "normal_cos", "seconds", "sculpt_seconds",
    "step_ms", "isd_view_samples", "config"}; "seconds" is the whole run after the shared SDF init.
    """
    dev = torch.device(device)
    gan_res = gan_resolution or render_resolution
    ref_res = reference_resolution or render_resolution
    tgt = target.to(dev)
    t0 = time.perf_counter()
    views = gan_views_of(tgt, gan_res)
    ref = reference_of(tgt, ref_res)
    norm, sdf = prepared if prepared is not None else prepare_start(start, grid_resolution, dev)
    cfg = sculpt_config(schedule, grid_resolution, render_resolution, seed)
    generator = torch.Generator().manual_seed(int(seed) + 1)
    guidance = ISDGuidance(predictor, isd or shipped_isd_config(), generator)
    s = Sculptor(start.to(dev), views, ref, guidance, cfg, device=dev, initial_sdf=lambda p: sdf.clone(), normalization=norm)
    v0, f0 = s.current()  # the start head as the grid holds it: the grid's own floor on the Chamfer
    init = HeadMesh(norm.invert(v0.detach().float().cpu()), f0.cpu())
    res = s.run(progress=progress)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    seconds = time.perf_counter() - t0
    out = shape_metrics(res.mesh, target, chamfer_samples)
    out_start = chamfer_distance(start.vertices.cpu(), start.faces.cpu(), target.vertices.cpu(), target.faces.cpu(), n=chamfer_samples)
    out_init = chamfer_distance(init.vertices, init.faces, target.vertices.cpu(), target.faces.cpu(), n=chamfer_samples)
    return {"schedule": schedule.name, **out, "chamfer_start": out_start, "chamfer_init": out_init, "seconds": round(seconds, 2),
            "sculpt_seconds": round(res.seconds, 2), "step_ms": res.step_ms, "isd_view_samples": schedule.isd_view_samples,
            "config": {"steps": cfg.steps, "gan_steps": cfg.gan_steps, "guidance_views": cfg.guidance_views, "lr": cfg.lr,
                       "grid_resolution": grid_resolution, "render_resolution": render_resolution,
                       "gan_resolution": gan_res, "reference_resolution": ref_res, "seed": seed,
                       "lambda_normal_consistency": list(cfg.lambda_normal_consistency),
                       "lambda_laplacian": list(cfg.lambda_laplacian)}}


def variant(schedule: Schedule, name: str, **changes: Any) -> Schedule:
    """A named copy of ``schedule`` with some fields changed (e.g. ``sculpt_lr``)."""
    return dataclasses.replace(schedule, name=name, **changes)


#: ISD step counts the evidence scripts also sculpt FAST with, beside PAPER and FAST (at 4 views a step): 625 spends the
#: paper's 2,500 view samples (FAST's until the full-scale evidence of 2026-12-06 showed 312 steps hold), 400 lies
#: between. bench/evidence_summary.py puts them beside FAST; core/schedules.py FAST is the fewest that passed.
ISD_STEP_VARIANTS = (625, 400)


def with_isd_steps(schedule: Schedule, isd_steps: int, name: str | None = None) -> Schedule:
    """``schedule`` with ``isd_steps`` ISD steps (the reference steps follow, one per ISD step); stage A kept."""
    return variant(schedule, name or f"{schedule.name}_isd{isd_steps}", sculpt_steps=schedule.gan_steps + 2 * isd_steps)


def paper_stage_a(schedule: Schedule, paper: Schedule, name: str | None = None) -> Schedule:
    """``schedule`` with the paper's stage-A length and the same number of stage-B steps (ISD view samples kept)."""
    b = schedule.sculpt_steps - schedule.gan_steps
    return variant(schedule, name or f"{schedule.name}_paper_stage_a", gan_steps=paper.gan_steps, sculpt_steps=paper.gan_steps + b)


if __name__ == "__main__":  # a quick look: python bench/sculpt_schedule_harness.py
    from idsculpt.core.schedules import FAST

    tgt = procedural_target(n=48)
    st = start_head(tgt)
    small = variant(FAST, "fast_tiny", sculpt_steps=40, gan_steps=10)
    r = run_schedule(tgt, st, small, OraclePredictor(tgt), grid_resolution=48, render_resolution=64, chamfer_samples=4000)
    print({k: r[k] for k in ("schedule", "chamfer_start", "chamfer_init", "chamfer", "mask_iou", "normal_cos", "seconds")})
    assert math.isfinite(r["chamfer"])
