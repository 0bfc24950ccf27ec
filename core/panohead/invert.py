"""PanoHead inversion: W+ projection from the mean latent, then pivotal tuning (PTI).

Defaults are the authors' (PanoHead ``projector.py`` as ID-Sculpt runs it, see REFERENCE.md):
  * W+ projection: start at w_avg (mean of ``w_avg_samples`` mapped z at the frontal camera),
    Adam(0.9, 0.999) lr 0.1 with 5% linear warm-up and 25% cosine ramp-down, Gaussian noise on
    w of 0.05·w_std decaying quadratically to 0 over the first 75% of the steps;
    loss = 0.1·MSE + LPIPS(VGG) + ||w − w_avg||² (mean square).
  * PTI: the generator's weights tuned around the found pivot, Adam lr 3e-4, loss 0.1·MSE + LPIPS.
Noise inputs are 'const' (the stored per-layer noise), so the result is deterministic given the
seed (the seed drives w_avg sampling, w noise and the stratified ray samples).

On CUDA each step (render, loss, backward, Adam) is replayed from a CUDA graph (``cuda_graphs``,
see :mod:`..speed.graphed_step`): the same method several times faster, because the eager step is bound
by Python's kernel launches. What differs from the eager loop: the renderer's random ray samples
come from one seeded generator advancing from step to step instead of a generator re-seeded
per step (both reproducible run to run), and Adam runs in its ``capturable`` form (the same update,
computed on the device). The W+ noise is the same. If capture fails, one warning is logged and
the eager loop runs. Losses stay on the device and are read back only every ``preview_every``
steps and at the end (no per-step host sync in either mode).
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from ..speed.cuda_graph import release_graph_memory
from ..speed.graphed_step import GraphCaptureError, GraphedStep, graphs_unsupported_reason
from ..stage_types import InterruptFn, ProgressFn
from .perceptual import VGG16Perceptual
from .triplane import TriPlaneGenerator

log = logging.getLogger("IDSculpt")


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
    # CUDA only: replay each W+ / PTI step from a CUDA graph (same method, several times faster; graph
    # mode draws the ray samples from one seeded generator instead of re-seeding per step). Runs of
    # fewer than MIN_GRAPH_STEPS steps stay eager (capture costs a few steps' time).
    cuda_graphs: bool = True


MIN_GRAPH_STEPS = 8


@dataclass
class InversionResult:
    ws: torch.Tensor  # [1,num_ws,w_dim] pivot
    generator: TriPlaneGenerator  # PTI-tuned copy (eval, no grad)
    w_losses: list[float] = field(default_factory=list)
    pti_losses: list[float] = field(default_factory=list)
    w_avg: Optional[torch.Tensor] = None
    w_std: float = 0.0
    label: Optional[torch.Tensor] = None  # [1,25] the camera actually used (after self-adaptation)
    modes: dict = field(default_factory=dict)  # {"w": {...}, "pti": {...}}: how each loop ran ("cuda_graph"/"eager", why, capture_s)


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
    """Eager loop: the ray samples of step ``step`` from a generator seeded for that step."""
    gen = torch.Generator(device=ws.device).manual_seed(seed * 100003 + step)
    return _synth(G, ws, c, res, gen)


def _synth(G: TriPlaneGenerator, ws: torch.Tensor, c: torch.Tensor, res: Optional[int], generator: torch.Generator) -> torch.Tensor:
    return G.synthesis(ws, c, neural_rendering_resolution=res, noise_mode="const", generator=generator)["image"]


def _graph_seed(seed: int, stage: int) -> int:
    """Seed of graph mode's ray-sample generator for stage 0 (W+) / 1 (PTI); never one of the eager
    loop's per-step seeds (seed * 100003 + step with step < 100003)."""
    return (2 * seed + stage) * 1_000_003 + 500_009


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


# ---------------------------------------------------------------------------------- the two objectives
def _w_loss(perceptual: VGG16Perceptual, target: torch.Tensor, target_taps: list[torch.Tensor], synth: torch.Tensor,
            w_opt: torch.Tensor, w_avg: torch.Tensor, cfg: InversionConfig) -> torch.Tensor:
    """W+ projection loss: 0.1·MSE + LPIPS(VGG) + ||w − w_avg||² (mean square)."""
    perc = perceptual.distance(target_taps, perceptual.taps(synth, cfg.perceptual_size)).mean()
    mse = (target - synth).square().mean()
    return cfg.mse_weight * mse + perc + cfg.w_reg_weight * (w_opt - w_avg).square().mean()


def _pti_loss(perceptual: VGG16Perceptual, target: torch.Tensor, target_taps: list[torch.Tensor], synth: torch.Tensor,
              cfg: InversionConfig) -> torch.Tensor:
    """PTI loss: 0.1·MSE + LPIPS(VGG)."""
    return cfg.mse_weight * (target - synth).square().mean() + perceptual.distance(target_taps, perceptual.taps(synth, cfg.perceptual_size)).mean()


def _w_schedule(cfg: InversionConfig, w_std: float, step: int) -> tuple[float, float]:
    """(learning rate, w noise scale) of W+ step ``step``: the projector's ramps."""
    t = step / cfg.w_steps
    noise_scale = w_std * cfg.noise_factor * max(0.0, 1.0 - t / cfg.noise_ramp) ** 2
    ramp = min(1.0, (1.0 - t) / cfg.lr_rampdown)
    ramp = (0.5 - 0.5 * math.cos(ramp * math.pi)) * min(1.0, t / cfg.lr_rampup) if cfg.lr_rampup > 0 else 0.5 - 0.5 * math.cos(ramp * math.pi)
    return cfg.w_lr * ramp, noise_scale


def _w_noise(cfg: InversionConfig, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Unit Gaussian w noise of every step [w_steps,*shape] on ``device``: the numbers the projector
    draws step by step from the CPU generator seeded with seed + 7, moved to the device once (a
    per-step host-to-device copy from pageable memory would sync the host every step)."""
    gen = torch.Generator(device="cpu").manual_seed(cfg.seed + 7)
    if cfg.w_steps == 0:
        return torch.zeros(0, *shape, device=device)
    return torch.stack([torch.randn(shape, generator=gen) for _ in range(cfg.w_steps)]).to(device)


# ---------------------------------------------------------------------------------- loop machinery
class _LossLog:
    """Per-step losses kept on the device, read to the host only at read-back points."""

    def __init__(self, steps: int, device: torch.device, what: str, hint: str) -> None:
        self.buf = torch.zeros(max(steps, 1), dtype=torch.float32, device=device)
        self.host: list[float] = []
        self.what, self.hint = what, hint

    def put(self, step: int, loss: torch.Tensor) -> None:
        self.buf[step].copy_(loss.detach().reshape(()))

    def read(self, upto: int) -> None:
        new = self.buf[len(self.host):upto].tolist()
        for i, v in enumerate(new):
            if not math.isfinite(v):
                raise RuntimeError(f"{self.what} diverged: loss is {v} at step {len(self.host) + i + 1}; {self.hint}")
        self.host.extend(new)


def _run_steps(n: int, do_step: Callable[[int], tuple[torch.Tensor, torch.Tensor]], losses: _LossLog, cfg: InversionConfig,
               progress: Optional[ProgressFn], interrupt: Optional[InterruptFn], step_offset: int, total: int) -> list[float]:
    """The loop both modes share: interrupt check, one step, loss kept on the device, read-back
    (and the non-finite check) on preview steps and at the end, progress with a preview image."""
    every = max(cfg.preview_every, 1)
    for step in range(n):
        if interrupt is not None:
            interrupt()
        loss, synth = do_step(step)
        losses.put(step, loss)
        preview = step % every == 0 or step == n - 1
        if preview:
            losses.read(step + 1)
        if progress is not None:
            progress(step_offset + step + 1, total, _to_preview(synth) if preview else None)
    return losses.host


def _graph_mode(cfg: InversionConfig, device: torch.device, steps: int) -> Optional[str]:
    """None when this loop should try CUDA graphs, else why not."""
    if not cfg.cuda_graphs:
        return "off (cuda_graphs=False)"
    why = graphs_unsupported_reason(device)
    if why is None and steps < MIN_GRAPH_STEPS:
        why = f"fewer than {MIN_GRAPH_STEPS} steps"
    return why


def _fallback(e: GraphCaptureError, info: dict) -> None:
    log.warning("IDSculpt: %s; running the eager loop instead (same method, slower)", e)
    info.update(mode="eager", reason=f"capture failed at {e.stage}: {e.detail}")


# ---------------------------------------------------------------------------------- graphed steps
@dataclass
class _StepParts:
    """What a graphed loop needs: the step itself and the static inputs it reads."""

    step_fn: Callable[[], dict]  # zero_grad, render, loss, backward, Adam step -> {"loss", "image"}
    params: list[torch.Tensor]  # what Adam updates
    optimizer: torch.optim.Optimizer  # capturable=True
    generator: torch.Generator  # private CUDA generator of the ray samples
    set_step: Callable[[int], None]  # writes step-dependent inputs (lr, w noise) into static buffers


def _w_step_parts(G: TriPlaneGenerator, target: torch.Tensor, target_taps: list[torch.Tensor], c: torch.Tensor,
                  perceptual: VGG16Perceptual, cfg: InversionConfig, w_avg: torch.Tensor, noise: torch.Tensor,
                  schedule: list[tuple[float, float]]) -> _StepParts:
    """The W+ step with static inputs: lr a 0-dim device tensor, the step's scaled w noise a buffer."""
    dev = target.device
    w_opt = w_avg.detach().clone().requires_grad_(True)
    lr = torch.full((), schedule[0][0], dtype=torch.float32, device=dev)
    opt = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=lr, capturable=True)
    scales = torch.tensor([sc for _, sc in schedule], dtype=torch.float32, device=dev)
    scaled_noise = noise * scales.view(-1, *([1] * (noise.dim() - 1)))  # = noise[step] * noise_scale of the eager loop
    static_noise = scaled_noise[0].clone()
    gen = torch.Generator(device=dev)

    def step_fn() -> dict:
        opt.zero_grad(set_to_none=True)
        synth = _synth(G, w_opt + static_noise, c, cfg.neural_rendering_resolution, gen)
        loss = _w_loss(perceptual, target, target_taps, synth, w_opt, w_avg, cfg)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "image": synth.detach()}

    def set_step(step: int) -> None:
        lr.fill_(schedule[step][0])
        static_noise.copy_(scaled_noise[step])

    return _StepParts(step_fn, [w_opt], opt, gen, set_step)


def _pti_step_parts(Gt: TriPlaneGenerator, target: torch.Tensor, target_taps: list[torch.Tensor], ws: torch.Tensor,
                    c: torch.Tensor, perceptual: VGG16Perceptual, cfg: InversionConfig) -> _StepParts:
    """The PTI step on the (already copied, trainable) generator ``Gt``; nothing changes per step."""
    params = [p for p in Gt.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, betas=(0.9, 0.999), lr=cfg.pti_lr, capturable=True)
    gen = torch.Generator(device=target.device)

    def step_fn() -> dict:
        opt.zero_grad(set_to_none=True)
        synth = _synth(Gt, ws, c, cfg.neural_rendering_resolution, gen)
        loss = _pti_loss(perceptual, target, target_taps, synth, cfg)
        loss.backward()
        opt.step()
        return {"loss": loss.detach(), "image": synth.detach()}

    return _StepParts(step_fn, params, opt, gen, lambda step: None)


def _capture(build: Callable[[], _StepParts], name: str, seed: int
             ) -> tuple[_StepParts, GraphedStep, Callable[[int], tuple[torch.Tensor, torch.Tensor]]]:
    """Build and capture the step; returns its parts, the GraphedStep and the loop's do_step.
    Raises GraphCaptureError for any failure (also in the set-up, e.g. a torch whose Adam takes no
    tensor learning rate), so the caller can fall back to the eager loop."""
    try:
        parts = build()
        parts.set_step(0)  # warm-ups and the check run step 0's inputs
    except Exception as e:  # noqa: BLE001
        raise GraphCaptureError(name, "set-up", f"{type(e).__name__}: {e}") from e
    gs = GraphedStep(name, parts.step_fn, parts.params, parts.optimizer, parts.generator)
    gs.capture(seed)

    def do_step(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts.set_step(step)
        out = gs.replay()
        return out["loss"], out["image"]

    return parts, gs, do_step


def _graphed_loop(build: Callable[[], _StepParts], steps: int, seed: int, what: str, hint: str, cfg: InversionConfig,
                  dev: torch.device, progress: Optional[ProgressFn], interrupt: Optional[InterruptFn], step_offset: int,
                  total: int, info: dict) -> Optional[tuple[_StepParts, list[float]]]:
    """Run the loop from a captured step: (its parts, the losses), or None when this loop runs eagerly
    (graphs off or unsupported, or the capture failed); ``info`` records which and why."""
    why = _graph_mode(cfg, dev, steps)
    info.update(mode="eager", reason=why)
    if why is not None:
        return None
    try:
        parts, gs, do_step = _capture(build, what, seed)
    except GraphCaptureError as e:
        _fallback(e, info)
        return None
    info.update(mode="cuda_graph", reason=None, capture_s=round(gs.capture_s, 3))
    try:
        losses = _run_steps(steps, do_step, _LossLog(steps, dev, what, hint), cfg, progress, interrupt, step_offset, total)
    finally:
        gs.close()
        if torch.cuda.get_allocator_backend() == "cudaMallocAsync":
            # ComfyUI's default allocator. There a captured step's memory comes from CUDA's own graph memory
            # pool, which keeps it after the graph is gone (~3.1 GiB of device memory after the run in a
            # server on the H100); the trim hands it back (measured: 1,465 MiB in use after /free, against
            # 1,345 MiB with stage 1 eager and 4,493 MiB untrimmed; docs/PERFORMANCE.md).
            del gs, do_step  # the graph itself first
            release_graph_memory(dev)
    return parts, losses


# ---------------------------------------------------------------------------------- W+ projection
def project_w(G: TriPlaneGenerator, target: torch.Tensor, c: torch.Tensor, perceptual: VGG16Perceptual,
              cfg: InversionConfig = InversionConfig(), progress: Optional[ProgressFn] = None,
              interrupt: Optional[InterruptFn] = None, step_offset: int = 0, total_steps: Optional[int] = None,
              info: Optional[dict] = None) -> tuple[torch.Tensor, list[float], torch.Tensor, float]:
    """Optimise a W+ code so the generator renders ``target`` [1,3,R,R] (in [-1,1]) from label c.

    ``info`` (optional dict) receives how the loop ran: mode "cuda_graph" or "eager", reason, capture_s."""
    dev = target.device
    info = {} if info is None else info
    G = G.eval().requires_grad_(False)
    w_avg, w_std = w_statistics(G, cfg.w_avg_samples, cfg.seed)
    w_avg = w_avg.repeat(1, G.num_ws, 1)
    with torch.no_grad():
        target_taps = perceptual.taps(target, cfg.perceptual_size)
    noise = _w_noise(cfg, tuple(w_avg.shape), dev)
    schedule = [_w_schedule(cfg, w_std, step) for step in range(cfg.w_steps)]
    total = total_steps or cfg.w_steps
    what, hint = "PanoHead W+ projection", "lower the learning rate (w_lr)"
    graphed = _graphed_loop(lambda: _w_step_parts(G, target, target_taps, c, perceptual, cfg, w_avg, noise, schedule),
                            cfg.w_steps, _graph_seed(cfg.seed, 0), what, hint, cfg, dev, progress, interrupt, step_offset, total,
                            info)
    if graphed is not None:
        parts, losses = graphed
        return parts.params[0].detach(), losses, w_avg[:, :1].detach(), w_std

    w_opt = w_avg.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=cfg.w_lr)

    def do_step(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        lr, noise_scale = schedule[step]
        for g in opt.param_groups:
            g["lr"] = lr
        ws = w_opt + noise[step] * noise_scale
        synth = _render(G, ws, c, cfg.neural_rendering_resolution, cfg.seed, step)
        loss = _w_loss(perceptual, target, target_taps, synth, w_opt, w_avg, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), synth

    losses = _run_steps(cfg.w_steps, do_step, _LossLog(cfg.w_steps, dev, what, hint), cfg, progress, interrupt, step_offset, total)
    return w_opt.detach(), losses, w_avg[:, :1].detach(), w_std


# ---------------------------------------------------------------------------------- pivotal tuning
def pivotal_tuning(G: TriPlaneGenerator, target: torch.Tensor, ws: torch.Tensor, c: torch.Tensor, perceptual: VGG16Perceptual,
                   cfg: InversionConfig = InversionConfig(), progress: Optional[ProgressFn] = None,
                   interrupt: Optional[InterruptFn] = None, step_offset: int = 0, total_steps: Optional[int] = None,
                   info: Optional[dict] = None) -> tuple[TriPlaneGenerator, list[float]]:
    """Tune a copy of the generator's weights so the pivot ``ws`` renders ``target`` (PTI).

    ``info`` (optional dict) receives how the loop ran: mode "cuda_graph" or "eager", reason, capture_s."""
    dev = target.device
    info = {} if info is None else info
    with torch.no_grad():
        target_taps = perceptual.taps(target, cfg.perceptual_size)
    total = total_steps or cfg.pti_steps
    what, hint = "PanoHead pivotal tuning", "lower the learning rate (pti_lr)"
    tuned: list[TriPlaneGenerator] = []

    def build() -> _StepParts:
        tuned.append(copy.deepcopy(G).train().requires_grad_(True))
        return _pti_step_parts(tuned[-1], target, target_taps, ws, c, perceptual, cfg)

    graphed = _graphed_loop(build, cfg.pti_steps, _graph_seed(cfg.seed, 1), what, hint, cfg, dev, progress, interrupt,
                            step_offset, total, info)
    if graphed is not None:
        return tuned[-1].eval().requires_grad_(False), graphed[1]
    tuned.clear()  # a failed capture may have touched its copy: the eager loop starts from a fresh one

    Gt = copy.deepcopy(G).train().requires_grad_(True)
    opt = torch.optim.Adam(Gt.parameters(), betas=(0.9, 0.999), lr=cfg.pti_lr)

    def do_step(step: int) -> tuple[torch.Tensor, torch.Tensor]:
        synth = _render(Gt, ws, c, cfg.neural_rendering_resolution, cfg.seed + 1, step)
        loss = _pti_loss(perceptual, target, target_taps, synth, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.detach(), synth

    losses = _run_steps(cfg.pti_steps, do_step, _LossLog(cfg.pti_steps, dev, what, hint), cfg, progress, interrupt, step_offset, total)
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
    modes: dict = {"w": {}, "pti": {}}
    try:
        with torch.enable_grad():
            t0 = time.perf_counter()  # each loop's wall seconds (capture included) go into modes: the node logs them
            ws, w_losses, w_avg, w_std = project_w(G, target, c, perceptual, cfg, progress, interrupt, 0, total, info=modes["w"])
            if not torch.isfinite(ws).all():
                raise RuntimeError("W+ projection diverged (non-finite latent); lower the learning rate")
            modes["w"]["seconds"] = round(time.perf_counter() - t0, 2)
            t0 = time.perf_counter()
            Gt, pti_losses = pivotal_tuning(G, target, ws, c, perceptual, cfg, progress, interrupt, cfg.w_steps, total,
                                            info=modes["pti"])
            modes["pti"]["seconds"] = round(time.perf_counter() - t0, 2)
    finally:
        G.rendering_kwargs["ray_start"] = old_start
    Gt.rendering_kwargs["ray_start"] = old_start
    return InversionResult(ws=ws, generator=Gt, w_losses=w_losses, pti_losses=pti_losses, w_avg=w_avg, w_std=w_std,
                           label=c.detach(), modes=modes)
