"""Texture refinement (paper §3.3, Eq. 8–9), independent of any diffusion backend.

The texture is optimised in logit space (texture = sigmoid(θ), so colours stay in 0..1 without
clamping and gradients never die at the bounds) with AdamW, lr 0.02. Steps alternate as in the authors'
code (threestudio/systems/IDsculpt_tex.py, ``n_ref: 2``):
  * even steps — a random view (azimuth ±180°, elevation [−20°, 45°] drawn as threestudio's random
    cameras, distance [2.5, 3.5], FoV [30°, 45°], white background) is rendered, noised to t ~ U[50, 200) and restored by the ``Denoiser``
    (SDEdit: 20 DDIM steps, CFG 10, normal ControlNet, ID adapter, the prompt pair of the view's
    direction). The restored image is a fixed target:
    0.1·(0.5·Σ(render − target)²/B) + 50·Σ_b LPIPS_b/B  (random_view_loss; sums, as their guidance);
  * odd steps — the reference view: 1000·mean L1 inside the portrait's whole-head mask
    + 5e-4·tv_loss(render), threestudio's TV being a sum of squared neighbour differences
    (reference_loss).
(The paper writes MSE + LPIPS for the reference term; the code uses L1 + TV — we follow the code.)

``denoise_batch`` = K > 1 (a speed option, not in the authors' code; the paper's K = 1 is the default):
the SDEdit targets of K consecutive random views come from ONE batched sampler call (CFG batch 2K,
which a GPU runs at nearly twice the per-sample rate of batch 2). At the first random step of a batch
the K cameras are drawn (as today, in order) and then ONE t (a batched sampler shares one sigma schedule;
each view's t is still U[t_min, t_max) marginally); the K views are rendered with the texture of that
moment and denoised together; the K random steps that follow consume the targets in order, each
rendering its own view with the CURRENT texture for its loss. A target is thus computed from a render up
to 2K − 2 Adam steps old. The 400 steps, 200 random views, losses and weights are unchanged. When the
random steps run out mid-batch the last batch holds only the views still needed (no unused target).

The perceptual term takes any callable ``perceptual(a, b)`` on [B,3,H,W] images in 0..1 returning one
value per image (LPIPS-VGG in the authors' code). Without one, that term is skipped (weight 0), which the
node reports; the squared-error term still pulls toward the denoised views.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Protocol

import torch
import torch.nn.functional as F

from ..camera import Cameras
from ..mesh import HeadMesh
from ..stage_types import InterruptFn, ProgressFn
from .inpaint import ReferenceView, render_textured, shade
from .views import normalbae_control

PerceptualFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class RefineView:
    """One random view of refinement: its camera and the orbit angles it was drawn from (degrees).

    The angles travel with the camera so a denoiser can pick the view-dependent prompt of its direction
    (front / side / back / overhead, as the authors' prompt processor does for every random view)."""

    camera: Cameras
    elevation: float
    azimuth: float
    distance: float
    fov: float


class Denoiser(Protocol):
    """SDEdit restorer of refinement's random views. ``denoise`` is required; ``denoise_batch`` (several views
    from one noise level in one call) is optional: ``denoise_views`` loops ``denoise`` where it is missing."""

    def denoise(self, image: torch.Tensor, normal_control: torch.Tensor, view: RefineView, t: int) -> torch.Tensor:
        """image [H,W,3] 0..1 (a render), normal_control [H,W,3] (normalbae hint), ``view`` the random view
        (camera + angles), t in 0..999 (the noise level SDEdit starts from) → the restored image [H,W,3] 0..1."""
        ...


def denoise_views(denoiser: Denoiser, images: torch.Tensor, normal_controls: torch.Tensor, views: list[RefineView],
                  t: int) -> torch.Tensor:
    """The SDEdit targets [K,H,W,3] of K views restored from one noise level t: ``denoiser.denoise_batch(images
    [K,H,W,3], normal_controls [K,H,W,3], views, t)`` where the denoiser has it, else ``denoise`` per view."""
    batch = getattr(denoiser, "denoise_batch", None)
    if callable(batch):
        out = batch(images, normal_controls, views, t)
    else:
        out = torch.stack([_one(denoiser.denoise(images[i], normal_controls[i], views[i], t)) for i in range(len(views))])
    if tuple(out.shape) != tuple(images.shape):
        raise RuntimeError(f"the denoiser returned targets of shape {tuple(out.shape)} for views of shape {tuple(images.shape)}")
    return out


def _one(target: torch.Tensor) -> torch.Tensor:
    """One view's target [H,W,3] (a denoiser may return it as a batch of one)."""
    return target[0] if target.dim() == 4 else target


@dataclass
class RefineConfig:
    # A field set by one Texture Refine widget has the widget's name (saved workflows match widgets by name);
    # "# widget(s) …:" comments name the widgets that differ, and why (tests/test_widget_names.py).
    refine_steps: int = 400  # optimisation steps (the node's steps widget is the sampler's steps per view)
    learning_rate: float = 0.02
    betas: tuple[float, float] = (0.9, 0.99)
    eps: float = 1e-4
    weight_decay: float = 0.01  # AdamW's default, as the authors' optimizer
    # widgets t_min, t_max: the range's two ends (a widget holds one number)
    t_range: tuple[int, int] = (50, 200)  # SDEdit start timestep, U[lo, hi)
    elevation_range: tuple[float, float] = (-20.0, 45.0)
    azimuth_range: tuple[float, float] = (-180.0, 180.0)
    distance_range: tuple[float, float] = (2.5, 3.5)
    fov_range: tuple[float, float] = (30.0, 45.0)
    resolution: int = 512  # random-view render size (SD1.5's native size)
    # loss weights as the authors' texture config (lambda_l2, lambda_p, lambda_rgb, lambda_tv) on the terms
    # as their code reduces them: see random_view_loss and reference_loss
    w_l2: float = 0.1
    w_perceptual: float = 50.0
    w_ref_l1: float = 1000.0
    w_tv: float = 5e-4
    background: float = 1.0  # white, the authors' texture renderer background
    seed: int = 0
    # random views whose SDEdit targets come from one batched sampler call (1: the authors' one call per view;
    # >1: see the module docstring)
    denoise_batch: int = 1
    preview_every: int = 10
    backend: Optional[str] = None


@dataclass
class RefineResult:
    mesh: HeadMesh
    losses: list[dict] = field(default_factory=list)


def tv_loss(img: torch.Tensor) -> torch.Tensor:
    """threestudio's ``tv_loss`` of a [B,H,W,C] image: the SUM over the batch, channels and pixels of the
    squared differences to the pixel below and to the pixel on the right (the last row / column compare
    with themselves: zero). A sum, not a mean: at 512² its weight 5e-4 is a real smoothness term."""
    dh = (img[:, 1:] - img[:, :-1]).pow(2).sum()
    dw = (img[:, :, 1:] - img[:, :, :-1]).pow(2).sum()
    return dh + dw


def random_view_loss(render: torch.Tensor, target: torch.Tensor, perceptual: Optional[PerceptualFn], w_l2: float = 0.1,
                     w_perceptual: float = 50.0) -> tuple[torch.Tensor, dict]:
    """The random-view loss as the authors' guidance computes it, for [B,H,W,3] images in 0..1:
    ``w_l2 · 0.5 · Σ(render − target)² / B + w_perceptual · Σ_b perceptual_b / B``.

    The squared error is a SUM over pixels and channels (0.5·SSE, threestudio's SDS-style reduction),
    not a mean: at 512² it is 786,432× a mean, so colour drift from the denoised view is penalised as
    strongly as the perceptual term. ``perceptual(a, b)`` takes [B,3,H,W] images in 0..1 and returns one
    value per image (or their mean, identical at B = 1); without it that term is left out."""
    b = render.shape[0]
    target = target.detach()
    l2 = 0.5 * (render - target).pow(2).sum() / b
    loss = w_l2 * l2
    parts = {"l2": float(l2.detach())}
    if perceptual is not None and w_perceptual > 0:
        perc = perceptual(render.permute(0, 3, 1, 2), target.permute(0, 3, 1, 2)).sum() / b
        loss = loss + w_perceptual * perc
        parts["perceptual"] = float(perc.detach())
    return loss, parts


def reference_loss(pred: torch.Tensor, gt: torch.Tensor, mask: torch.Tensor, w_l1: float = 1000.0, w_tv: float = 5e-4) -> tuple[torch.Tensor, dict]:
    """The reference-view loss as the authors' texture system computes it, for [B,H,W,3] images:
    ``w_l1 · mean|gt·m − pred·m| + w_tv · tv_loss(pred)`` with m = (mask > 0.5), the portrait's head
    mask [B,H,W,1] (face parsing > 0: face, hair, ears and neck are all held). The L1 mean runs over
    every element, the masked-out zeros included (F.l1_loss's default); the TV is over the whole render."""
    m = (mask > 0.5).to(pred.dtype)
    l1 = F.l1_loss(pred * m, gt * m)
    tv = tv_loss(pred)
    return w_l1 * l1 + w_tv * tv, {"l1": float(l1.detach()), "tv": float(tv.detach())}


def _uniform(gen: torch.Generator, lo: float, hi: float) -> float:
    return lo + (hi - lo) * float(torch.rand((), generator=gen))


def sample_elevation(lo: float, hi: float, gen: torch.Generator) -> float:
    """An elevation (degrees) as threestudio's random cameras draw it: with probability ½ uniform in
    degrees, else uniform on the sphere (sin(elevation) uniform) — CDF ½·(e−lo)/(hi−lo) +
    ½·(sin e − sin lo)/(sin hi − sin lo)."""
    if float(torch.rand((), generator=gen)) < 0.5:
        return _uniform(gen, lo, hi)
    s_lo, s_hi = math.sin(math.radians(lo)), math.sin(math.radians(hi))
    return math.degrees(math.asin(_uniform(gen, s_lo, s_hi)))


def sample_refine_camera(config: RefineConfig, gen: torch.Generator) -> RefineView:
    el = sample_elevation(*config.elevation_range, gen)
    az = _uniform(gen, *config.azimuth_range)
    d = _uniform(gen, *config.distance_range)
    fov = _uniform(gen, *config.fov_range)
    return RefineView(Cameras.orbit(el, az, d, fov, config.resolution), el, az, d, fov)


def _denoise_batch(geo: HeadMesh, texture: torch.Tensor, denoiser: Denoiser, config: RefineConfig, gen: torch.Generator, n: int,
                   batched: bool, dev: torch.device) -> tuple:
    """Draw ``n`` random views (their cameras in order, then one t), render them with ``texture`` and restore
    them from t. Returns (the first view's render, differentiable in ``texture``: its step's loss uses it;
    [(view, t, target [H,W,3])] of the n views). ``batched`` False: one ``denoise`` call, the authors' path."""
    views = []
    for _ in range(n):
        v = sample_refine_camera(config, gen)
        views.append(RefineView(v.camera.to(dev), v.elevation, v.azimuth, v.distance, v.fov))
    lo, hi = config.t_range
    t = int(torch.randint(lo, hi, (), generator=gen))  # one noise level per batch: one sigma schedule per sampler call
    first, _ = render_textured(geo, texture, views[0].camera, config.background, config.backend)
    with torch.no_grad():
        color, normal, mask = first.color.detach(), first.normal_view, first.mask
        if n > 1:  # the others only feed the denoiser: one render of their cameras, no graph
            rest, _ = render_textured(geo, texture.detach(), Cameras.cat([v.camera for v in views[1:]]), config.background, config.backend)
            color, normal, mask = torch.cat([color, rest.color]), torch.cat([normal, rest.normal_view]), torch.cat([mask, rest.mask])
        control = normalbae_control(normal, mask)
        if batched:
            targets = denoise_views(denoiser, color.clone(), control, views, t)
        else:
            targets = _one(denoiser.denoise(color[0].clone(), control[0], views[0], t))[None]
        targets = targets.to(color).clamp(0, 1)
        if not bool(torch.isfinite(targets).all()):
            raise RuntimeError("the denoiser returned NaN/inf: lower the CFG or check the model")
    return first, [(v, t, targets[i]) for i, v in enumerate(views)]


def refine_texture(
    mesh: HeadMesh,
    denoiser: Optional[Denoiser],
    reference: Optional[ReferenceView] = None,
    config: Optional[RefineConfig] = None,
    perceptual: Optional[PerceptualFn] = None,
    progress: Optional[ProgressFn] = None,
    interrupt: Optional[InterruptFn] = None,
) -> RefineResult:
    """Refine ``mesh.texture``; returns a new mesh (same geometry/UVs) and the per-step losses."""
    config = config or RefineConfig()
    if not mesh.has_uv or mesh.texture is None:
        raise ValueError("texture refinement needs a textured mesh with UVs: run Progressive Inpaint first")
    if config.refine_steps < 0:
        raise ValueError(f"refine_steps must be ≥ 0, got {config.refine_steps}")
    if denoiser is None and reference is None:
        raise ValueError("texture refinement needs a denoiser (random views), a reference view, or both")
    lo, hi = config.t_range
    if not 0 <= lo < hi <= 1000:
        raise ValueError(f"t_range {config.t_range} must satisfy 0 ≤ lo < hi ≤ 1000")
    if int(config.denoise_batch) < 1:
        raise ValueError(f"denoise_batch must be ≥ 1 (random views denoised per sampler call), got {config.denoise_batch}")
    dev = mesh.vertices.device
    gen = torch.Generator().manual_seed(int(config.seed))
    with torch.inference_mode(False), torch.enable_grad():
        # ComfyUI runs nodes under inference_mode: tensors from other nodes are inference tensors, which
        # autograd refuses to save; clones made here are ordinary tensors
        geo = HeadMesh(mesh.vertices.detach().clone(), mesh.faces.clone(), mesh.uvs.detach().clone(), mesh.uv_faces.clone())
        if reference is not None:
            reference = ReferenceView(reference.image.detach().clone(), reference.camera, None if reference.mask is None else reference.mask.clone())
        tex0 = mesh.texture.detach().clone().float().to(dev)
        logits = torch.logit(tex0.clamp(1e-4, 1 - 1e-4)).clone().requires_grad_(True)
        opt = torch.optim.AdamW([logits], lr=config.learning_rate, betas=config.betas, eps=config.eps, weight_decay=config.weight_decay)
        ref_cam = reference.camera.to(dev) if reference is not None else None
        region = None
        if reference is not None:
            # the portrait's whole-head mask (the authors' mask.png); without one, the render's own silhouette
            region = reference.mask.to(dev)[None, ..., None] if reference.mask is not None else None
        losses: list[dict] = []
        ref_geometry = None
        batch = int(config.denoise_batch)

        def is_random(s: int) -> bool:  # even steps take a random view (every step without a reference)
            return denoiser is not None and (s % 2 == 0 or reference is None)

        random_left = sum(map(is_random, range(config.refine_steps)))
        pending: list[tuple[RefineView, int, torch.Tensor]] = []  # (view, t, target) of the batch not yet consumed
        for step in range(config.refine_steps):
            if interrupt:
                interrupt()
            texture = torch.sigmoid(logits)
            use_random = is_random(step)
            record: dict = {"step": step}
            preview = None
            if use_random:
                out = None
                if not pending:  # the first random step of a batch: draw, render and denoise its views
                    n = min(batch, random_left)
                    out, pending = _denoise_batch(geo, texture, denoiser, config, gen, n, batch > 1, dev)
                view, t, target = pending.pop(0)
                random_left -= 1
                if out is None:  # a later view of the batch: rendered with the texture of now for its loss
                    out, _ = render_textured(geo, texture, view.camera, config.background, config.backend)
                image = out.color
                loss, parts = random_view_loss(image, target[None], perceptual, config.w_l2, config.w_perceptual)
                record.update(kind="random", t=t, elevation=view.elevation, azimuth=view.azimuth, **parts)
                preview = target
            else:
                if ref_geometry is None:  # the reference camera never moves: rasterise it once
                    ref_geometry, _ = render_textured(geo, texture.detach(), ref_cam, config.background, config.backend)
                pred = shade(ref_geometry, texture, config.background, config.backend)
                out = ref_geometry
                gt = reference.image.to(dev)[None]
                m = region if region is not None else out.mask.detach()
                loss, parts = reference_loss(pred, gt, m, config.w_ref_l1, config.w_tv)
                record.update(kind="reference", **parts)
                preview = pred[0].detach()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            record["loss"] = float(loss.detach())
            if not math.isfinite(record["loss"]):
                raise RuntimeError(f"texture refinement diverged at step {step} (loss {record['loss']}): lower the learning rate")
            losses.append(record)
            if progress:
                show = preview if (config.preview_every > 0 and step % config.preview_every == 0) else None
                progress(step + 1, config.refine_steps, None if show is None else show.detach().clamp(0, 1))
        final = torch.sigmoid(logits).detach().clone()
    return RefineResult(mesh.with_(texture=final), losses)
