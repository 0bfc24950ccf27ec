"""The texture stage's sampling adapter: Progressive Inpaint and Texture Refine hand core/texture a small adapter that runs the user's MODEL the way KSampler does, so
LoRAs, the ID adapter's attention patch (applied upstream by IDSculpt Apply ID Adapter: "ID always
on"), other packs' patches and every sampler/scheduler work unchanged:

* ``ComfyInpainter`` (core.texture.Inpainter): VAE-encode the view crop, attach the normalbae
  ControlNet with this view's rendered-normal hint (``control_net.copy().set_cond_hint(...)``, as
  ControlNetApplyAdvanced does), and ``comfy.sample.sample(..., noise_mask=generate_mask)``: ComfyUI's
  inpainting path re-noises the kept region to the current sigma after every step (blended latents),
  then VAE-decode. ``denoise`` 0.95 ≈ starting from t = 950 as the authors do.
* ``ComfyDenoiser`` (core.texture.Denoiser): SDEdit for refinement — the same call without a mask and
  with ``denoise = t / 1000`` (ComfyUI then runs the last ``steps`` steps of a ``steps / denoise`` step
  schedule, i.e. starts at ≈ timestep t).

Cancel (ComfyUI's interrupt) is checked after every sampler step (``comfy.sample.sample``'s callback) and
between the UNet's blocks (input/output block patches on the sampling's clone of the MODEL), so a view stops
within a fraction of one UNet call; Progressive Inpaint's bar counts sampler steps (views × steps).

Both sample every view with the prompt pair of its direction (nodes/view_prompts.py, the texture
thresholds core.guidance.TEXTURE_VIEW_THRESHOLDS: front |az| < 45°, back |az| > 135°, overhead
elevation > 60°), as the authors' texture guidance does: a view of the back of the head gets the back
prompt and the "face, nose, eyes, …" negative, never the front prompt.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch

import comfy.model_management
import comfy.sample
import comfy.samplers

from ..view_prompts import ViewConditioning
from .cuda_graphs import DiffusionGraphs


def attach_control(conds: list, control, chained: Optional[dict] = None) -> list:
    """ControlNetApplyAdvanced's wiring: put ``control`` on every cond, chaining a ControlNet the user already
    applied there, one chained copy per distinct previous ControlNet shared by positive and negative
    (``chained``), so ComfyUI can batch both branches in one UNet call. ``conds``: a CONDITIONING (``[tensor,
    dict]`` pairs, what the texture stage samples with) or the cond dicts of ``CFGGuider`` (what ISD runs)."""
    chained = {} if chained is None else chained
    out = []
    for entry in conds:
        pair = not isinstance(entry, dict)
        d = (entry[1] if pair else entry).copy()
        prev = d.get("control", None)
        if prev is None:
            ctl = control
        else:
            ctl = chained.get(id(prev))
            if ctl is None:
                ctl = chained[id(prev)] = control.copy().set_previous_controlnet(prev)
        d["control"] = ctl
        d["control_apply_to_uncond"] = False
        out.append([entry[0], d] if pair else d)
    return out


def _check_cancel() -> None:
    """ComfyUI's Cancel check, skipped while a CUDA graph is being recorded (raising there would abandon the
    capture; replays run no Python, and on a GPU a whole step takes milliseconds anyway)."""
    if torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
        return
    comfy.model_management.throw_exception_if_processing_interrupted()


def _cancel_after_input_block(h, transformer_options):
    """UNet ``input_block_patch``: a Cancel check after each input block (returns ``h`` unchanged)."""
    _check_cancel()
    return h


def _cancel_before_output_block(h, hsp, transformer_options):
    """UNet ``output_block_patch``: a Cancel check before each output block (returns its inputs unchanged)."""
    _check_cancel()
    return h, hsp


class ComfySampling:
    """Shared by the inpainter and the denoiser: conds with this view's normal hint, encode, sample, decode."""

    def __init__(self, model, positive, negative, vae, control_net=None, control_strength: float = 1.0, steps: int = 20,
                 cfg: float = 10.0, sampler_name: str = "ddim", scheduler: str = "ddim_uniform", seed: int = 0,
                 cuda_graphs: bool = True, views: Optional[ViewConditioning] = None) -> None:
        if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
            raise ValueError(f"unknown sampler {sampler_name!r}")
        if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
            raise ValueError(f"unknown scheduler {scheduler!r}")
        if steps < 1 or not math.isfinite(cfg):
            raise ValueError("steps must be ≥ 1 and cfg a finite number")
        self.model, self.positive, self.negative, self.vae = model, positive, negative, vae
        self.views = views  # per-direction prompt pairs; None = positive/negative for every view
        self.control_net, self.control_strength = control_net, float(control_strength)
        self.steps, self.cfg, self.sampler_name, self.scheduler = int(steps), float(cfg), sampler_name, scheduler
        self.seed = int(seed)
        self.calls = 0
        #: called as ``on_step(done, total)`` after every sampler step of a view (Progressive Inpaint's bar)
        self.on_step: Optional[Callable[[int, int], None]] = None
        # every view samples the same shapes, so the UNet/ControlNet calls replay from CUDA graphs
        self.graphs = DiffusionGraphs(model, control_net, enabled=cuda_graphs)
        self.model = self.graphs.clone_model(model)
        # Cancel within a UNet call, not only between sampler steps: one step of SD1.5 at 512 px takes seconds
        # on a CPU. Module functions, not bound methods: ComfyUI deep-copies model_options when it clones.
        self.model.set_model_input_block_patch(_cancel_after_input_block)
        self.model.set_model_output_block_patch(_cancel_before_output_block)

    def close(self) -> None:
        """Free the CUDA graphs (their memory pools) once the node's sampling is over."""
        self.graphs.close()

    def sampler_step(self, step: int, denoised, x, total_steps: int) -> None:
        """comfy.sample.sample's ``callback``, called after every sampler step: a Cancel check (the sampler
        itself never checks, and ``disable_pbar`` leaves no progress hook to check either), and ``on_step``
        advances the node's bar."""
        _check_cancel()
        if self.on_step is not None:
            self.on_step(int(step) + 1, max(int(total_steps), 1))

    def pair(self, direction: Optional[str]) -> tuple[list, list]:
        """The (positive, negative) CONDITIONING of a view direction (None: the plain pair)."""
        if direction is None or self.views is None:
            return self.positive, self.negative
        return self.views.pair(direction)

    def direction(self, azimuth: float, elevation: float) -> Optional[str]:
        return None if self.views is None else self.views.directions([azimuth], [elevation])[0]

    def conds(self, normal_control: Optional[torch.Tensor], direction: Optional[str] = None) -> tuple[list, list]:
        positive, negative = self.pair(direction)
        if self.control_net is None or normal_control is None or self.control_strength == 0:
            return positive, negative
        hint = normal_control[None].permute(0, 3, 1, 2).float().cpu()  # [1,3,H,W] 0..1
        control = self.control_net.copy().set_cond_hint(hint, self.control_strength, (0.0, 1.0), vae=self.vae)
        cache: dict = {}
        return attach_control(positive, control, cache), attach_control(negative, control, cache)

    @torch.no_grad()  # sampling targets are never differentiated; ComfyUI's weights are inference tensors
    def run(self, image: torch.Tensor, normal_control: Optional[torch.Tensor], denoise: float, noise_mask: Optional[torch.Tensor],
            direction: Optional[str] = None) -> torch.Tensor:
        """image [H,W,3] 0..1 → sampled image [H,W,3] 0..1 (same size; H, W multiples of 8), with the prompt
        pair of ``direction`` ("front" | "side" | "back" | "overhead"; None = the plain pair)."""
        # under inference mode as in ComfyUI's own samplers (the weights are inference tensors); the result
        # is cloned back out because the texture optimisation keeps it for its loss's backward
        with torch.inference_mode():
            out = self._sample(image, normal_control, denoise, noise_mask, direction)
        return out.clone()

    def _sample(self, image: torch.Tensor, normal_control: Optional[torch.Tensor], denoise: float, noise_mask: Optional[torch.Tensor],
                direction: Optional[str] = None) -> torch.Tensor:
        h, w = image.shape[:2]
        if h % 8 or w % 8:
            raise ValueError(f"views must be multiples of 8 pixels for the VAE, got {h}x{w}: change the resolution")
        pos, neg = self.conds(normal_control, direction)
        latent = self.vae.encode(image[None].float().cpu())
        latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
        noise = comfy.sample.prepare_noise(latent, self.seed + self.calls)
        self.calls += 1
        mask = None if noise_mask is None else noise_mask.reshape(1, 1, h, w).float().cpu()
        with self.graphs.control_patched():
            samples = comfy.sample.sample(self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, pos, neg, latent,
                                          denoise=float(denoise), noise_mask=mask, callback=self.sampler_step, disable_pbar=True,
                                          seed=self.seed)
        out = self.vae.decode(samples)
        out = out.reshape(-1, *out.shape[-3:])[0][..., :3]
        if out.shape[:2] != (h, w):
            out = torch.nn.functional.interpolate(out.permute(2, 0, 1)[None], size=(h, w), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("sampling produced NaN/inf pixels (an fp16 overflow in the UNet or VAE?): try a lower cfg, "
                               "or start ComfyUI with --fp32-vae / --force-fp32")
        return out.float().clamp(0, 1).to(image.device)


class ComfyInpainter:
    """core.texture.Inpainter on ComfyUI sampling (blended latents via noise_mask + normalbae ControlNet)."""

    def __init__(self, sampling: ComfySampling, denoise: float = 0.95) -> None:
        self.sampling, self.denoise = sampling, float(denoise)

    def inpaint(self, image, generate_mask, normal_control, context):
        # context (core.texture.ViewContext) carries the view's angles: its direction picks the prompt pair
        view = getattr(context, "view", None)
        direction = None if view is None else self.sampling.direction(view.azimuth, view.elevation)
        return self.sampling.run(image, normal_control, self.denoise, generate_mask, direction)


class ComfyDenoiser:
    """core.texture.Denoiser on ComfyUI sampling: SDEdit from timestep t (denoise = t / 1000)."""

    def __init__(self, sampling: ComfySampling) -> None:
        self.sampling = sampling

    def denoise(self, image, normal_control, view, t):
        # view (core.texture.RefineView) carries the random view's angles: its direction picks the prompt pair
        az, el = getattr(view, "azimuth", None), getattr(view, "elevation", None)
        direction = None if az is None or el is None else self.sampling.direction(az, el)
        return self.sampling.run(image, normal_control, max(int(t), 1) / 1000.0, None, direction)

