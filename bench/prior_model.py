"""The small trained prior of issue 22's evidence 2: a conditional eps-prediction UNet on pixel-space
"latents", its training loop, and a ``NoisePredictor`` that drives the pack's real ISD with it.

Model. A compact UNet (about 3.8 M parameters at the default widths 32/64/128; GroupNorm, SiLU,
residual blocks with FiLM conditioning, one self-attention at the lowest resolution) predicting the
noise eps of x_t = sqrt(alphabar_t) x_0 + sqrt(1 - alphabar_t) eps on SD1.5's training schedule
(``core.guidance.sd15_alphas_cumprod``). Conditioning: the timestep (sinusoidal), a class label
(NULL = the negative/unconditional prompt, HEAD = the positive prompt with ID off, ID = the positive
prompt with the person's identity) and the camera's azimuth/elevation (as sin/cos). x_0 is a normal
render encoded as in ``prior_data.encode_images`` (area-downsampled by 8: 512 -> 64x64, in [-1, 1]).

Predictor. ``TrainedPriorPredictor`` maps the ISD's prompts onto the labels exactly as the real
predictor maps them onto the UNet's inputs: cond = ID for views with ID on (|azimuth| < 70) and HEAD
for views with ID off; uncond = NULL; cond_no_id (the "authors" estimator's row) = HEAD. All rows of
a call go through ONE batched forward (cond rows, uncond rows, then the asked cond_no_id rows).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from prior_data import HEAD, ID, NULL, PriorDataset, encode_images

from idsculpt.core.guidance import NoisePrediction, ViewBatch, sd15_alphas_cumprod, sigma_from_alphas_cumprod  # noqa: E402

NUM_LABELS = 3


# ----------------------------------------------------------------------------- network
def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal embedding [B, dim] of (float) timesteps t [B] (the DDPM/SD form)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    a = t.float()[:, None] * freqs[None]
    return torch.cat([a.cos(), a.sin()], dim=-1)


def camera_features(azimuth: torch.Tensor, elevation: torch.Tensor) -> torch.Tensor:
    """[B,4]: sin/cos of azimuth and elevation (continuous across the +-180 seam)."""
    az, el = torch.deg2rad(azimuth.float()), torch.deg2rad(elevation.float())
    return torch.stack([az.sin(), az.cos(), el.sin(), el.cos()], dim=-1)


def _norm(ch: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(min(groups, ch), ch)


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv twice; the embedding sets a per-channel scale and shift after the second norm."""

    def __init__(self, cin: int, cout: int, emb: int, groups: int):
        super().__init__()
        self.n1, self.c1 = _norm(cin, groups), nn.Conv2d(cin, cout, 3, padding=1)
        self.film = nn.Linear(emb, 2 * cout)
        self.n2, self.c2 = _norm(cout, groups), nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.c2.weight)
        nn.init.zeros_(self.c2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.c1(F.silu(self.n1(x)))
        scale, shift = self.film(e)[:, :, None, None].chunk(2, dim=1)
        h = self.n2(h) * (1 + scale) + shift
        return self.skip(x) + self.c2(F.silu(h))


class SelfAttention(nn.Module):
    def __init__(self, ch: int, groups: int, heads: int = 4):
        super().__init__()
        self.norm, self.heads = _norm(ch, groups), heads
        self.qkv, self.out = nn.Conv2d(ch, 3 * ch, 1), nn.Conv2d(ch, ch, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b, 3, self.heads, c // self.heads, h * w).transpose(-1, -2).unbind(1)
        a = F.scaled_dot_product_attention(q, k, v)  # [b, heads, hw, c/heads]
        return x + self.out(a.transpose(-1, -2).reshape(b, c, h, w))


@dataclass
class PriorConfig:
    """Network widths (one entry per resolution; each but the last halves the resolution)."""

    channels: tuple[int, ...] = (32, 64, 128)
    blocks: int = 2
    emb: int = 128
    groups: int = 8
    attention: bool = True


class PriorUNet(nn.Module):
    """eps(x_t, t, label, azimuth, elevation) for x_t [B,3,h,w] (h, w divisible by 2^(levels-1))."""

    def __init__(self, config: PriorConfig | None = None):
        super().__init__()
        self.config = c = config or PriorConfig()
        ch, e, g = list(c.channels), c.emb, c.groups
        self.t_dim = ch[0]
        self.t_mlp = nn.Sequential(nn.Linear(ch[0], e), nn.SiLU(), nn.Linear(e, e))
        self.label = nn.Embedding(NUM_LABELS, e)
        self.cam = nn.Sequential(nn.Linear(4, e), nn.SiLU(), nn.Linear(e, e))
        self.conv_in = nn.Conv2d(3, ch[0], 3, padding=1)
        self.down = nn.ModuleList()
        skips, cur = [ch[0]], ch[0]
        for i, cout in enumerate(ch):
            for _ in range(c.blocks):
                self.down.append(ResBlock(cur, cout, e, g))
                cur = cout
                skips.append(cur)
            if i < len(ch) - 1:
                self.down.append(nn.Conv2d(cur, cur, 3, stride=2, padding=1))
                skips.append(cur)
        self.mid1, self.mid2 = ResBlock(cur, cur, e, g), ResBlock(cur, cur, e, g)
        self.attn = SelfAttention(cur, g) if c.attention else nn.Identity()
        self.up = nn.ModuleList()
        for i, cout in reversed(list(enumerate(ch))):
            for _ in range(c.blocks + 1):
                self.up.append(ResBlock(cur + skips.pop(), cout, e, g))
                cur = cout
            if i > 0:
                self.up.append(nn.Upsample(scale_factor=2, mode="nearest"))
                self.up.append(nn.Conv2d(cur, cur, 3, padding=1))
        self.out_norm, self.conv_out = _norm(cur, g), nn.Conv2d(cur, 3, 3, padding=1)
        nn.init.zeros_(self.conv_out.weight)  # the untrained model predicts eps = 0 (loss 1 at the start)
        nn.init.zeros_(self.conv_out.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, label: torch.Tensor, azimuth: torch.Tensor,
                elevation: torch.Tensor) -> torch.Tensor:
        e = self.t_mlp(timestep_embedding(t, self.t_dim)) + self.label(label) + self.cam(camera_features(azimuth, elevation))
        e = F.silu(e)
        h = self.conv_in(x)
        hs = [h]
        for m in self.down:
            h = m(h, e) if isinstance(m, ResBlock) else m(h)
            hs.append(h)
        h = self.mid2(self.attn(self.mid1(h, e)), e)
        for m in self.up:
            if isinstance(m, ResBlock):
                h = m(torch.cat([h, hs.pop()], dim=1), e)
            else:
                h = m(h)
        return self.conv_out(F.silu(self.out_norm(h)))


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- training
@dataclass
class TrainConfig:
    steps: int = 12000
    batch: int = 128
    lr: float = 5e-4
    warmup: int = 200
    weight_decay: float = 0.0
    ema: float = 0.999
    label_dropout: float = 0.15  # a label replaced by NULL (the unconditional prompt), for CFG
    t_range: tuple[int, int] = (0, 999)  # training timesteps (SD1.5's 1000)
    max_seconds: float | None = None  # stop early when training has run this long (the step count is reported)
    log_every: int = 100
    eval_batch: int = 512
    bf16: bool = True  # autocast on CUDA
    seed: int = 0


@dataclass
class TrainResult:
    steps: int
    seconds: float
    curve: list[dict] = field(default_factory=list)  # {"step", "loss"} (mean training loss of the last log_every steps)
    eval_start: float = float("nan")  # held-out denoising loss (fixed batch, fixed t and eps) before training
    eval_end: float = float("nan")  # ... after training, with the weights that are returned (EMA)


def q_sample(x0: torch.Tensor, t: torch.Tensor, eps: torch.Tensor, alphas_cumprod: torch.Tensor) -> torch.Tensor:
    ab = alphas_cumprod[t].float().view(-1, 1, 1, 1)
    return ab.sqrt() * x0 + (1 - ab).sqrt() * eps


@torch.no_grad()
def denoising_loss(model: nn.Module, batch: dict, alphas_cumprod: torch.Tensor) -> float:
    """Mean squared eps error on a fixed batch (x0, t, eps, label, azimuth, elevation)."""
    was = model.training
    model.eval()
    xt = q_sample(batch["x0"], batch["t"], batch["eps"], alphas_cumprod)
    pred = model(xt, batch["t"], batch["label"], batch["azimuth"], batch["elevation"]).float()
    model.train(was)
    return float(((pred - batch["eps"]) ** 2).mean())


def _draw(data: PriorDataset, n: int, cfg: TrainConfig, g: torch.Generator, dev: torch.device) -> dict:
    """A training batch drawn with ``g`` (a generator on ``dev``: no host round trip per step)."""
    idx = torch.randint(0, len(data), (n,), generator=g, device=dev)
    label = torch.where(torch.rand(n, generator=g, device=dev) < cfg.label_dropout, NULL, data.labels[idx])
    t = torch.randint(cfg.t_range[0], cfg.t_range[1] + 1, (n,), generator=g, device=dev)
    x0 = data.latents[idx]
    eps = torch.randn(x0.shape, generator=g, device=dev)
    return dict(x0=x0, t=t, eps=eps, label=label, azimuth=data.azimuth[idx], elevation=data.elevation[idx])


def train_prior(data: PriorDataset, model: PriorUNet, cfg: TrainConfig, device: torch.device | str,
                eval_data: PriorDataset | None = None, log=print) -> tuple[PriorUNet, TrainResult]:
    """Train ``model`` (eps MSE, AdamW, linear warm-up then cosine decay) on ``data``; returns the EMA
    model (a copy) and the loss curve. ``eval_data`` (default: ``data``) gives the fixed held-out batch."""
    import copy

    dev = torch.device(device)
    model = model.to(dev).train()
    data = data.to(dev)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    ac = sd15_alphas_cumprod().to(dev)
    g = torch.Generator(device=dev).manual_seed(cfg.seed)
    eval_batch = _draw((eval_data or data).to(dev), cfg.eval_batch, cfg, torch.Generator(device=dev).manual_seed(cfg.seed + 1), dev)
    res = TrainResult(0, 0.0, eval_start=denoising_loss(model, eval_batch, ac))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ema_params, model_params = list(ema.parameters()), list(model.parameters())

    def lr_at(step: int) -> float:
        if step < cfg.warmup:
            return cfg.lr * (step + 1) / cfg.warmup
        r = (step - cfg.warmup) / max(cfg.steps - cfg.warmup, 1)
        return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(r, 1.0))))

    amp = cfg.bf16 and dev.type == "cuda"
    run = torch.zeros((), device=dev)
    n_run = 0
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    t0 = time.perf_counter()
    step = 0
    for step in range(cfg.steps):
        for pg in opt.param_groups:
            pg["lr"] = lr_at(step)
        b = _draw(data, cfg.batch, cfg, g, dev)
        xt = q_sample(b["x0"], b["t"], b["eps"], ac)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
            pred = model(xt, b["t"], b["label"], b["azimuth"], b["elevation"])
        loss = F.mse_loss(pred.float(), b["eps"])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(cfg.ema, (1 + step) / (10 + step))  # short runs: the EMA warms up with the step count
        with torch.no_grad():
            torch._foreach_lerp_(ema_params, model_params, 1 - decay)
        run += loss.detach()
        n_run += 1
        if (step + 1) % cfg.log_every == 0 or step + 1 == cfg.steps:
            rec = {"step": step + 1, "loss": round(float(run) / n_run, 5), "seconds": round(time.perf_counter() - t0, 1)}
            res.curve.append(rec)
            run.zero_()
            n_run = 0
            if log:
                log(f"  step {rec['step']}: loss {rec['loss']:.4f} ({rec['seconds']} s)")
            if cfg.max_seconds is not None and rec["seconds"] >= cfg.max_seconds:
                break
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    res.steps, res.seconds = step + 1, time.perf_counter() - t0
    for be, bm in zip(ema.buffers(), model.buffers()):
        be.copy_(bm)
    res.eval_end = denoising_loss(ema, eval_batch, ac)
    return ema, res


# ----------------------------------------------------------------------------- the NoisePredictor
class TrainedPriorPredictor:
    """``core.guidance.NoisePredictor`` over a trained ``PriorUNet`` (module doc: prompts -> labels).

    encode: normal images [B,H,W,3] in 0..1 -> [B,3,H/f,W/f] (``prior_data.encode_images``, f =
    ``factor``), differentiable. predict_noise: x = latents + sigma * eps (sigma space) is scaled to the
    model's DDPM input x / sqrt(1 + sigma^2); the timestep is ``views.t`` (the ISD's draw) or, without
    it, the training step whose sigma is nearest. One batched forward per call.
    """

    def __init__(self, model: PriorUNet, factor: int = 8, device: torch.device | str | None = None, bf16: bool = True):
        self.model = model.eval().requires_grad_(False)
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model.to(self.device)
        self.factor = factor
        self.alphas_cumprod = sd15_alphas_cumprod().float()
        self._sigmas = sigma_from_alphas_cumprod(sd15_alphas_cumprod()).float()
        self.bf16 = bf16 and self.device.type == "cuda"
        self.calls = 0  # forward calls (one per ISD step)
        self.rows = 0  # UNet rows evaluated

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return encode_images(images.to(self.device), self.factor)

    def _timesteps(self, sigma: torch.Tensor, views: ViewBatch | None) -> torch.Tensor:
        if views is not None and views.t is not None:
            return torch.as_tensor(views.t).reshape(-1).long().to(self.device)
        s = sigma.detach().float().cpu().reshape(-1, 1)
        return (s - self._sigmas[None]).abs().argmin(dim=1).to(self.device)

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction:
        b = x.shape[0]
        dev = self.device
        x = x.to(dev).float()
        sig = torch.as_tensor(sigma, dtype=torch.float32).reshape(-1).to(dev).expand(b)
        t = self._timesteps(sig, views).expand(b)
        id_on = torch.as_tensor(views.id_enabled).reshape(-1).bool().to(dev).expand(b)
        az = torch.as_tensor(views.azimuth, dtype=torch.float32).reshape(-1).to(dev).expand(b)
        el = torch.as_tensor(views.elevation, dtype=torch.float32).reshape(-1).to(dev).expand(b)
        want = torch.tensor(views.wants_cond_no_id(), dtype=torch.bool, device=dev)
        sel = want.nonzero().flatten()
        xin = x / (1.0 + sig**2).sqrt().view(-1, 1, 1, 1)  # sigma space -> the DDPM input sqrt(ab) (z + sigma eps)
        cond_label = torch.where(id_on, torch.full_like(t, ID), torch.full_like(t, HEAD))
        rows_x = torch.cat([xin, xin, xin[sel]])
        rows_t = torch.cat([t, t, t[sel]])
        rows_l = torch.cat([cond_label, torch.full_like(t, NULL), torch.full_like(sel, HEAD)])
        rows_az, rows_el = torch.cat([az, az, az[sel]]), torch.cat([el, el, el[sel]])
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=self.bf16):
            eps = self.model(rows_x, rows_t, rows_l, rows_az, rows_el).float()
        self.calls += 1
        self.rows += rows_x.shape[0]
        cond, uncond = eps[:b], eps[b:2 * b]
        no_id = None
        if len(sel):
            no_id = cond.clone()  # rows not asked for are not read (NoisePrediction's contract)
            no_id[sel] = eps[2 * b:]
        return NoisePrediction(cond, uncond, no_id)


# ----------------------------------------------------------------------------- saving
def save_prior(model: PriorUNet, path: str, extra: dict | None = None) -> None:
    torch.save({"config": model.config.__dict__, "state_dict": model.state_dict(), "extra": extra or {}}, path)


def load_prior(path: str, device: torch.device | str = "cpu") -> PriorUNet:
    blob = torch.load(path, map_location=device, weights_only=True)
    cfg = dict(blob["config"])
    cfg["channels"] = tuple(cfg["channels"])
    model = PriorUNet(PriorConfig(**cfg))
    model.load_state_dict(blob["state_dict"])
    return model.to(device)


__all__ = ["PriorConfig", "PriorUNet", "TrainConfig", "TrainResult", "train_prior", "denoising_loss",
           "TrainedPriorPredictor", "save_prior", "load_prior", "parameter_count"]
