"""ID-aware Score Distillation (ISD) against an abstract noise predictor.

Score distillation turns a 2D diffusion prior into a loss on a differentiable render. For a rendered
image I (here the view-space normal map of the sculpted head) with latents z = E(I) (a sample of the
VAE posterior, as the authors' ``posterior.sample()``):

    t ~ U[t_min, t_max]                    (default U[20, 500] of SD1.5's 1000 training steps)
    eps ~ N(0, 1),  z_t = z + sigma_t * eps            (sigma space, as ComfyUI samples; see below)
    eps_hat = eps_u + s * (eps_c - eps_u)              (CFG, s = 50 for ISD)
    grad_z  = w(t) * (eps_hat - eps_est),   w(t) = 1 - alphabar_t
    loss    = 0.5 * || z - stopgrad(z - grad_z) ||^2 / B      => d loss / d z = grad_z / B

eps_est, the "estimator" (``ISDConfig.estimator``):

* "authors" (default): the conditional prediction of the same UNet with the positive prompt and ID
  OFF. This is what the authors' code runs: its config sets ``use_sds: True``, which calls
  ``compute_grad_vsd`` (threestudio/models/guidance/ip_controlnet.py), a VSD-style gradient whose
  estimator is ``unet_lora`` at guidance scale 1 -- the plain (non-ID) UNet with zero-initialised LoRA
  layers that no optimiser ever sees, i.e. the base UNet's conditional branch. So for views without ID
  (|azimuth| >= 70) eps_est = eps_c and grad = (s - 1) * w * (eps_c - eps_u): no noise residual; for
  views with ID one more UNet row (positive prompt, ID off) is needed. (Exactly, their base UNet at
  |azimuth| < 70 receives the 16 ID tokens appended to the text context and attends them through its
  plain text keys/values; here that row is the positive prompt alone: see docs/GUIDANCE.md.)
* "sds": eps_est = eps, the injected noise (plain SDS, DreamFusion's form).

The gradient reaches the render through the (differentiable) encoder E. "ID-aware": both CFG
branches carry IP-Adapter FaceID tokens (the subject's on the positive, the zero-identity ones on the
negative), but only for views whose |azimuth| < 70 degrees (a face seen from behind should not be pulled toward a frontal identity),
and a landmark ControlNet conditions each view on the landmarks rendered from that camera. Both are
the noise predictor's business: this module only decides *which* views get ID (``ViewBatch``).

Sigma space (ComfyUI's EPS parameterisation) versus DDPM's:
    alphabar_t = prod(1 - beta),  sigma_t = sqrt((1 - alphabar_t) / alphabar_t)
    DDPM:  x_t = sqrt(alphabar_t) z + sqrt(1 - alphabar_t) eps  =  sqrt(alphabar_t) * (z + sigma_t eps)
so the same eps is predicted in both; w(t) = 1 - alphabar_t = sigma_t^2 / (1 + sigma_t^2).
A predictor working in DDPM space scales its input by sqrt(alphabar_t) = 1 / sqrt(1 + sigma_t^2).

Nothing here imports ComfyUI: nodes/engines/noise_predictor.py implements ``NoisePredictor`` with a ComfyUI
MODEL / CONDITIONING / VAE / CONTROL_NET, tests implement it with toy torch models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

from .camera import Cameras
from .speed.transfer import to_device


# ----------------------------------------------------------------------------- schedule
def sd15_alphas_cumprod(num_steps: int = 1000, beta_start: float = 0.00085, beta_end: float = 0.012) -> torch.Tensor:
    """SD1.5's "scaled linear" training schedule alphabar_t, t = 0..num_steps-1 (float64)."""
    betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_steps, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


def sigma_from_alphas_cumprod(alphas_cumprod: torch.Tensor) -> torch.Tensor:
    return ((1.0 - alphas_cumprod) / alphas_cumprod).sqrt()


def alphas_cumprod_from_sigma(sigma: torch.Tensor) -> torch.Tensor:
    return 1.0 / (1.0 + sigma**2)


def isd_weight(sigma: torch.Tensor) -> torch.Tensor:
    """w(t) = 1 - alphabar_t written with sigma_t (the weighting ID-Sculpt's code uses)."""
    return sigma**2 / (1.0 + sigma**2)


def azimuth_of(cameras: Cameras) -> torch.Tensor:
    """Orbit azimuth [B] in degrees of each camera position (0 = front +z, +90 = +x), see core.camera."""
    p = cameras.position
    return torch.rad2deg(torch.atan2(p[:, 0], p[:, 2]))


def elevation_of(cameras: Cameras) -> torch.Tensor:
    p = cameras.position
    return torch.rad2deg(torch.atan2(p[:, 1], p[:, [0, 2]].norm(dim=-1)))


#: The four prompt directions of threestudio's view-dependent prompting (ID-Sculpt's prompt processor).
VIEW_DIRECTIONS = ("front", "side", "back", "overhead")
#: Thresholds (degrees) of the authors' prompt processor for the geometry stage (ISD): front |az| < 45,
#: back |az| > 180 - 60 = 120, overhead elevation > 60 (``prompt_processors/base.py`` defaults).
ISD_VIEW_THRESHOLDS = {"front": 45.0, "back": 60.0, "overhead": 60.0}
#: The texture stage's thresholds (its configs set front and back to 45): back |az| > 135.
TEXTURE_VIEW_THRESHOLDS = {"front": 45.0, "back": 45.0, "overhead": 60.0}


def view_direction(azimuth: torch.Tensor, elevation: torch.Tensor, front: float = 45.0, back: float = 45.0,
                   overhead: float = 60.0) -> list[str]:
    """View-dependent prompt key per view: "front" | "side" | "back" | "overhead".

    threestudio's rule (which ID-Sculpt's prompt processor inherits): every view starts as "side",
    then front (|azimuth| < ``front``), back (|azimuth| > 180 - ``back``) and overhead (elevation >
    ``overhead``) override in that order, so overhead wins. Azimuth 0 = the face.
    """
    az = (torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1) + 180.0) % 360.0 - 180.0
    el = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1).expand_as(az)
    out = []
    for a, e in zip(az.tolist(), el.tolist()):
        if e > overhead:
            out.append("overhead")
        elif abs(a) > 180.0 - back:
            out.append("back")
        elif abs(a) < front:
            out.append("front")
        else:
            out.append("side")
    return out


# ----------------------------------------------------------------------------- predictor protocol
@dataclass
class ViewBatch:
    """Per-view information handed to the noise predictor with each batch of noisy latents.

    cameras: the B cameras of the renders (None when the caller has none, e.g. 2D tests).
    azimuth / elevation: [B] degrees. id_enabled: [B] bool, ID tokens on for that view.
    t: [B] integer training timestep, sigma: [B] the matching sigma (both given for convenience).
    cond_no_id: [B] bool or None: the views for which the predictor must also return the positive
        prompt's prediction with ID off (``NoisePrediction.cond_no_id``); None = no view. ISD asks for
        it on the views that have ID on (for the others ``cond`` already is that prediction).
    """

    azimuth: torch.Tensor
    elevation: torch.Tensor
    id_enabled: torch.Tensor
    t: torch.Tensor
    sigma: torch.Tensor
    cameras: Cameras | None = None
    cond_no_id: torch.Tensor | None = None

    def wants_cond_no_id(self) -> list[bool]:
        """``cond_no_id`` as a Python list of B bools (all False when None)."""
        if self.cond_no_id is None:
            return [False] * len(self.azimuth)
        return [bool(v) for v in torch.as_tensor(self.cond_no_id).reshape(-1).tolist()]


@dataclass
class NoisePrediction:
    """eps predicted for the positive (cond) and negative (uncond) prompts, each [B,C,h,w].

    cond_no_id: [B,C,h,w] or None: eps of the positive prompt with the ID tokens off, filled for the
    views ``ViewBatch.cond_no_id`` asked for (other rows are not read; None when no view asked).
    """

    cond: torch.Tensor
    uncond: torch.Tensor
    cond_no_id: torch.Tensor | None = None


@runtime_checkable
class NoisePredictor(Protocol):
    """What ISD needs from a diffusion model.

    alphas_cumprod: [T] training schedule (defines t -> sigma).
    encode(images [B,H,W,3] in 0..1) -> latents [B,C,h,w], differentiable w.r.t. the images, already
        scaled as the model expects (SD1.5: a VAE posterior sample (or its mean) x 0.18215).
    predict_noise(x [B,C,h,w] = latents + sigma*eps, sigma [B], views) -> NoisePrediction, no grad;
        with ``cond_no_id`` filled for the views ``views.cond_no_id`` marks.
    """

    alphas_cumprod: torch.Tensor

    def encode(self, images: torch.Tensor) -> torch.Tensor: ...

    def predict_noise(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction: ...


# ----------------------------------------------------------------------------- ISD
#: "authors": eps_est = positive prompt with ID off (their compute_grad_vsd); "sds": eps_est = injected noise.
ISD_ESTIMATORS = ("authors", "sds")


def isd_gradient(pred: NoisePrediction, noise: torch.Tensor, weight: torch.Tensor, cfg: float, estimator: str,
                 cond_no_id: torch.Tensor | None = None) -> torch.Tensor:
    """grad_z = w * (eps_hat - eps_est), eps_hat = eps_u + cfg * (eps_c - eps_u) (module doc).

    Written as w * ((eps_c - eps_est) + (cfg - 1) * (eps_c - eps_u)), the same sum without forming the
    cfg-times-larger eps_hat first: for a view whose eps_est is eps_c itself the first term is exactly
    zero. cond_no_id: [B] bool, the views whose eps_est is ``pred.cond_no_id`` ("authors"); the others
    use ``pred.cond`` (ID off there already). weight: [B,1,1,1].
    """
    cond, uncond = pred.cond.float(), pred.uncond.float()
    if estimator == "sds":
        est = noise
    elif estimator == "authors":
        est = cond
        if cond_no_id is not None and bool(cond_no_id.any()):
            if pred.cond_no_id is None:
                raise ValueError("the noise predictor returned no cond_no_id prediction (positive prompt, ID off) "
                                 "although ISD asked for it: the 'authors' estimator needs it")
            sel = to_device(cond_no_id.reshape(-1, 1, 1, 1), cond.device)
            est = torch.where(sel, pred.cond_no_id.float(), cond)
    else:
        raise ValueError(f"ISD estimator must be one of {ISD_ESTIMATORS}, got {estimator!r}")
    return weight * ((cond - est) + (cfg - 1.0) * (cond - uncond))


def vae_posterior_latents(moments: torch.Tensor, sample: bool = True, generator: torch.Generator | None = None) -> torch.Tensor:
    """Latents [B,C,h,w] from a VAE's diagonal-Gaussian moments [B,2C,h,w] (mean, log-variance).

    sample=True: mean + std * n with n ~ N(0, 1) drawn from ``generator`` (on the CPU, so a seed
    reproduces it on any device), std = exp(logvar / 2) with logvar clamped to [-30, 20] as in
    diffusers' and ComfyUI's DiagonalGaussianDistribution. Reparameterised: the gradient reaches the
    image through both the mean and the log-variance. This is the authors' ``posterior.sample()``.
    sample=False: the mean (what ComfyUI's VAE encode returns).
    """
    if moments.dim() != 4 or moments.shape[1] % 2:
        raise ValueError(f"VAE posterior moments must be [B,2C,h,w], got shape {tuple(moments.shape)}")
    mean, logvar = moments.float().chunk(2, dim=1)
    if not sample:
        return mean
    std = torch.exp(0.5 * logvar.clamp(-30.0, 20.0))
    n = to_device(torch.randn(mean.shape, generator=generator), mean.device)
    return mean + std * n


@dataclass
class ISDConfig:
    """ISD settings; defaults are ID-Sculpt's geometry stage (see docs/GUIDANCE.md).

    t_min, t_max: timestep range (of 1000). anneal: "none" | "linear" | "sqrt" -- lower t_max toward
    t_max_final over the run (needs step/total_steps); "sqrt" follows HiFA's sqrt schedule.
    cfg: classifier-free guidance scale. grad_clip: clamp |grad_z| (None = off).
    id_azimuth_limit: ID tokens only for |azimuth| < this (degrees); None = ID on every view.
    estimator: what the CFG prediction is compared with (module doc): "authors" = the positive
        prompt's prediction with ID off (the authors' executed gradient), "sds" = the injected noise.
    """

    t_min: int = 20
    t_max: int = 500
    anneal: str = "none"
    t_max_final: int = 200
    cfg: float = 50.0
    grad_clip: float | None = None
    id_azimuth_limit: float | None = 70.0
    loss_weight: float = 1.0
    estimator: str = "authors"

    def __post_init__(self) -> None:
        if not (0 <= self.t_min <= self.t_max):
            raise ValueError(f"ISD timestep range needs 0 <= t_min <= t_max, got [{self.t_min}, {self.t_max}]")
        if self.anneal not in ("none", "linear", "sqrt"):
            raise ValueError(f"ISD anneal must be 'none', 'linear' or 'sqrt', got {self.anneal!r}")
        if self.estimator not in ISD_ESTIMATORS:
            raise ValueError(f"ISD estimator must be one of {ISD_ESTIMATORS}, got {self.estimator!r}")


@dataclass
class ISDStats:
    """What the last ISD call drew and produced (tensors: reading them syncs with the GPU)."""

    t: torch.Tensor
    sigma: torch.Tensor
    id_enabled: torch.Tensor
    grad_norm: torch.Tensor
    nonfinite: torch.Tensor
    extra: dict[str, Any] = field(default_factory=dict)


class ISDGuidance:
    """ID-aware score distillation: ``guidance(images, cameras) -> loss`` (the sculpt stage's Guidance).

    images: [B,H,W,3] in 0..1 with grad (row 0 = top, ComfyUI IMAGE layout), e.g. the normal image
        (normal_view + 1) / 2 with background (0.5, 0.5, 1). cameras: core.camera.Cameras of the B
        views (azimuths are taken from them unless given). Several views per step = B > 1.
    Returns a scalar loss whose gradient w.r.t. the images is the ISD gradient (see module doc);
    ``last_stats`` holds the sampled timesteps, the ID mask and the gradient norm of the last call.
    """

    def __init__(self, predictor: NoisePredictor, config: ISDConfig | None = None, generator: torch.Generator | None = None):
        self.predictor = predictor
        self.config = config or ISDConfig()
        self.generator = generator
        ac = torch.as_tensor(predictor.alphas_cumprod, dtype=torch.float64).flatten()
        if ac.numel() < 2 or not bool(((ac > 0) & (ac < 1)).all()):
            raise ValueError("NoisePredictor.alphas_cumprod must be a [T] schedule with values in (0, 1)")
        if self.config.t_max >= ac.numel():
            raise ValueError(f"ISD t_max={self.config.t_max} is beyond the model's {ac.numel()} training steps")
        self.alphas_cumprod = ac
        self.sigmas = sigma_from_alphas_cumprod(ac)
        self.last_stats: ISDStats | None = None

    # -- session ----------------------------------------------------------------------------
    def __enter__(self) -> "ISDGuidance":
        """Hold the predictor's models loaded for a whole optimisation (``with guidance: ...``).

        Predictors with an ``open()``/``close()`` pair (the ComfyUI one: model loading, patcher
        pre_run/cleanup) use it; a predictor without one needs nothing. Calling the guidance outside a
        ``with`` block still works: such predictors open themselves per call (slower).
        """
        if hasattr(self.predictor, "open"):
            self.predictor.open()
        return self

    def __exit__(self, *exc: object) -> None:
        if hasattr(self.predictor, "close"):
            self.predictor.close()

    def prefetch(self, cameras: Cameras) -> None:
        """The sculpt's early notice of this step's cameras: passed on to predictors that prepare per-view
        inputs from the cameras alone (the landmark hints), so that work overlaps the render."""
        prefetch = getattr(self.predictor, "prefetch", None)
        if prefetch is not None:
            prefetch(cameras)

    # -- timesteps --------------------------------------------------------------------------
    def t_range(self, step: int | None = None, total_steps: int | None = None) -> tuple[int, int]:
        c = self.config
        if c.anneal == "none" or step is None or not total_steps:
            return c.t_min, c.t_max
        r = min(max(step / max(total_steps, 1), 0.0), 1.0)
        if c.anneal == "sqrt":
            r = math.sqrt(r)
        hi = round(c.t_max + (c.t_max_final - c.t_max) * r)
        return c.t_min, max(c.t_min, hi)

    def sample_t(self, batch: int, step: int | None = None, total_steps: int | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
        lo, hi = self.t_range(step, total_steps)
        return torch.randint(lo, hi + 1, (batch,), generator=self.generator).to(device)

    def id_mask(self, azimuth: torch.Tensor) -> torch.Tensor:
        lim = self.config.id_azimuth_limit
        if lim is None:
            return torch.ones_like(azimuth, dtype=torch.bool)
        az = (azimuth + 180.0) % 360.0 - 180.0  # wrap to [-180, 180)
        return az.abs() < lim

    # -- the step -----------------------------------------------------------------------------
    def __call__(
        self,
        images: torch.Tensor,
        cameras: Cameras | None = None,
        azimuth: torch.Tensor | None = None,
        elevation: torch.Tensor | None = None,
        step: int | None = None,
        total_steps: int | None = None,
    ) -> torch.Tensor:
        if images.dim() != 4 or images.shape[-1] != 3:
            raise ValueError(f"ISD expects images [B,H,W,3] in 0..1, got shape {tuple(images.shape)}")
        b = images.shape[0]
        if azimuth is None:
            azimuth = azimuth_of(cameras) if cameras is not None else torch.zeros(b)
        if elevation is None:
            elevation = elevation_of(cameras) if cameras is not None else torch.zeros(b)
        azimuth = torch.as_tensor(azimuth, dtype=torch.float32).reshape(-1).expand(b).cpu()
        elevation = torch.as_tensor(elevation, dtype=torch.float32).reshape(-1).expand(b).cpu()

        latents = self.predictor.encode(images)
        dev = latents.device
        t = self.sample_t(b, step, total_steps)
        sigma64 = self.sigmas[t]
        sigma = to_device(sigma64, dev, torch.float32)  # (no host sync: the VAE encode is still queued)
        id_enabled = self.id_mask(azimuth)
        # the "authors" estimator needs the positive prompt with ID off; views without ID have it in cond
        cond_no_id = id_enabled.clone() if self.config.estimator == "authors" else None
        views = ViewBatch(azimuth, elevation, id_enabled, t, sigma, cameras, cond_no_id)

        with torch.no_grad():
            z = latents.detach().float()
            noise = to_device(torch.randn(z.shape, generator=self.generator), dev)
            x = z + sigma.view(-1, 1, 1, 1) * noise
            pred = self.predictor.predict_noise(x, sigma, views)
            w = to_device(isd_weight(sigma64), dev, torch.float32).view(-1, 1, 1, 1)
            grad = isd_gradient(pred, noise, w, self.config.cfg, self.config.estimator, cond_no_id)
            # a NaN/inf here would poison the whole mesh: drop those entries (no host sync: counts stay tensors)
            bad = ~torch.isfinite(grad)
            nonfinite = bad.sum()
            grad = torch.where(bad, torch.zeros_like(grad), grad)
            if self.config.grad_clip is not None:
                grad = grad.clamp(-self.config.grad_clip, self.config.grad_clip)
            target = (z - grad).to(latents.dtype)
        loss = 0.5 * ((latents - target) ** 2).sum() / b
        extra = {"estimator": self.config.estimator,
                 "cond_no_id_rows": 0 if cond_no_id is None else int(cond_no_id.sum())}
        self.last_stats = ISDStats(t, sigma64.float(), views.id_enabled, grad.norm(), nonfinite, extra)
        return self.config.loss_weight * loss

