"""Stage 2 of ID-Sculpt: sculpt a DMTet surface from the GAN mesh.

Stage A (steps [0, gan_steps)): fit the normals of the GAN views, 10000·(1 − cos) over the GAN mask
with the render composited over the authors' background normal (no mask term) — one random view per
step, as the authors do.
Stage B (the rest): even steps fit the reference view (mask MSE, camera-frame normal MSE inside the
face mask, depth MSE after least-squares scale/shift + (1 − Pearson)); odd steps render the normal
image at random cameras and ask the guidance (ISD) for a loss. Without guidance every stage-B step is
a reference step ("reference-only mode").
Regularisers (normal consistency, Laplacian) in EVERY step, stage A included, with threestudio's
step schedule: 500 / 1e5 up to step 1000, 10000 / 1.5e5 from step 1001 (``schedule.py``).

Frames: the input mesh is mapped to the sculpting frame exactly as the authors' ``shape_init`` does
(vertex mean to the origin, largest |coordinate| 0.9, up +y, front +z); the GAN and reference cameras
are mapped with it, so their images are unchanged. ``SculptResult.mesh_normalized`` is the head in
that frame (what the authors' texture stage runs on), ``SculptResult.mesh`` the same head mapped back.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol, runtime_checkable

import torch

from ..camera import Cameras, preview_cameras
from ..dmtet import (DMTetGeometry, TetGrid, laplacian_loss, mesh_edges, mesh_sdf_on_grid, normal_consistency_loss,
                     normalize_mesh)
from ..dmtet.sdf_init import NORMALISED_HEAD_EXTENT, MeshNormalization
from ..mesh import HeadMesh
from ..render import render_mesh
from ..stage_types import InterruptFn, ProgressFn
from .losses import depth_losses, gan_normal_loss, mask_loss, masked_mse
from ..speed import profiling
from .schedule import Weight, check_weight, scheduled_weight
from .views import GanViews, RandomViewRanges, ReferenceGeometry, check_gan_views, check_reference, random_views


@runtime_checkable
class Guidance(Protocol):
    """What the sculpt stage asks of a score-distillation guidance (``core.guidance.ISDGuidance``).

    images: [B,H,W,3] normal images in 0..1 ((normal_view + 1)/2 over background (0.5, 0.5, 1)),
        row 0 at the top, differentiable; cameras: the B cameras expressed in the INPUT mesh's frame
        (the frame of the landmarks placed on that mesh; the renders were made with the same cameras in
        the sculpting frame, so the images agree); azimuth/elevation: [B] degrees in the sculpting
        frame (0 azimuth = front, +90 = the subject's left);
        step/total_steps: the sculpt step, for timestep annealing.
    Returns a scalar loss whose gradient w.r.t. ``images`` is the guidance gradient. An optional
    ``__enter__``/``__exit__`` pair keeps models loaded for the whole loop; an optional
    ``prefetch(cameras)`` is called with the step's cameras before the render, so work that needs only
    the cameras (the landmark hints) can start early.
    """

    def __call__(self, images: torch.Tensor, cameras: Cameras, azimuth: torch.Tensor | None = None,
                 elevation: torch.Tensor | None = None, step: int | None = None,
                 total_steps: int | None = None) -> torch.Tensor: ...


@dataclass
class SculptConfig:
    """Defaults follow the authors' run (REFERENCE.md "Stage 2") except where noted."""

    steps: int = 6000
    gan_steps: int = 1000  # stage A length (clamped to ``steps``)
    # Tet grid: 256-equivalent (n = 128 cubes per side) over [-1, 1]³. The authors use a 512 grid over
    # radius 2; the head is normalised to a 0.9 radius, so radius 1 with 256 has the same cell size
    # per head as their 512 over radius 2 — at an eighth of the vertices.
    grid_resolution: int = 256
    grid_radius: float = 1.0
    # Tet offsets bounded by tanh at half a cell: threestudio's 1/res on its [0,1] grid with cells of
    # about 2/res (core/dmtet/geometry.py).
    deform_fraction: float = 0.5
    # Mesh normalisation (the authors' shape_init: vertex mean, L∞ 0.9, up +y, front +z).
    init_radius: float = NORMALISED_HEAD_EXTENT
    mesh_up: str = "+y"
    mesh_front: str = "+z"
    lr: float = 0.005
    betas: tuple[float, float] = (0.9, 0.99)
    adam_eps: float = 1e-15  # the authors' optimizer config (torch's default is 1e-8)
    # Stage A (GAN views): the authors' lambda_normal 10000 on 1 − cos; no mask term (lambda_gan_mask
    # > 0 adds a mask MSE on the GAN masks: an option, not the authors').
    gan_batch: int = 1
    lambda_gan_normal: float = 10000.0
    lambda_gan_mask: float = 0.0
    # Stage B, reference view (the authors' lambda_normal, lambda_depth, lambda_depth_rel, lambda_mask).
    # A field set by one DMTet Sculpt widget has the widget's name (saved workflows match widgets by name, so
    # the fields follow the widgets); "# widget(s) …:" comments name the widgets that differ, and why
    # (tests/test_widget_names.py holds the node to them).
    ref_normal_weight: float = 10000.0
    ref_depth_weight: float = 100.0
    # also set by the widget ref_depth_weight: one widget for both depth terms (the authors: 100 each)
    ref_depth_pearson_weight: float = 100.0
    ref_mask_weight: float = 100.0
    # Stage B, guidance.
    guidance_views: int = 1  # random views per guidance step
    guidance_weight: float = 1.0  # the authors' lambda_sd
    # widget render_resolution: sets views.resolution only (views nests the camera ranges the node doesn't expose)
    views: RandomViewRanges = field(default_factory=RandomViewRanges)
    # Regularisers, in every step (stage A too), as threestudio's C() schedules (core/sculpt/schedule.py):
    # a number or [start_step, start_value, end_value, end_step]. The authors': a step after step 1000.
    # widgets normal_consistency_start, normal_consistency_end: the schedule's two values (its steps are gan_steps)
    lambda_normal_consistency: Weight = (1000, 500.0, 10000.0, 1001)
    # widgets laplacian_start, laplacian_end: the schedule's two values (its steps are gan_steps)
    lambda_laplacian: Weight = (1000, 1e5, 1.5e5, 1001)
    # Losses that fit a silhouette (the reference mask; stage A's normals composited over the background)
    # need silhouette gradients. nvdiffrast's antialiasing gives dense meshes almost none (0.3 % of the
    # analytic value, docs/PERFORMANCE.md), so on CUDA the GAN and reference steps use nvdiffrast's
    # rasteriser with the pack's walking antialiaser; the torch backend (CPU) always
    # walks. False = plain nvdiffrast everywhere (the authors' behaviour, faster).
    silhouette_gradients: bool = True
    seed: int = 0
    #: diagnostic: profile ten stage-B steps into this folder (core/speed/profiling.py); None = off
    profile_folder: Optional[str] = None
    preview_every: int = 50
    preview_resolution: int = 256
    log_every: int = 50

    def validate(self) -> None:
        if self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.gan_steps < 0:
            raise ValueError(f"gan_steps must be >= 0, got {self.gan_steps}")
        if self.grid_resolution < 8:
            raise ValueError(f"grid_resolution must be >= 8, got {self.grid_resolution}")
        if not self.init_radius < self.grid_radius:
            raise ValueError(f"init_radius ({self.init_radius}) must be inside the grid radius ({self.grid_radius})")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not self.adam_eps > 0:
            raise ValueError(f"adam_eps must be > 0, got {self.adam_eps}")
        check_weight(self.lambda_normal_consistency, "lambda_normal_consistency")
        check_weight(self.lambda_laplacian, "lambda_laplacian")


@dataclass
class SculptResult:
    mesh: HeadMesh  # in the input mesh's frame
    mesh_normalized: HeadMesh  # in the sculpting (authors' normalised) frame: what texturing runs on
    normalization: MeshNormalization
    history: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    # wall milliseconds per step of each kind ("gan" | "reference" | "guidance"):
    # {kind: {"steps", "mean_ms", "median_ms"}}. Each step ends with one host sync (its finiteness check),
    # so a step's wall time is its real cost. The mean includes one-off costs, which land in each kind's
    # first step ("first_ms": kernel compiles and builds on first use, CUDA graph captures); the median is
    # the steady step.
    step_ms: dict = field(default_factory=dict)


def render_previews(vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras) -> torch.Tensor:
    """Normal images [B,H,W,3] (0..1) of the mesh, background (0.5, 0.5, 1)."""
    with torch.no_grad():
        if faces.shape[0] == 0:
            return torch.full((len(cameras), cameras.height, cameras.width, 3), 0.5).cpu()
        out = render_mesh(vertices.detach(), faces, cameras.to(vertices.device))
        return out.normal_image().float().cpu()


class NonFiniteError(RuntimeError):
    pass


class Sculptor:
    """The stage-2 optimisation, one step at a time (``sculpt`` runs it to the end)."""

    def __init__(self, initial_mesh: HeadMesh, gan_views: GanViews | None = None, reference: ReferenceGeometry | None = None,
                 guidance: Guidance | None = None, config: SculptConfig | None = None, device: torch.device | str | None = None,
                 initial_sdf: Callable[[torch.Tensor], torch.Tensor] | None = None, normalization: MeshNormalization | None = None,
                 interrupt: InterruptFn | None = None):
        self.config = c = config or SculptConfig()
        c.validate()
        if gan_views is None and reference is None and guidance is None:
            raise ValueError("DMTet sculpting needs something to fit: GAN views, reference geometry or guidance")
        self.device = torch.device(device) if device is not None else initial_mesh.vertices.device
        if initial_mesh.faces.shape[0] == 0:
            raise ValueError("the initial head mesh has no faces")
        # Inputs are checked before the (expensive) SDF initialisation, so mistakes fail fast.
        self.norm = normalization or normalize_mesh(initial_mesh.vertices, c.init_radius, c.mesh_up, c.mesh_front)
        self.gan = None
        if gan_views is not None:
            check_gan_views(gan_views)
            rot = self.norm.rotation.to(self.device)
            masks = gan_views.masks if gan_views.masks.dim() == 4 else gan_views.masks[..., None]
            self.gan = (self.norm.apply_cameras(gan_views.cameras.to(self.device)),
                        (gan_views.normals.to(self.device).float() @ rot.T).clone(), masks.to(self.device).float().clone())
        self.ref = None
        if reference is not None:
            check_reference(reference)
            r = reference.to(self.device)
            self.ref = dict(camera=self.norm.apply_cameras(r.camera), normal=r.normal_view.float().clone()[None],
                            disparity=r.disparity.float().clone()[None], mask=r.mask.float().clone()[None],
                            face_mask=r.face_mask.float().clone()[None], depth_mask=r.depth_mask.float().clone()[None])
        self.guidance = guidance
        self.grid = TetGrid.from_resolution(c.grid_resolution, c.grid_radius, self.device)
        if initial_sdf is not None:  # an analytic SDF in the sculpting frame (tests, procedural inits)
            sdf = initial_sdf(self.grid.vertices())
        else:
            v = self.norm.apply(initial_mesh.vertices.float())
            # the initial SDF takes seconds to minutes on big grids: it honours Cancel too
            sdf = mesh_sdf_on_grid(v, initial_mesh.faces, self.grid, interrupt=interrupt)
        self.geometry = DMTetGeometry(self.grid, sdf.to(self.device), c.deform_fraction)
        self.optimizer = torch.optim.Adam(self.geometry.parameters(), lr=c.lr, betas=c.betas, eps=c.adam_eps)
        self.generator = torch.Generator().manual_seed(int(c.seed))

        self.total = c.steps
        self.gan_steps = min(c.gan_steps, c.steps) if self.gan is not None else 0
        self.step_index = 0
        self.history: list[dict] = []
        self.step_seconds: dict[str, list[float]] = {}  # kind -> seconds of each step (see SculptResult.step_ms)
        self.previews = preview_cameras(4, c.preview_resolution).to(self.device)

    # ------------------------------------------------------------------ step kinds
    def kind(self, step: int) -> str:
        if step < self.gan_steps:
            return "gan"
        b = step - self.gan_steps
        if self.guidance is not None and (b % 2 == 1 or (self.ref is None and self.gan is None)):
            return "guidance"
        if self.ref is not None:
            return "reference"
        if self.gan is not None:
            return "gan"
        return "guidance"

    def _mask_backend(self) -> str | None:
        """Backend for steps with mask losses (see SculptConfig.silhouette_gradients)."""
        if self.config.silhouette_gradients and self.device.type == "cuda":
            return "nvdiffrast_walk"
        return None

    def gan_loss(self, v: torch.Tensor, f: torch.Tensor) -> dict[str, torch.Tensor]:
        cams, normals, masks = self.gan
        c = self.config
        idx = torch.randint(0, len(cams), (c.gan_batch,), generator=self.generator).tolist()
        # The silhouette is fitted through the composited normals (see gan_normal_loss): it needs the
        # silhouette gradients of the walking antialiaser just as a mask term would.
        out = render_mesh(v, f, cams[idx], backend=self._mask_backend(), check_inputs=False)
        terms = {"gan_normal": c.lambda_gan_normal * gan_normal_loss(out.normal_world, out.mask, normals[idx], masks[idx])}
        if c.lambda_gan_mask > 0:
            terms["gan_mask"] = c.lambda_gan_mask * mask_loss(out.mask, masks[idx])
        return terms

    def reference_loss(self, v: torch.Tensor, f: torch.Tensor) -> dict[str, torch.Tensor]:
        r, c = self.ref, self.config
        out = render_mesh(v, f, r["camera"], backend=self._mask_backend(), check_inputs=False)
        cover = out.coverage
        inv_depth = torch.where(cover > 0, 1.0 / out.depth.clamp_min(1e-6), torch.zeros_like(out.depth))
        d_mse, d_pearson = depth_losses(inv_depth, r["disparity"], r["depth_mask"] * cover)
        return {
            "ref_mask": c.ref_mask_weight * mask_loss(out.mask, r["mask"]),
            "ref_normal": c.ref_normal_weight * masked_mse(out.normal_view, r["normal"], r["face_mask"] * cover),
            "ref_depth": c.ref_depth_weight * d_mse,
            "ref_depth_pearson": c.ref_depth_pearson_weight * d_pearson,
        }

    def guidance_loss(self, v: torch.Tensor, f: torch.Tensor, step: int) -> dict[str, torch.Tensor]:
        c = self.config
        cams, az, el = random_views(c.guidance_views, c.views, self.generator)
        cams = cams.to(self.device)
        # The guidance draws its landmark hints from the cameras, and the landmarks live in the input
        # mesh's frame (placed on the PanoHead mesh): it gets the same views expressed in that frame
        # (same images). One object for both calls: the predictor matches its prefetch by identity.
        input_frame_cams = self.norm.invert_cameras(cams)
        prefetch = getattr(self.guidance, "prefetch", None)
        if prefetch is not None:  # e.g. start drawing the landmark hints while the GPU renders
            prefetch(input_frame_cams)
        out = render_mesh(v, f, cams, check_inputs=False)
        loss = self.guidance(out.normal_image(), input_frame_cams, azimuth=az, elevation=el, step=step, total_steps=self.total)
        return {"guidance": c.guidance_weight * loss}

    def regularizer_weights(self, step: int) -> tuple[float, float]:
        """(normal consistency, Laplacian) weights at ``step`` (threestudio's C(), see schedule.py)."""
        c = self.config
        return scheduled_weight(c.lambda_normal_consistency, step), scheduled_weight(c.lambda_laplacian, step)

    # ------------------------------------------------------------------ one step
    def step(self) -> dict:
        step = self.step_index
        v, f = self.geometry.extract()
        if f.shape[0] == 0:
            raise RuntimeError(f"DMTet sculpt: the surface vanished at step {step} (the SDF has no zero crossing); "
                               "lower lr or the guidance weight, or check that the initial mesh lies inside the grid")
        kind = self.kind(step)
        w_nc, w_lap = self.regularizer_weights(step)
        # The surface's edges (for both regularisers) right after marching tets: finding them reads a count
        # back from the GPU, which here waits for little; after the guidance it waited for the whole UNet.
        edges = mesh_edges(f, v.shape[0]) if (w_nc > 0 or w_lap > 0) else None
        if kind == "gan":
            terms = self.gan_loss(v, f)
        elif kind == "reference":
            terms = self.reference_loss(v, f)
        else:
            terms = self.guidance_loss(v, f, step)
        # Every step, stage A included; a zero weight skips the term, as threestudio's `if C(λ) > 0` does.
        if w_nc > 0:
            terms["normal_consistency"] = w_nc * normal_consistency_loss(v, f, edges)
        if w_lap > 0:
            terms["laplacian"] = w_lap * laplacian_loss(v, f, edges)
        loss = sum(terms.values())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # One host sync per step for all checks and logged values (the step is launch-bound on the
        # GPU; each .item()/bool() would wait for the queue to drain). A non-finite loss or gradient
        # still stops the run before the optimizer touches the parameters.
        names = list(terms)
        params = [(n, p) for n, p in self.geometry.named_parameters() if p.grad is not None]
        vals = torch.stack([t.detach().float().reshape(()) for t in terms.values()] + [loss.detach().float().reshape(())])
        grad_ok = [torch.isfinite(p.grad).all() for _, p in params]
        host = torch.cat([vals, torch.stack(grad_ok).float() if grad_ok else vals.new_zeros(0)]).tolist()
        term_vals, loss_val, grads_finite = host[: len(names)], host[len(names)], host[len(names) + 1 :]
        bad = [k for k, x in zip(names, term_vals) if not math.isfinite(x)]
        if bad:
            raise NonFiniteError(f"DMTet sculpt: loss term(s) {bad} became NaN/inf at step {step} ({kind} step); "
                                 "stopped without writing a mesh. Lower lr or the loss weights, or check the inputs")
        for (name, _), ok in zip(params, grads_finite):
            if not ok:
                raise NonFiniteError(f"DMTet sculpt: the gradient of {name} became NaN/inf at step {step} ({kind} step); "
                                     "stopped without writing a mesh. Lower lr or the loss weights")
        self.optimizer.step()
        self.step_index += 1
        rec = {"step": step, "kind": kind, "loss": loss_val, "faces": int(f.shape[0])}
        rec.update(zip(names, term_vals))
        return rec

    def current(self) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            return self.geometry.extract()

    def result(self, seconds: float = 0.0) -> SculptResult:
        v, f = self.current()
        if f.shape[0] == 0 or not bool(torch.isfinite(v).all()):
            raise RuntimeError("DMTet sculpt: the final surface is empty or not finite; not writing a broken mesh")
        v, f = v.detach().float().cpu(), f.cpu()
        step_ms = {k: {"steps": len(t), "mean_ms": round(1000 * sum(t) / len(t), 2),
                       "median_ms": round(1000 * statistics.median(t), 2), "first_ms": round(1000 * t[0], 2)}
                   for k, t in self.step_seconds.items() if t}
        return SculptResult(HeadMesh(self.norm.invert(v), f), HeadMesh(v, f), self.norm, self.history, seconds, step_ms)

    def _after_step(self, rec: dict, progress: ProgressFn | None) -> dict:
        """Log the step's record and report progress (with a preview every ``preview_every`` steps)."""
        c = self.config
        if self.step_index % max(c.log_every, 1) == 0 or self.step_index == self.total:
            self.history.append(rec)
        if progress is not None:
            preview = None
            if c.preview_every > 0 and (self.step_index % c.preview_every == 0 or self.step_index == self.total):
                v, f = self.current()
                imgs = render_previews(v, f, self.previews)
                preview = torch.cat(list(imgs), dim=1)  # [H, 4W, 3]
            progress(self.step_index, self.total, preview)
        return rec

    def run(self, progress: ProgressFn | None = None, interrupt: InterruptFn | None = None) -> SculptResult:
        t0 = time.time()
        enter = getattr(self.guidance, "__enter__", None)
        if enter is not None:
            enter()
        try:
            folder = self.config.profile_folder
            while self.step_index < self.total:
                if interrupt is not None:
                    interrupt()
                if folder and self.step_index == self.gan_steps + profiling.PROFILE_AFTER and self.total - self.step_index >= profiling.PROFILE_STEPS:
                    # diagnostic (profile_folder): these steps run under the profiler, so they are
                    # left out of step_ms
                    profiling.profile_steps(lambda: self._after_step(self.step(), progress), profiling.PROFILE_STEPS, folder, self.device)
                    continue
                t_step = time.perf_counter()
                rec = self.step()
                self.step_seconds.setdefault(rec["kind"], []).append(time.perf_counter() - t_step)
                self._after_step(rec, progress)
        finally:
            if enter is not None:
                self.guidance.__exit__(None, None, None)
        return self.result(time.time() - t0)


def sculpt(initial_mesh: HeadMesh, gan_views: GanViews | None = None, reference: ReferenceGeometry | None = None,
           guidance: Guidance | None = None, config: SculptConfig | None = None, progress: ProgressFn | None = None,
           interrupt: InterruptFn | None = None, device: torch.device | str | None = None) -> SculptResult:
    """Run stage 2 (see the module docstring). Returns the sculpted mesh in the input mesh's frame."""
    return Sculptor(initial_mesh, gan_views, reference, guidance, config, device, interrupt=interrupt).run(progress, interrupt)
