"""PanoHead inversion: W+ projection from the mean latent, then pivotal tuning (PTI).

Defaults are the authors' (PanoHead ``projector.py`` as ID-Sculpt runs it, see REFERENCE.md):
  * W+ projection: start at w_avg (mean of ``w_avg_samples`` mapped z at the frontal camera),
    Adam(0.9, 0.999) lr 0.1 with 5% linear warm-up and 25% cosine ramp-down, Gaussian noise on
    w of 0.05·w_std decaying quadratically to 0 over the first 75% of the steps;
    loss = 0.1·MSE + LPIPS(VGG) + ||w − w_avg||² (mean square).
  * PTI: the generator's weights tuned around the found pivot, Adam lr 3e-4, loss 0.1·MSE + LPIPS.
Noise inputs are 'const' (the stored per-layer noise), so the result is deterministic given the
seed (the seed drives w_avg sampling, w noise and the stratified ray samples).
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .perceptual import VGG16Perceptual
from .triplane import TriPlaneGenerator

ProgressFn = Callable[[int, int, Optional[torch.Tensor]], None]
InterruptFn = Callable[[], Optional[bool]]


@dataclass
class InversionConfig:
    w_steps: int = 500
    pti_steps: int = 500
    w_lr: float = 0.1
    lr_rampup: float = 0.05
    lr_rampdown: float = 0.25
    noise_factor: float = 0.05
    noise_ramp: float = 0.75
    w_avg_samples: int = 10000
    mse_weight: float = 0.1
    w_reg_weight: float = 1.0
    pti_lr: float = 3e-4
    neural_rendering_resolution: Optional[int] = None  # None: the checkpoint's own
    seed: int = 0
    preview_every: int = 25
    perceptual_size: int = 256  # images are area-downsampled to this before VGG (projector: 256)
    camera_adaptation: bool = True  # add t_mapping(mean z, c) to the label's translation (ID-Sculpt's projector)
    ray_start: Optional[float] = 2.35  # near plane during inversion (ID-Sculpt's projector; the release trains with 2.25)


@dataclass
class InversionResult:
    ws: torch.Tensor  # [1,num_ws,w_dim] pivot
    generator: TriPlaneGenerator  # PTI-tuned copy (eval, no grad)
    w_losses: list[float] = field(default_factory=list)
    pti_losses: list[float] = field(default_factory=list)
    w_avg: Optional[torch.Tensor] = None
    w_std: float = 0.0
    label: Optional[torch.Tensor] = None  # [1,25] the camera actually used (after self-adaptation)


def _check_interrupt(interrupt: Optional[InterruptFn]) -> None:
    if interrupt is not None and interrupt():
        raise InterruptedError("PanoHead inversion interrupted")


def _to_preview(img: torch.Tensor) -> torch.Tensor:
    """[1,3,H,W] in [-1,1] -> [H,W,3] in [0,1] (ComfyUI IMAGE layout, one frame)."""
    return ((img[0].detach().float().permute(1, 2, 0) + 1) / 2).clamp(0, 1).cpu()


def frontal_label(device: torch.device | str = "cpu") -> torch.Tensor:
    """PanoHead's frontal conditioning label (radius 2.7 on +z, focal 4.2647) [1,25]."""
    from ..camera import eg3d_frontal_label

    return eg3d_frontal_label().to(device)


@torch.no_grad()
def w_statistics(G: TriPlaneGenerator, n_samples: int, seed: int = 0, c: Optional[torch.Tensor] = None,
                 chunk: int = 2048, return_z_mean: bool = False):
    """Mean w [1,1,w_dim] and scalar std of the mapping at the frontal camera (projector's recipe);
    with ``return_z_mean`` also the mean of the z samples [1,z_dim] (the projector feeds it to the
    camera self-adaptation)."""
    dev = next(G.parameters()).device
    c = frontal_label(dev) if c is None else c.to(dev)
    gen = torch.Generator(device="cpu").manual_seed(seed + 123)
    ws = []
    z_sum = torch.zeros(1, G.z_dim, dtype=torch.float64)
    for i in range(0, n_samples, chunk):
        k = min(chunk, n_samples - i)
        z = torch.randn(k, G.z_dim, generator=gen)
        z_sum += z.double().sum(0, keepdim=True)
        ws.append(G.mapping(z.to(dev), c.expand(k, -1))[:, :1].float())
    w = torch.cat(ws)
    w_avg = w.mean(0, keepdim=True)
    w_std = float(((w - w_avg).square().sum() / n_samples).sqrt())
    if return_z_mean:
        return w_avg, w_std, (z_sum / n_samples).float().to(dev)
    return w_avg, w_std


@torch.no_grad()
def adapt_camera(G: TriPlaneGenerator, c: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """PanoHead's camera self-adaptation for inversion: label + t_mapping(z, c) on the translation."""
    c_new, _ = G.apply_delta_c(z, c)
    return c_new


def _render(G: TriPlaneGenerator, ws: torch.Tensor, c: torch.Tensor, res: Optional[int], seed: int, step: int) -> torch.Tensor:
    gen = torch.Generator(device=ws.device).manual_seed(seed * 100003 + step)
    return G.synthesis(ws, c, neural_rendering_resolution=res, noise_mode="const", generator=gen)["image"]


def _prepare_target(target: torch.Tensor, G: TriPlaneGenerator) -> torch.Tensor:
    """IMAGE [1,H,W,3] or [H,W,3] in 0..1 -> [1,3,R,R] in [-1,1] at the generator's resolution."""
    if target.dim() == 3:
        target = target[None]
    if target.dim() != 4 or target.shape[-1] != 3:
        raise ValueError(f"target must be an RGB image [1,H,W,3], got {tuple(target.shape)}")
    t = target[:1].permute(0, 3, 1, 2).float()
    if t.shape[-1] != G.img_resolution or t.shape[-2] != G.img_resolution:
        t = F.interpolate(t, size=(G.img_resolution, G.img_resolution), mode="bilinear", align_corners=False, antialias=True)
    return (t * 2 - 1).clamp(-1, 1)


def project_w(G: TriPlaneGenerator, target: torch.Tensor, c: torch.Tensor, perceptual: VGG16Perceptual,
              cfg: InversionConfig = InversionConfig(), progress: Optional[ProgressFn] = None,
              interrupt: Optional[InterruptFn] = None, step_offset: int = 0, total_steps: Optional[int] = None
              ) -> tuple[torch.Tensor, list[float], torch.Tensor, float]:
    """Optimise a W+ code so the generator renders ``target`` [1,3,R,R] (in [-1,1]) from label c."""
    dev = target.device
    G = G.eval().requires_grad_(False)
    w_avg, w_std = w_statistics(G, cfg.w_avg_samples, cfg.seed)
    w_avg = w_avg.repeat(1, G.num_ws, 1)
    w_opt = w_avg.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=cfg.w_lr)
    with torch.no_grad():
        target_taps = perceptual.taps(target, cfg.perceptual_size)
    noise_gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 7)
    losses: list[float] = []
    total = total_steps or cfg.w_steps
    for step in range(cfg.w_steps):
        _check_interrupt(interrupt)
        t = step / cfg.w_steps
        noise_scale = w_std * cfg.noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp) ** 2
        ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown)
        ramp = (0.5 - 0.5 * math.cos(ramp * math.pi)) * min(1.0, t / cfg.lr_rampup) if cfg.lr_rampup > 0 else 0.5 - 0.5 * math.cos(ramp * math.pi)
        for g in opt.param_groups:
            g["lr"] = cfg.w_lr * ramp
        ws = w_opt + torch.randn(w_opt.shape, generator=noise_gen).to(dev) * noise_scale
        synth = _render(G, ws, c, cfg.neural_rendering_resolution, cfg.seed, step)
        perc = perceptual.distance(target_taps, perceptual.taps(synth, cfg.perceptual_size)).mean()
        mse = (target - synth).square().mean()
        loss = cfg.mse_weight * mse + perc + cfg.w_reg_weight * (w_opt - w_avg).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            prev = _to_preview(synth) if (step % max(cfg.preview_every, 1) == 0 or step == cfg.w_steps - 1) else None
            progress(step_offset + step + 1, total, prev)
    return w_opt.detach(), losses, w_avg[:, :1].detach(), w_std


def pivotal_tuning(G: TriPlaneGenerator, target: torch.Tensor, ws: torch.Tensor, c: torch.Tensor, perceptual: VGG16Perceptual,
                   cfg: InversionConfig = InversionConfig(), progress: Optional[ProgressFn] = None,
                   interrupt: Optional[InterruptFn] = None, step_offset: int = 0, total_steps: Optional[int] = None
                   ) -> tuple[TriPlaneGenerator, list[float]]:
    """Tune a copy of the generator's weights so the pivot ``ws`` renders ``target`` (PTI)."""
    Gt = copy.deepcopy(G).train().requires_grad_(True)
    opt = torch.optim.Adam(Gt.parameters(), betas=(0.9, 0.999), lr=cfg.pti_lr)
    with torch.no_grad():
        target_taps = perceptual.taps(target, cfg.perceptual_size)
    losses: list[float] = []
    total = total_steps or cfg.pti_steps
    for step in range(cfg.pti_steps):
        _check_interrupt(interrupt)
        synth = _render(Gt, ws, c, cfg.neural_rendering_resolution, cfg.seed + 1, step)
        loss = cfg.mse_weight * (target - synth).square().mean() + perceptual.distance(target_taps, perceptual.taps(synth, cfg.perceptual_size)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        if progress is not None:
            prev = _to_preview(synth) if (step % max(cfg.preview_every, 1) == 0 or step == cfg.pti_steps - 1) else None
            progress(step_offset + step + 1, total, prev)
    return Gt.eval().requires_grad_(False), losses


def invert(G: TriPlaneGenerator, image: torch.Tensor, label: torch.Tensor, perceptual: VGG16Perceptual,
           cfg: InversionConfig = InversionConfig(), progress: Optional[ProgressFn] = None,
           interrupt: Optional[InterruptFn] = None) -> InversionResult:
    """Full stage-1 inversion of an aligned portrait ``image`` [1,H,W,3] (0..1) seen from ``label`` [1,25].

    Seeded by ``cfg.seed``: the volume renderer's stratified samples draw from torch's global RNG, so
    it is seeded inside a forked RNG state and the caller's global RNG is left as it was."""
    dev = next(G.parameters()).device
    with torch.random.fork_rng(devices=[dev] if dev.type == "cuda" else []):
        torch.manual_seed(cfg.seed)
        return _invert(G, dev, image, label, perceptual, cfg, progress, interrupt)


def _invert(G: TriPlaneGenerator, dev: torch.device, image: torch.Tensor, label: torch.Tensor, perceptual: VGG16Perceptual,
            cfg: InversionConfig, progress: Optional[ProgressFn], interrupt: Optional[InterruptFn]) -> InversionResult:
    perceptual = perceptual.to(dev)
    target = _prepare_target(image.to(dev), G)
    c = torch.as_tensor(label, dtype=torch.float32, device=dev).reshape(1, 25)
    total = cfg.w_steps + cfg.pti_steps
    if cfg.camera_adaptation:
        _, _, z_mean = w_statistics(G, cfg.w_avg_samples, cfg.seed, return_z_mean=True)
        c = adapt_camera(G, c, z_mean)
    old_start = G.rendering_kwargs.get("ray_start")
    if cfg.ray_start is not None:
        G.rendering_kwargs["ray_start"] = cfg.ray_start
    try:
        with torch.enable_grad():
            ws, w_losses, w_avg, w_std = project_w(G, target, c, perceptual, cfg, progress, interrupt, 0, total)
            if not torch.isfinite(ws).all():
                raise RuntimeError("W+ projection diverged (non-finite latent); lower the learning rate")
            Gt, pti_losses = pivotal_tuning(G, target, ws, c, perceptual, cfg, progress, interrupt, cfg.w_steps, total)
    finally:
        G.rendering_kwargs["ray_start"] = old_start
    Gt.rendering_kwargs["ray_start"] = old_start
    return InversionResult(ws=ws, generator=Gt, w_losses=w_losses, pti_losses=pti_losses, w_avg=w_avg, w_std=w_std,
                           label=c.detach())
