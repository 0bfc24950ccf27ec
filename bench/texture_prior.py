"""A small diffusion prior of a known textured head and the SDEdit restorer of refinement built on it
(issue 22: evidence for the refinement's sampler step count).

The texture oracles (tests/texture_oracle.py) return the true render whatever the sampler does, so they
cannot tell 20 DDIM steps from 10. This prior can: the small conditional eps-UNet of the trained-prior
evidence (``prior_model.PriorUNet``) is trained on renders of the known textured head
(``texture_oracle.known_head`` with ``detailed_color``) at refinement's own random cameras, white
background, as pixel-space "latents" (``prior_data.encode_images``: area-downsampled by ``factor``, in
[-1, 1]). Labels: ID for every render, NULL by label dropout (the unconditional row of CFG).

``TrainedTextureDenoiser`` is a refinement ``Denoiser`` (core/texture/refine.py) that restores views the
way the authors' ``edit_latents`` does (threestudio/models/guidance/ip_controlnet_inpaint.py): the
scheduler's ``num_train_timesteps`` set to the drawn t, ``set_timesteps(steps)`` with diffusers' DDIM
"leading" spacing and SD1.5's ``steps_offset`` 1 (``sdedit_timesteps``), noise added at t, ``steps``
DDIM (eta 0) steps with CFG, each stepping ``t // steps`` timesteps down (the last to alphabar_0, SD1.5's
``set_alpha_to_one`` False). The "decode" is a bilinear upsampling back to the render size.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from prior_data import ID, NULL, PriorDataset, encode_images  # noqa: E402  (loads the pack as ``idsculpt``)
from prior_model import PriorUNet  # noqa: E402

from idsculpt.core.camera import Cameras  # noqa: E402
from idsculpt.core.guidance import sd15_alphas_cumprod  # noqa: E402
from idsculpt.core.mesh import HeadMesh  # noqa: E402
from idsculpt.core.schedules import PAPER  # noqa: E402
from idsculpt.core.texture import RefineConfig, render_textured  # noqa: E402
from idsculpt.core.texture.refine import RefineView, sample_refine_camera  # noqa: E402

#: the authors' texture guidance runs 20 DDIM steps per SDEdit (``diffusion_steps: 20``; the paper schedule's)
PAPER_SAMPLER_STEPS = PAPER.refine_sampler_steps


def sdedit_timesteps(t: int, steps: int) -> list[int]:
    """The timesteps the authors' SDEdit evaluates, in order: diffusers' DDIM ``set_timesteps(steps)`` after
    ``num_train_timesteps = t`` ("leading" spacing, ``steps_offset`` 1): i·(t // steps) + 1 for i = steps−1 … 0."""
    if steps < 1 or t < steps:
        raise ValueError(f"SDEdit from t = {t} cannot take {steps} DDIM steps (t // steps must be ≥ 1)")
    ratio = t // steps
    return [i * ratio + 1 for i in reversed(range(steps))]


def sdedit_ddim(eps_fn, x0: torch.Tensor, t: int, steps: int, noise: torch.Tensor,
                alphas_cumprod: torch.Tensor | None = None) -> torch.Tensor:
    """The authors' SDEdit of clean latents ``x0`` [B,C,h,w]: x_t = √ᾱ_t·x0 + √(1−ᾱ_t)·noise, then ``steps``
    DDIM (eta 0) steps at ``sdedit_timesteps(t, steps)``; each step goes ``t // steps`` timesteps down, the
    last to ᾱ_0. ``eps_fn(x, timestep)`` → the (guided) noise prediction [B,C,h,w]. Returns the final latents."""
    ac = (sd15_alphas_cumprod() if alphas_cumprod is None else alphas_cumprod).to(x0.device, torch.float32)
    ratio = t // steps
    x = ac[t].sqrt() * x0 + (1 - ac[t]).sqrt() * noise
    for ts in sdedit_timesteps(t, steps):
        a, a_prev = ac[ts], ac[max(ts - ratio, 0)]  # prev < 0 -> alphabar_0 (set_alpha_to_one False)
        eps = eps_fn(x, ts)
        pred_x0 = (x - (1 - a).sqrt() * eps) / a.sqrt()
        x = a_prev.sqrt() * pred_x0 + (1 - a_prev).sqrt() * eps
    return x


class TrainedTextureDenoiser:
    """Refinement ``Denoiser`` over a trained ``PriorUNet`` of the known head: ``steps`` DDIM steps from t,
    CFG ``cfg`` (cond = label ID, uncond = NULL), one batched forward of 2K rows per DDIM step. Noise: one
    generator seeded once, drawn per call (a run of the same views and t is reproducible)."""

    def __init__(self, model: PriorUNet, factor: int, steps: int = PAPER_SAMPLER_STEPS, cfg: float = 10.0, seed: int = 0,
                 bf16: bool = True) -> None:
        self.model = model.eval()  # restore runs under no_grad
        self.device = next(model.parameters()).device
        self.factor, self.steps, self.cfg = int(factor), int(steps), float(cfg)
        self.bf16 = bf16 and self.device.type == "cuda"
        self.generator = torch.Generator(device=self.device).manual_seed(seed)
        self.alphas_cumprod = sd15_alphas_cumprod().to(self.device, torch.float32)
        self.calls = 0  # denoise / denoise_batch calls (one sampler run each)
        self.model_calls = 0  # UNet forwards (steps per call)

    @torch.no_grad()
    def restore(self, images: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor, t: int,
                noise: torch.Tensor | None = None) -> torch.Tensor:
        """Targets [K,H,W,3] in 0..1 of renders ``images`` [K,H,W,3] from noise level t (``noise``: the
        latents' noise, drawn from the generator when None)."""
        h, w = images.shape[1:3]
        lat = self.restore_latents(encode_images(images.to(self.device), self.factor), azimuth, elevation, t, noise)
        img = F.interpolate(lat, size=(h, w), mode="bilinear", align_corners=False) if self.factor > 1 else lat
        return ((img + 1) / 2).clamp(0, 1).permute(0, 2, 3, 1).to(images.dtype)

    @torch.no_grad()
    def restore_latents(self, x0: torch.Tensor, azimuth: torch.Tensor, elevation: torch.Tensor, t: int,
                        noise: torch.Tensor | None = None) -> torch.Tensor:
        """``restore`` in the prior's latent space: latents [K,3,h,w] in [-1,1] -> the SDEdit's final latents."""
        k = x0.shape[0]
        if noise is None:
            noise = torch.randn(x0.shape, generator=self.generator, device=self.device)
        az = azimuth.to(self.device, torch.float32).reshape(k)
        el = elevation.to(self.device, torch.float32).reshape(k)
        labels = torch.cat([torch.full((k,), ID, device=self.device), torch.full((k,), NULL, device=self.device)])

        def eps_fn(x: torch.Tensor, ts: int) -> torch.Tensor:
            tt = torch.full((2 * k,), ts, device=self.device, dtype=torch.long)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                e = self.model(torch.cat([x, x]), tt, labels, torch.cat([az, az]), torch.cat([el, el])).float()
            self.model_calls += 1
            cond, uncond = e[:k], e[k:]
            return uncond + self.cfg * (cond - uncond)

        return sdedit_ddim(eps_fn, x0, int(t), self.steps, noise, self.alphas_cumprod)

    def denoise_batch(self, images: torch.Tensor, normal_controls: torch.Tensor, views: list[RefineView], t: int) -> torch.Tensor:
        self.calls += 1
        az = torch.tensor([v.azimuth for v in views], dtype=torch.float32)
        el = torch.tensor([v.elevation for v in views], dtype=torch.float32)
        return self.restore(images, az, el, t)

    def denoise(self, image: torch.Tensor, normal_control: torch.Tensor, view: RefineView, t: int) -> torch.Tensor:
        return self.denoise_batch(image[None], normal_control[None], [view], t)[0]


def render_refine_views(gt: HeadMesh, n: int, resolution: int, generator: torch.Generator, backend=None,
                        batch: int = 16) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` renders [n,H,W,3] of the textured head ``gt`` at refinement's random cameras (RefineConfig's
    ranges, threestudio's elevation draw), white background, with their azimuths and elevations [n]."""
    cfg = RefineConfig(resolution=resolution)
    imgs, azs, els = [], [], []
    dev = gt.vertices.device
    with torch.no_grad():
        for i in range(0, n, batch):
            views = [sample_refine_camera(cfg, generator) for _ in range(min(batch, n - i))]
            cams = Cameras.cat([v.camera for v in views])
            out, _ = render_textured(gt, gt.texture, cams.to(dev), cfg.background, backend)
            imgs.append(out.color)
            azs += [v.azimuth for v in views]
            els += [v.elevation for v in views]
    return torch.cat(imgs), torch.tensor(azs, device=dev), torch.tensor(els, device=dev)


def texture_dataset(gt: HeadMesh, n_views: int, resolution: int, factor: int, seed: int = 0, backend=None) -> PriorDataset:
    """The prior's training set: ``n_views`` encoded renders of the known head, label ID."""
    imgs, az, el = render_refine_views(gt, n_views, resolution, torch.Generator().manual_seed(seed), backend)
    lat = encode_images(imgs, factor)
    return PriorDataset(lat, torch.full((len(lat),), ID, dtype=torch.long, device=lat.device), az, el)


__all__ = ["PAPER_SAMPLER_STEPS", "sdedit_timesteps", "sdedit_ddim", "TrainedTextureDenoiser", "render_refine_views",
           "texture_dataset"]
