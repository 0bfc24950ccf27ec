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
  schedule, i.e. starts at ≈ timestep t). ``denoise_batch`` restores K views from one t in ONE sampler
  run (latent batch K, CFG batch 2K): row i has its own noise (the seed a single call would have used:
  seed + calls + i), its own normal hint (a [K,3,H,W] ControlNet hint) and its own direction's prompts
  (one CONDITIONING whose cross-attention tensor holds one row per view, which ComfyUI keeps when its
  batch equals the latent batch; token lengths are matched by repeating to their LCM, as ComfyUI's own
  cond concatenation does). Conditionings that cannot share rows (several entries, areas, masks,
  different extra keys) run as one sampler call per direction instead. With CUDA graphs on, a smaller
  batch (the last one) is padded to the largest batch run so far and the padding dropped: one graph
  shape for the whole run (a second capture costs more than the padded rows).

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
        self.calls = 0  # views sampled so far (row i of a run gets noise seed seed + calls + i)
        self.rows = 0  # the largest latent batch run so far (smaller batches are padded to it while graphs are on)
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
        """This view's prompt pair with its normal hint ``normal_control`` [H,W,3] (or a batch [K,H,W,3] of hints,
        one per latent row) on the ControlNet."""
        return self._with_control(*self.pair(direction), normal_control)

    def _with_control(self, positive: list, negative: list, normal_control: Optional[torch.Tensor]) -> tuple[list, list]:
        if self.control_net is None or normal_control is None or self.control_strength == 0:
            return positive, negative
        hint = normal_control.reshape(-1, *normal_control.shape[-3:]).permute(0, 3, 1, 2).float().cpu()  # [K,3,H,W] 0..1
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
            out = self._sample(image, normal_control, denoise, noise_mask, self.pair(direction))
        return out.clone()

    @torch.no_grad()
    def run_batch(self, images: torch.Tensor, normal_controls: Optional[torch.Tensor], denoise: float,
                  directions: list[Optional[str]]) -> torch.Tensor:
        """images [K,H,W,3] 0..1 → sampled images [K,H,W,3], every row from one ``denoise`` in one sampler run (row i
        as ``run`` would sample it as the i-th of K calls: noise seed seed + calls + i, its hint, its direction's
        prompt pair). No noise mask (SDEdit)."""
        k = images.shape[0]
        if len(directions) != k or (normal_controls is not None and normal_controls.shape[0] != k):
            raise ValueError(f"run_batch: {k} images, {len(directions)} directions, "
                             f"{None if normal_controls is None else normal_controls.shape[0]} hints")
        with torch.inference_mode():
            merged = self._merged_pair(directions)
            if merged is not None:
                out = self._sample(images, normal_controls, denoise, None, merged)
            else:  # prompts that cannot share rows: one sampler run per direction, rows scattered back
                out = torch.empty_like(images, dtype=torch.float32)
                first = self.calls
                groups: dict[Optional[str], list[int]] = {}
                for i, d in enumerate(directions):
                    groups.setdefault(d, []).append(i)
                for d, idx in groups.items():
                    ii = torch.tensor(idx, device=images.device)
                    self.calls = first  # each row keeps its noise seed: seed + first + its index
                    out[ii] = self._sample(images[ii], None if normal_controls is None else normal_controls[ii], denoise, None,
                                           self.pair(d), rows=idx)
                self.calls = first + k
        return out.clone()

    def _merged_pair(self, directions: list[Optional[str]]) -> Optional[tuple[list, list]]:
        """One (positive, negative) CONDITIONING pair for rows of these directions: the pair itself when all rows
        share it (ComfyUI repeats a batch-1 cond to the latent batch), else conds with one cross-attention row
        per view; None when the conditionings cannot be merged row-wise."""
        pairs = [self.pair(d) for d in directions]
        if all(p[0] is pairs[0][0] and p[1] is pairs[0][1] for p in pairs):
            return pairs[0]
        pos, neg = merge_conditioning_rows([p[0] for p in pairs]), merge_conditioning_rows([p[1] for p in pairs])
        return None if pos is None or neg is None else (pos, neg)

    def _sample(self, image: torch.Tensor, normal_control: Optional[torch.Tensor], denoise: float, noise_mask: Optional[torch.Tensor],
                pair: tuple[list, list], rows: Optional[list[int]] = None) -> torch.Tensor:
        """One sampler run of the (positive, negative) CONDITIONING ``pair``. ``image`` [H,W,3] (one view) or
        [K,H,W,3]; noise row i from seed + calls + rows[i] (rows: 0..K−1)."""
        single = image.dim() == 3
        images = image[None] if single else image
        controls = None if normal_control is None else (normal_control[None] if single else normal_control)
        k, h, w = images.shape[:3]
        if h % 8 or w % 8:
            raise ValueError(f"views must be multiples of 8 pixels for the VAE, got {h}x{w}: change the resolution")
        rows = list(range(k)) if rows is None else list(rows)
        seeds = [self.seed + self.calls + r for r in rows]
        self.calls += k
        pad = self.rows - k if (self.graphs.enabled and noise_mask is None) else 0
        if pad > 0:  # one CUDA graph shape: repeat the last view, drop its rows after decoding
            images = torch.cat([images, images[-1:].expand(pad, -1, -1, -1)])
            controls = None if controls is None else torch.cat([controls, controls[-1:].expand(pad, -1, -1, -1)])
            seeds += [seeds[-1]] * pad
        self.rows = max(self.rows, images.shape[0])
        pos, neg = self._with_control(*pair, controls)
        latent = self.vae.encode(images.float().cpu())
        latent = comfy.sample.fix_empty_latent_channels(self.model, latent)
        # per-row noise, each row the noise a single call with its seed draws
        noise = torch.cat([comfy.sample.prepare_noise(latent[i:i + 1], s) for i, s in enumerate(seeds)])
        mask = None if noise_mask is None else noise_mask.reshape(1, 1, h, w).float().cpu()
        with self.graphs.control_patched():
            samples = comfy.sample.sample(self.model, noise, self.steps, self.cfg, self.sampler_name, self.scheduler, pos, neg, latent,
                                          denoise=float(denoise), noise_mask=mask, callback=self.sampler_step, disable_pbar=True,
                                          seed=self.seed)
        out = self.vae.decode(samples)
        out = out.reshape(-1, *out.shape[-3:])[:k, ..., :3]
        if out.shape[1:3] != (h, w):
            out = torch.nn.functional.interpolate(out.permute(0, 3, 1, 2), size=(h, w), mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
        if not bool(torch.isfinite(out).all()):
            raise RuntimeError("sampling produced NaN/inf pixels (an fp16 overflow in the UNet or VAE?): try a lower cfg, "
                               "or start ComfyUI with --fp32-vae / --force-fp32")
        out = out.float().clamp(0, 1).to(image.device)
        return out[0] if single else out


def merge_conditioning_rows(conds: list[list]) -> Optional[list]:
    """One CONDITIONING whose cross-attention tensor holds row i of ``conds[i]`` (each a one-entry CONDITIONING
    with a batch-1 tensor), or None when they cannot share rows: several entries, an area or mask, a batch
    above 1, different widths, dict keys or non-tensor values, or token lengths whose LCM is over 4× the
    shortest (ComfyUI's own limit in CONDCrossAttn.can_concat). Shorter token sequences are repeated to the
    LCM length as ComfyUI concatenates conds (attention over a repeated key set is unchanged); tensor
    values of the dicts (pooled_output) are concatenated row-wise."""
    if any(len(c) != 1 for c in conds):
        return None
    tensors = [c[0][0] for c in conds]
    dicts = [c[0][1] for c in conds]
    if any(d.get("area") is not None or d.get("mask") is not None for d in dicts) or any(d.keys() != dicts[0].keys() for d in dicts):
        return None
    extra = {}
    for key, v0 in dicts[0].items():
        vals = [d[key] for d in dicts]
        if isinstance(v0, torch.Tensor):
            if any(not isinstance(v, torch.Tensor) or v.shape != v0.shape or v.shape[:1] != (1,) for v in vals):
                return None
            extra[key] = torch.cat(vals)
        elif any(v is not v0 and not _same(v, v0) for v in vals):
            return None
    cross = stack_token_rows(tensors)
    return None if cross is None else [[cross, {**dicts[0], **extra}]]


def stack_token_rows(rows: list[torch.Tensor]) -> Optional[torch.Tensor]:
    """[n, L, C] from n cross-attention rows [1, L_i, C]: each repeated to the LCM L of the token lengths, as
    ComfyUI's CONDCrossAttn.concat does (attention over a repeated key set is unchanged), or None where they
    cannot share a batch: a row batch other than 1, different widths, or an LCM over 4x the shortest length
    (ComfyUI's own limit in CONDCrossAttn.can_concat). The one row stacker of per-view prompts (texture
    sampling's merge_conditioning_rows and the ISD's noise predictor)."""
    if any(t.dim() != 3 or t.shape[0] != 1 or t.shape[2] != rows[0].shape[2] for t in rows):
        return None
    lengths = [t.shape[1] for t in rows]
    n = math.lcm(*lengths)
    if n // min(lengths) > 4:
        return None
    return torch.cat([t.repeat(1, n // t.shape[1], 1) for t in rows])


def _same(a, b) -> bool:
    try:
        return bool(a == b)
    except Exception:  # values without a plain equality (arrays, models): only the same object is the same
        return False


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

    def denoise_batch(self, images, normal_controls, views, t):
        """K views restored from one timestep t in one sampler run, each with its direction's prompt pair."""
        directions = [self.sampling.direction(v.azimuth, v.elevation) for v in views]
        return self.sampling.run_batch(images, normal_controls, max(int(t), 1) / 1000.0, directions)

