"""ISD guidance node and the ComfyUI-backed noise predictor behind it.

``IDSculpt ISD Guidance`` bundles the user's (already ID-adapted) MODEL, prompts, VAE and optional
landmark ControlNet into an ISD_GUIDANCE value: a ``core.guidance.ISDGuidance`` whose predictor runs
the model exactly as ComfyUI's samplers do (route B of docs COMFYUI.md):

    CFGGuider.inner_set_conds (convert the conds; on newer ComfyUI a dynamically loaded MODEL whose
    conds carry hooks is swapped for its non-dynamic delegate) -> preprocess_conds_hooks -> hook mode
    -> prepare_model_patcher -> prepare_sampling (load models) -> patcher.pre_run()
    per step: copy conds (+ a fresh ControlNet copy with this step's landmark hints)
              -> process_conds -> calc_cond_batch([positive, negative(, positive with ID off)])
              -> eps = (x - x0) / sigma
    patcher.cleanup() -> cleanup_models -> hook mode and hook patches restored

the steps of CFGGuider.sample / outer_sample, which has no public entry point that returns the
separate cond / uncond predictions ISD needs. Model loading, pre_run, each prediction and cleanup
run inside ComfyUI's ``cuda_device_context`` of the model's device and each call sets the model's
``latent_shapes``, where the host has them (newer releases; looked up, so 0.3.64 runs as before).

so LoRAs (weight patches), other packs' attention patches, hooks and wrappers are all active. Each
view gets the positive AND negative prompt of its direction (front / side / back / overhead). The third
cond, run in the same batched UNet call, is the estimator of the authors' ISD gradient (core.guidance):
the ID patch turns ID off for it (``ID_OFF_CONDS_KEY``). The render -> latent step runs the pack's own
VAE encoder, built from the VAE's state dict with private weights and autograd on (never ComfyUI's live
modules, which a dynamic loader changes in place), and takes a posterior sample (the authors') or the
mean, scaled by the model's latent format.

Use from a node that optimises (the sculpt stage)::

    with torch.inference_mode(False), torch.enable_grad():
        with guidance:                      # loads models once, pre_run/cleanup around the loop
            for step in range(n):
                loss = guidance(normal_images, cameras, step=step, total_steps=n)
"""
from __future__ import annotations

import contextlib
import inspect
import logging
import math

import torch
import torch.nn.functional as F
from comfy_api.latest import io

import comfy.hooks
import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers

from ..core.guidance import (ISD_ESTIMATORS, ISD_VIEW_THRESHOLDS, VIEW_DIRECTIONS, ISDConfig, ISDGuidance, NoisePrediction,
                             ViewBatch, vae_posterior_latents, view_direction)
from ..core.sd_vae_encoder import SDVAEEncoder
from ..core.transfer import to_device
from .cuda_graphs import DiffusionGraphs, cuda_graphs_input
from .id_adapter_nodes import ID_ENABLED_KEY, ID_MASK_KEY, ID_OFF_CONDS_KEY, IDAttentionPatch
from .view_prompts import view_conditioning, view_conditioning_inputs
from .vram import module_tensors, unique_models

log = logging.getLogger("IDSculpt")


def has_id_adapter(model) -> bool:
    """True when some attn2 replacement of ``model`` is (or wraps) our ID patch."""
    patches = model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})
    for p in patches.values():
        while p is not None:
            if isinstance(p, IDAttentionPatch):
                return True
            p = getattr(p, "previous", None)
    return False
from .types import ISD_GUIDANCE, LANDMARKS


#: "sample": z = mean + std * noise (the authors' posterior.sample()); "mean": ComfyUI's VAE encode.
VAE_POSTERIORS = ("sample", "mean")


class DifferentiableVAEEncoder(torch.nn.Module):
    """Image [B,H,W,3] 0..1 -> model-space latents, with autograd, from a ComfyUI VAE.

    The encoder (+ ``quant_conv``) is the pack's own plain-PyTorch module (core.sd_vae_encoder), built
    from the VAE's state dict (``vae.get_sd()``, public in every ComfyUI release) with private copies of
    the weights. ComfyUI's live modules are never copied or run: under Dynamic VRAM they keep their
    weights off the GPU, carry native pinned-memory handles and cast weights per forward into shared
    buffers, so a copy could not be made or would back-propagate through overwritten weights. The
    diagonal Gaussian posterior becomes latents and the latent format's scale/shift is applied.
    posterior: "sample" (default; mean + std * noise, reparameterised, noise from ``generator``: the
    authors' ``posterior.sample()``) or "mean" (what ComfyUI's VAE encode returns). ``encoder``: a
    prebuilt module image [-1,1] -> moments (tests), instead of one built from the VAE.
    """

    def __init__(self, vae, latent_format, device: torch.device, dtype: torch.dtype | None = None, math_attention: bool = True,
                 posterior: str = "sample", generator: torch.Generator | None = None, encoder: torch.nn.Module | None = None):
        super().__init__()
        if posterior not in VAE_POSTERIORS:
            raise ValueError(f"VAE posterior must be one of {VAE_POSTERIORS}, got {posterior!r}")
        self.posterior, self.generator = posterior, generator
        dtype = dtype or getattr(vae, "vae_dtype", torch.float32)
        if encoder is None:
            # math_attention: the mid-block self-attention runs as matmul + softmax, whose backward is
            # far cheaper than the memory-efficient kernel PyTorch picks for a 512-wide head.
            encoder = SDVAEEncoder.from_state_dict(vae_state_dict(vae), device, dtype, math_attention=math_attention)
        self.net = encoder.requires_grad_(False).eval()
        self.process_input = getattr(vae, "process_input", lambda im: im * 2.0 - 1.0)
        self.latent_format = latent_format
        self.dtype, self.device = dtype, device
        self.latent_channels = int(getattr(vae, "latent_channels", 4))

    @property
    def encoder(self) -> torch.nn.Module:
        """The encoder trunk (its attention blocks expose ``optimized_attention``, as ComfyUI's do)."""
        return getattr(self.net, "encoder", self.net)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.process_input(images.movedim(-1, 1)).to(device=self.device, dtype=self.dtype)
        z = self.net(x)
        if z.shape[1] == 2 * self.latent_channels:  # diagonal Gaussian moments (mean, log-variance)
            z = vae_posterior_latents(z, self.posterior == "sample", self.generator)
        return self.latent_format.process_in(z.float())


def vae_state_dict(vae) -> dict:
    """The VAE's weights through public calls: ``VAE.get_sd()`` (ComfyUI 0.3.x to today), else the
    patcher's ``model_state_dict()``. The tensors may be the host's own (CPU, pinned, inference
    tensors): callers copy them (SDVAEEncoder.from_state_dict does)."""
    for get in (getattr(vae, "get_sd", None), getattr(getattr(vae, "patcher", None), "model_state_dict", None)):
        if callable(get):
            sd = get()
            if sd:
                return sd
    raise ValueError(f"cannot read the weights of this VAE ({type(vae).__name__}): it has neither get_sd() nor a patcher "
                     "with model_state_dict(); ISD needs an SD1.5 VAE loaded by ComfyUI")


def refuse_multigpu(model) -> None:
    """ISD runs the MODEL itself (route B), on its one load device; newer ComfyUI's "MultiGPU CFG Split"
    gives a MODEL copies for other GPUs (``additional_models["multigpu"]``) that only its own samplers
    drive. Refuse such a MODEL by name instead of silently using one GPU or failing inside ComfyUI."""
    extra = getattr(model, "additional_models", None) or {}
    copies = extra.get("multigpu", []) if isinstance(extra, dict) else []
    if copies:
        raise ValueError(f"the MODEL given to ISD is set up for {len(copies) + 1} GPUs (it comes through 'MultiGPU CFG Split'); "
                         "ISD samples on one device. Connect the MODEL from before that node to IDSculpt ISD Guidance.")


def device_context(device):
    """ComfyUI's ``cuda_device_context(device)`` where the host has it (newer releases: makes the model's
    GPU the current CUDA device, for kernels that read it, as CFGGuider.outer_sample does); a no-op
    context on 0.3.64."""
    ctx = getattr(comfy.model_management, "cuda_device_context", None)
    if ctx is None or not isinstance(device, torch.device):
        return contextlib.nullcontext()
    return ctx(device)


def _takes_latent_shapes(fn) -> bool:
    """Whether the host's ``process_conds`` has the ``latent_shapes`` argument (newer releases)."""
    try:
        return "latent_shapes" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _attach_control(cond_list: list[dict], control, chained: dict | None = None) -> list[dict]:
    """Put ``control`` on every cond, chaining a ControlNet the user already applied there.

    As ControlNetApplyAdvanced does, one control object per distinct previous ControlNet, shared by
    positive and negative (``chained``), so ComfyUI can batch both branches in one UNet call.
    """
    chained = {} if chained is None else chained
    out = []
    for c in cond_list:
        c = c.copy()
        prev = c.get("control", None)
        if prev is None:
            ctl = control
        else:
            ctl = chained.get(id(prev))
            if ctl is None:
                ctl = chained[id(prev)] = control.copy().set_previous_controlnet(prev)
        c["control"] = ctl
        c["control_apply_to_uncond"] = False
        out.append(c)
    return out


class ComfyNoisePredictor:
    """``core.guidance.NoisePredictor`` backed by a ComfyUI MODEL (+ CONTROL_NET with landmark hints)."""

    def __init__(self, model, positive, negative, vae, control_net=None, landmarks=None, control_strength: float = 1.0,
                 control_start: float = 0.0, control_end: float = 1.0, resolution: int | None = 512, max_views: int = 4,
                 view_positive: dict | None = None, cuda_graphs: bool = True, view_negative: dict | None = None,
                 view_thresholds: dict | None = None, vae_posterior: str = "sample", generator: torch.Generator | None = None):
        if (control_net is None) != (landmarks is None):
            raise ValueError("connect both control_net (the MediaPipe-face ControlNet) and landmarks, or neither")
        if vae_posterior not in VAE_POSTERIORS:
            raise ValueError(f"vae_posterior must be one of {VAE_POSTERIORS}, got {vae_posterior!r}")
        self.model = model
        self.positive, self.negative = positive, negative
        self.vae = vae
        self.control_net, self.landmarks = control_net, landmarks
        self.control_strength, self.control_range = float(control_strength), (float(control_start), float(control_end))
        self.resolution = resolution
        self.max_views = max_views
        # view-dependent prompts {"front"|"side"|"back"|"overhead": CONDITIONING}; a missing direction
        # uses the plain positive / negative
        self.view_positive = _direction_dict(view_positive, positive, "positive")
        self.view_negative = _direction_dict(view_negative, negative, "negative")
        self.view_thresholds = dict(ISD_VIEW_THRESHOLDS if view_thresholds is None else view_thresholds)
        self.vae_posterior, self.generator = vae_posterior, generator
        # no ID patch on the MODEL: the "ID off" prediction is the plain positive one, no extra row needed
        self.id_patched = has_id_adapter(model)
        ms = model.get_model_object("model_sampling")
        sig = getattr(ms, "sigmas", None)
        if sig is None or sig.dim() != 1 or sig.numel() < 2:
            raise ValueError("ISD needs a discrete-time (SD1.5-style EPS) model; this MODEL has no sigma table")
        self.alphas_cumprod = 1.0 / (1.0 + sig.detach().double().cpu() ** 2)
        self._encoder: DifferentiableVAEEncoder | None = None
        self._state: dict | None = None
        self.cuda_graphs = bool(cuda_graphs)
        self.calls = 0
        self._pending_hints = None  # (cameras, PendingLandmarkImages) from prefetch

    # -- model lifecycle ----------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._state is not None

    def _template_control(self):
        # a control object in the conds so prepare_sampling loads the ControlNet weights once
        return self.control_net.copy().set_cond_hint(torch.zeros(1, 3, 64, 64), self.control_strength, self.control_range, vae=self.vae)

    def open(self) -> None:
        if self._state is not None:
            return
        # Model loading happens here (prepare_sampling). It must run under inference mode, as in
        # ComfyUI's samplers: the weights are inference tensors, and moving them to the GPU outside
        # inference mode (the sculpt's autograd context) leaves parameters that fail in later forwards
        # ("Inference tensors do not track version counter"). On CPU nothing moves, so only a GPU shows it.
        with torch.inference_mode(), device_context(self.model.load_device):
            self._open()

    def _raw_conds(self) -> dict:
        """Every CONDITIONING the predictor runs, by cond key, as the nodes give them."""
        conds = {"positive": self.positive, "negative": self.negative}
        for name, c in self.view_positive.items():
            conds[f"positive_{name}"] = c
        for name, c in self.view_negative.items():
            conds[f"negative_{name}"] = c
        return conds

    def _open(self) -> None:
        refuse_multigpu(self.model)
        # CFGGuider's own first step, public in every release: it converts the conds and, on newer
        # ComfyUI, swaps a dynamically loaded MODEL whose conds carry hooks (LoRA hooks, Set Hooks) for
        # its non-dynamic delegate, whose weights hook patching can change. The patcher it settles on is
        # the one loaded, run and cleaned up below.
        guider = comfy.samplers.CFGGuider(self.model)
        guider.inner_set_conds(self._raw_conds())
        model = guider.model_patcher
        conds = {k: [c.copy() for c in v] for k, v in guider.original_conds.items()}
        comfy.samplers.preprocess_conds_hooks(conds)  # ControlNets' extra hooks join the conds' hooks
        model_options = comfy.model_patcher.create_model_options_clone(model.model_options)
        model_options.setdefault("transformer_options", {})
        hook_mode = model.hook_mode
        if comfy.samplers.get_total_hook_groups_in_conds(conds) <= 1:  # weights never change per step: no cache
            model.hook_mode = comfy.hooks.EnumHookMode.MinVram
        try:
            comfy.sampler_helpers.prepare_model_patcher(model, conds, model_options)
            comfy.samplers.filter_registered_hooks_on_conds(conds, model_options)
            load_conds = conds
            if self.control_net is not None:
                tmpl = self._template_control()
                chained: dict = {}
                load_conds = {k: _attach_control(v, tmpl, chained) for k, v in conds.items()}
            res = self.resolution or 512
            noise_shape = [self.max_views, 4, res // 8, res // 8]
            real_model, _, loaded = comfy.sampler_helpers.prepare_sampling(model, noise_shape, load_conds, model_options)
        except BaseException:
            model.hook_mode = hook_mode
            model.restore_hook_patches()
            raise
        comfy.samplers.cast_to_load_options(model_options, device=model.load_device, dtype=model.model_dtype())
        model.pre_run()
        # UNet + ControlNet replayed from CUDA graphs: the CFG-batch-2 calls are launch-bound
        graphs = DiffusionGraphs(model, self.control_net, enabled=self.cuda_graphs)
        graphs.add_to(model_options)
        control_patch = graphs.control_patched()
        control_patch.__enter__()
        self._state = {"conds": conds, "load_conds": load_conds, "model_options": model_options, "patcher": model,
                       "hook_mode": hook_mode, "real_model": real_model, "loaded": loaded, "device": model.load_device,
                       "graphs": graphs, "control_patch": control_patch}

    def close(self) -> None:
        st = self._state
        if st is None:
            return
        with torch.inference_mode(), device_context(st["device"]):  # offloading moves weights too (see open)
            self._close()

    def _close(self) -> None:
        st, self._state = self._state, None
        if st is None:
            return
        model = st["patcher"]
        try:
            st["control_patch"].__exit__(None, None, None)
            st["graphs"].close()
            model.cleanup()
        finally:
            comfy.sampler_helpers.cleanup_models(st["load_conds"], st["loaded"])
            comfy.samplers.cast_to_load_options(st["model_options"], device=model.offload_device)
            model.hook_mode = st["hook_mode"]
            model.restore_hook_patches()

    # -- host cache and model tracking (newer ComfyUI; plain attributes elsewhere) -----------
    def get_models(self) -> list:
        """The host's model patchers this predictor runs: the MODEL (and the models nested in it), the
        landmark ControlNet and ControlNets already in the prompts, and the VAE's patcher. ComfyUI's
        PromptModelTracker reads ``get_models()`` on node outputs and keeps the dynamically loaded ones
        marked in use by the running prompt, between the ISD Guidance node and the sculpt."""
        models = [self.model]
        nested = getattr(self.model, "get_nested_additional_models", None)
        if callable(nested):
            models += list(nested())
        controls = [self.control_net] + [c[1].get("control") for cond in self._raw_conds().values() for c in cond
                                         if isinstance(c, (list, tuple)) and len(c) > 1 and isinstance(c[1], dict)]
        for ctl in controls:
            get = getattr(ctl, "get_models", None)
            if callable(get):
                models += list(get())
        models.append(getattr(self.vae, "patcher", None))
        return unique_models(models)

    def _comfy_cache_tensors(self) -> list:
        """What a cached ISD_GUIDANCE holds, for ComfyUI's RAM-pressure cache: the prompts' tensors, the
        sigma table and the private VAE encoder once built (CPU ones count), plus the host models it
        keeps alive, which that cache treats as it treats its own outputs holding a model (evicted first
        once a prompt no longer uses them)."""
        out: list = [self.alphas_cumprod]
        for cond in self._raw_conds().values():
            out += [c[0] for c in cond if isinstance(c, (list, tuple)) and c and isinstance(c[0], torch.Tensor)]
        if self._encoder is not None:
            out += module_tensors(self._encoder)
        return out + self.get_models()

    # -- NoisePredictor ------------------------------------------------------------------------
    def encode(self, images: torch.Tensor) -> torch.Tensor:
        if self._encoder is None:
            dev = self.model.load_device
            self._encoder = DifferentiableVAEEncoder(self.vae, self.model.get_model_object("latent_format"), dev,
                                                     posterior=self.vae_posterior, generator=self.generator)
        h, w = images.shape[1:3]
        if self.resolution and (h, w) != (self.resolution, self.resolution):
            images = F.interpolate(images.movedim(-1, 1), (self.resolution, self.resolution), mode="bilinear",
                                   align_corners=False).movedim(1, -1)
        elif h % 8 or w % 8:
            raise ValueError(f"render size {h}x{w} must be a multiple of 8 (the VAE downsamples by 8)")
        return self._encoder(images)

    def prefetch(self, cameras) -> None:
        """Start drawing the landmark hints of these cameras (``FaceLandmarks3D.draw_async``)."""
        if self.landmarks is not None and hasattr(self.landmarks, "draw_async"):
            self._pending_hints = (cameras, self.landmarks.draw_async(cameras))

    def landmark_hints(self, views: ViewBatch) -> torch.Tensor:
        """Landmark images [B,3,H,W] (0..1) of this step's cameras for the ControlNet."""
        if views.cameras is None:
            raise ValueError("the landmark ControlNet needs the cameras of the rendered views")
        lm = self.landmarks
        pending, self._pending_hints = self._pending_hints, None
        if pending is not None and pending[0] is views.cameras:
            img = pending[1].result()
        else:
            img = lm.draw(views.cameras) if hasattr(lm, "draw") else lm(views.cameras)
        img = torch.as_tensor(img).detach()
        dev = self._state["device"] if self._state is not None else img.device
        if img.device.type == "cpu":
            # On the GPU before ComfyUI sees it: ControlNet.get_control resizes the hint on its device and
            # then copies it over; a CPU hint meant a CPU resize (~5 ms) and a blocking copy every ISD step
            # (profiled in a server run on the H100, docs/PERFORMANCE.md).
            img = to_device(img, dev)
        return img.float().movedim(-1, 1).clamp(0, 1)

    @torch.no_grad()
    def predict_noise(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction:
        auto = self._state is None
        if auto:
            self.open()
        try:
            # ComfyUI's models run under inference mode, as in its samplers: their weights are inference
            # tensors, and on CUDA some ops on them fail outside it ("Inference tensors do not track
            # version counter"). The results are cloned back out, so the ISD loss can keep them for backward.
            with torch.inference_mode(), device_context(self._state["device"]):
                out = self._predict(x, sigma, views)
            return NoisePrediction(out.cond.clone(), out.uncond.clone(),
                                   None if out.cond_no_id is None else out.cond_no_id.clone())
        finally:
            if auto:
                self.close()

    def _prompt_keys(self, views: ViewBatch) -> list[tuple[str, str]]:
        """The (positive, negative) cond key of each view: its direction's prompts, else the plain pair."""
        n = len(views.azimuth)
        if not self.view_positive and not self.view_negative:
            return [("positive", "negative")] * n
        names = view_direction(views.azimuth, views.elevation, **self.view_thresholds)
        return [(f"positive_{d}" if d in self.view_positive else "positive",
                 f"negative_{d}" if d in self.view_negative else "negative") for d in names]

    @staticmethod
    def _merge_rows(per_view: list[list[dict]]) -> list[dict] | None:
        """One cond list whose cross_attn holds one row per view, or None when the prompts can't merge.

        ComfyUI uses a cross_attn whose batch equals the latent batch row by row, so views with
        different prompts still run in one UNet call. Needs single-entry conds of one token length.
        """
        if any(len(c) != 1 or "cross_attn" not in c[0] or c[0].get("area") is not None or c[0].get("mask") is not None for c in per_view):
            return None
        rows = [c[0]["cross_attn"][:1] for c in per_view]
        if any(r.shape != rows[0].shape for r in rows):
            return None
        merged = per_view[0][0].copy()
        merged["cross_attn"] = torch.cat(rows)
        merged["model_conds"] = dict(merged.get("model_conds", {}))
        return [merged]

    def _predict(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction:
        """Batches the views into as few UNet calls as their prompts allow.

        Views that need the "ID off" row (``views.cond_no_id``) and views that don't run in separate
        calls, so the extra row is computed only where asked for; within each, views with different
        prompts share one call when their token lengths match (row-wise cross_attn), else one call per
        (positive, negative) pair."""
        st = self._state
        dev = st["device"]
        x = x.to(dev, torch.float32)
        sigma = sigma.to(dev, torch.float32).reshape(-1)
        conds = st["conds"]
        keys = self._prompt_keys(views)
        asked = views.wants_cond_no_id()
        # without our ID patch the "ID off" prediction is cond itself: no extra row
        extra = asked if self.id_patched else [False] * len(asked)
        jobs: list[tuple[list[int], list[dict], list[dict], bool]] = []
        parts: dict[bool, list[int]] = {}
        for i, e in enumerate(extra):
            parts.setdefault(e, []).append(i)
        for e, idx in parts.items():
            pairs = [keys[i] for i in idx]
            if all(p == pairs[0] for p in pairs):
                jobs.append((idx, conds[pairs[0][0]], conds[pairs[0][1]], e))
                continue
            pos = self._merge_rows([conds[p] for p, _ in pairs])
            neg = self._merge_rows([conds[n] for _, n in pairs])
            if pos is not None and neg is not None:
                jobs.append((idx, pos, neg, e))
                continue
            # prompts that cannot share a batch: one UNet call per (positive, negative) pair
            groups: dict[tuple[str, str], list[int]] = {}
            for i, pair in zip(idx, pairs):
                groups.setdefault(pair, []).append(i)
            jobs += [(g, conds[pk], conds[nk], e) for (pk, nk), g in groups.items()]

        want_no_id = any(asked)
        hint = self.landmark_hints(views) if self.control_net is not None else None  # drawn once for all calls
        if len(jobs) == 1:  # the common case: every view in one call, nothing to scatter
            _, pos, neg, e = jobs[0]
            out = self._run(x, sigma, views, pos, neg, e, hint)
            return NoisePrediction(out.cond, out.uncond, (out.cond_no_id if e else out.cond) if want_no_id else None)
        cond, uncond = torch.empty_like(x), torch.empty_like(x)
        no_id = torch.empty_like(x) if want_no_id else None
        for idx, pos, neg, e in jobs:
            ii = torch.tensor(idx, device=dev)
            out = self._run(x[ii], sigma[ii], _slice_views(views, idx), pos, neg, e, None if hint is None else hint[ii])
            cond[ii], uncond[ii] = out.cond, out.uncond
            if no_id is not None:
                no_id[ii] = out.cond_no_id if e else out.cond
        return NoisePrediction(cond, uncond, no_id)

    def _run(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch, positive: list[dict], negative: list[dict],
             no_id_row: bool = False, hint: torch.Tensor | None = None) -> NoisePrediction:
        """One calc_cond_batch: [positive, negative] (+ the positive again with ID off when ``no_id_row``);
        ``hint``: these views' landmark images for the ControlNet (drawn here when None)."""
        st = self._state
        dev = st["device"]
        real_model = st["real_model"]
        names = ["positive", "negative"] + (["positive_no_id"] if no_id_row else [])
        conds = {"positive": [c.copy() for c in positive], "negative": [c.copy() for c in negative]}
        if no_id_row:
            conds["positive_no_id"] = [c.copy() for c in positive]
        control = None
        if self.control_net is not None:
            hint = self.landmark_hints(views) if hint is None else hint
            control = self.control_net.copy().set_cond_hint(hint, self.control_strength, self.control_range, vae=self.vae)
            chained: dict = {}
            conds = {k: _attach_control(v, control, chained) for k, v in conds.items()}
        if _takes_latent_shapes(comfy.samplers.process_conds):
            # newer CFGGuider.inner_sample: the model unpacks its input by these shapes; a plain latent is
            # one shape (and a nested-latent KSampler run before must not leave its shapes behind)
            shapes = [x.shape]
            real_model.latent_shapes = shapes
            conds = comfy.samplers.process_conds(real_model, x, conds, dev, latent_shapes=shapes)
        else:
            conds = comfy.samplers.process_conds(real_model, x, conds, dev)
        model_options = dict(st["model_options"])
        to = dict(model_options.get("transformer_options", {}))
        to[ID_MASK_KEY] = to_device(views.id_enabled, dev)
        to[ID_ENABLED_KEY] = True
        # the third cond (index 2 in cond_or_uncond) runs with no ID tokens at all
        to[ID_OFF_CONDS_KEY] = (2,) if no_id_row else ()
        model_options["transformer_options"] = to
        try:
            x0 = comfy.samplers.calc_cond_batch(real_model, [conds[k] for k in names], x, sigma, model_options)
        finally:
            if control is not None:
                for k in conds:
                    for c in conds[k]:
                        if "control" in c:
                            c["control"].cleanup()
        s = sigma.view(-1, 1, 1, 1)
        self.calls += 1
        eps = [(x - x0_k) / s for x0_k in x0]
        return NoisePrediction(eps[0], eps[1], eps[2] if no_id_row else None)


def _direction_dict(per_direction: dict | None, plain, what: str) -> dict:
    """The directions with a prompt of their own (None or the plain prompt itself: left out)."""
    out = {k: v for k, v in (per_direction or {}).items() if v is not None and v is not plain}
    bad = set(out) - set(VIEW_DIRECTIONS)
    if bad:
        raise ValueError(f"view-dependent {what} prompt keys must be front/side/back/overhead, got {sorted(bad)}")
    return out


def _slice_views(v: ViewBatch, idx: list[int]) -> ViewBatch:
    ii = torch.tensor(idx)
    return ViewBatch(v.azimuth[ii], v.elevation[ii], v.id_enabled[ii], v.t[ii], v.sigma[ii.to(v.sigma.device)],
                     None if v.cameras is None else v.cameras[idx],
                     None if v.cond_no_id is None else torch.as_tensor(v.cond_no_id)[ii])


class ComfyISDGuidance(ISDGuidance):
    """core.guidance.ISDGuidance (the maths, unchanged) as it travels on an ISD_GUIDANCE socket: it also
    answers ComfyUI's cache hooks (newer releases) for what its predictor holds."""

    def get_models(self) -> list:
        get = getattr(self.predictor, "get_models", None)
        return list(get()) if callable(get) else []

    def _comfy_cache_tensors(self) -> list:
        get = getattr(self.predictor, "_comfy_cache_tensors", None)
        return [self.alphas_cumprod, self.sigmas] + (list(get()) if callable(get) else [])


def build_isd_guidance(model, positive, negative, vae, control_net=None, landmarks=None, cfg: float = 50.0,
                       t_min: int = 20, t_max: int = 500, anneal: str = "none", t_max_final: int = 200,
                       id_azimuth_limit: float = 70.0, grad_clip: float = 0.0, control_strength: float = 1.0,
                       control_start: float = 0.0, control_end: float = 1.0, resolution: int = 512,
                       seed: int | None = None, view_positive: dict | None = None, cuda_graphs: bool = True,
                       view_negative: dict | None = None, view_thresholds: dict | None = None,
                       estimator: str = "authors", vae_posterior: str = "sample") -> ISDGuidance:
    # one generator for the whole step, in draw order: VAE posterior noise, timesteps, injected noise
    gen = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    predictor = ComfyNoisePredictor(model, positive, negative, vae, control_net, landmarks, control_strength,
                                    control_start, control_end, resolution, view_positive=view_positive,
                                    cuda_graphs=cuda_graphs, view_negative=view_negative, view_thresholds=view_thresholds,
                                    vae_posterior=vae_posterior, generator=gen)
    config = ISDConfig(t_min=t_min, t_max=t_max, anneal=anneal, t_max_final=t_max_final, cfg=cfg,
                       grad_clip=grad_clip if grad_clip and grad_clip > 0 else None,
                       id_azimuth_limit=id_azimuth_limit if id_azimuth_limit < 180 else None, estimator=estimator)
    return ComfyISDGuidance(predictor, config, generator=gen)


class ISDGuidanceNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptISDGuidance",
            display_name="IDSculpt ISD Guidance",
            category="IDSculpt/guidance",
            description="ID-aware score distillation settings + models, for the DMTet Sculpt node.",
            inputs=[
                io.Model.Input("model", tooltip="Normal-adapted SD1.5 MODEL, already through IDSculpt Apply ID Adapter (and any LoRA)."),
                io.Conditioning.Input("positive", tooltip="Prompt, e.g. 'a DSLR portrait of <caption>, black background, normal map'."),
                io.Conditioning.Input("negative", tooltip="Negative prompt (CFG's unconditional branch)."),
                io.Vae.Input("vae", tooltip="SD1.5 VAE (ID-Sculpt: sd-vae-ft-mse) used to encode the rendered normal maps, with gradient."),
                io.Float.Input("cfg", default=50.0, min=1.0, max=200.0, step=0.5, tooltip="Classifier-free guidance scale (ID-Sculpt ISD: 50)."),
                io.Int.Input("t_min", default=20, min=1, max=998, tooltip="Smallest diffusion timestep sampled (of 1000)."),
                io.Int.Input("t_max", default=500, min=2, max=999, tooltip="Largest diffusion timestep sampled (of 1000)."),
                io.Float.Input("id_azimuth_limit", default=70.0, min=0.0, max=180.0, step=1.0,
                               tooltip="ID tokens only for views with |azimuth| below this (degrees); 180 = every view."),
                io.ControlNet.Input("control_net", optional=True, tooltip="MediaPipe-face landmark ControlNet (CrucibleAI/ControlNetMediaPipeFace, SD1.5)."),
                LANDMARKS.Input("landmarks", optional=True, tooltip="3D landmarks on the head (IDSculpt Landmark Render): drawn per view as the ControlNet hint."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=3.0, step=0.05, optional=True, tooltip="Landmark ControlNet strength."),
                io.Combo.Input("anneal", options=["none", "linear", "sqrt"], default="none", optional=True,
                               tooltip="Lower t_max toward t_max_final over the optimisation ('none' = ID-Sculpt)."),
                io.Int.Input("t_max_final", default=200, min=2, max=999, optional=True, tooltip="t_max at the end of the run when annealing."),
                io.Float.Input("grad_clip", default=0.0, min=0.0, max=100.0, step=0.1, optional=True,
                               tooltip="Clamp the latent gradient to ±this (0 = off, ID-Sculpt)."),
                io.Int.Input("resolution", default=512, min=64, max=1024, step=64, optional=True,
                             tooltip="Renders are resized to this square size before VAE encoding (SD1.5: 512)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, optional=True,
                             tooltip="Seed of the VAE posterior sample, timestep and noise draws."),
                io.Combo.Input("estimator", options=list(ISD_ESTIMATORS), default="authors", optional=True,
                               tooltip="What the CFG prediction is compared with. 'authors' (ID-Sculpt's code): the positive "
                                       "prompt's prediction with ID off (one more UNet row for views with ID; none for the "
                                       "others, whose gradient is then (cfg-1)·w·(eps_c - eps_u)). 'sds': the injected noise "
                                       "(plain score distillation)."),
                io.Combo.Input("vae_posterior", options=list(VAE_POSTERIORS), default="sample", optional=True,
                               tooltip="Latents of the render: a sample of the VAE posterior (ID-Sculpt's code) or its mean."),
                *view_conditioning_inputs(ISD_VIEW_THRESHOLDS),
                cuda_graphs_input(),
            ],
            outputs=[ISD_GUIDANCE.Output(display_name="guidance")],
        )

    @classmethod
    def validate_inputs(cls, t_min=None, t_max=None, anneal="none", t_max_final=None, resolution=None) -> bool | str:
        from .validation import known, verdict  # (local: this commit touches the node class only)

        t_range = final = size = None
        if known(t_min) and known(t_max) and t_min > t_max:
            t_range = (f"t_min ({t_min}) is above t_max ({t_max}): each guidance step draws its timestep from "
                       "[t_min, t_max] (ID-Sculpt: 20 to 500)")
        if known(anneal) and anneal != "none" and known(t_max_final) and known(t_min) and known(t_max) \
                and not t_min <= t_max_final <= t_max:
            final = (f"t_max_final ({t_max_final}) must lie in [t_min, t_max] = [{t_min}, {t_max}]: anneal '{anneal}' "
                     "lowers t_max toward it over the run")
        if known(resolution) and int(resolution) % 8:
            size = f"resolution ({resolution}) must be a multiple of 8: the VAE encodes 8x8-pixel blocks (SD1.5: 512)"
        return verdict(cls, {"t_min": t_min, "t_max": t_max, "anneal": anneal, "t_max_final": t_max_final,
                             "resolution": resolution}, t_range, final, size)

    @classmethod
    def execute(cls, model, positive, negative, vae, cfg: float, t_min: int, t_max: int, id_azimuth_limit: float,
                control_net=None, landmarks=None, control_strength: float = 1.0, anneal: str = "none",
                t_max_final: int = 200, grad_clip: float = 0.0, resolution: int = 512, seed: int = 0,
                estimator: str = "authors", vae_posterior: str = "sample", cuda_graphs: bool = True,
                **per_direction) -> io.NodeOutput:
        if t_min > t_max:
            raise ValueError(f"t_min ({t_min}) must not exceed t_max ({t_max})")
        if not math.isfinite(cfg):
            raise ValueError("cfg must be a finite number")
        if not has_id_adapter(model):
            log.warning("IDSculpt ISD Guidance: the MODEL carries no ID adapter, so ISD runs without identity tokens; "
                        "put IDSculpt Apply ID Adapter between the model loader and this node for ID-aware guidance")
        vc = view_conditioning(positive, negative, ISD_VIEW_THRESHOLDS, **per_direction)
        g = build_isd_guidance(model, positive, negative, vae, control_net, landmarks, cfg, t_min, t_max, anneal,
                               t_max_final, id_azimuth_limit, grad_clip, control_strength, resolution=resolution, seed=seed,
                               view_positive=vc.positive, view_negative=vc.negative, view_thresholds=vc.thresholds,
                               cuda_graphs=cuda_graphs, estimator=estimator, vae_posterior=vae_posterior)
        return io.NodeOutput(g)


NODES = [ISDGuidanceNode]
