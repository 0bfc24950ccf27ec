"""The ComfyUI-backed noise predictor of ISD (``core.guidance.NoisePredictor``).

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

import torch
import torch.nn.functional as F

import comfy.hooks
import comfy.model_management
import comfy.model_patcher
import comfy.sampler_helpers
import comfy.samplers

from ...core.guidance import ISD_VIEW_THRESHOLDS, VIEW_DIRECTIONS, NoisePrediction, ViewBatch, view_direction
from ...core.speed.transfer import to_device
from .cuda_graphs import DiffusionGraphs
from .id_patch import ID_ENABLED_KEY, ID_MASK_KEY, ID_OFF_CONDS_KEY, has_id_adapter
from .sampling import attach_control, stack_token_rows
from .vae_encoder import VAE_POSTERIORS, DifferentiableVAEEncoder
from .vram import module_tensors, unique_models


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
                load_conds = {k: attach_control(v, tmpl, chained) for k, v in conds.items()}
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
        different prompts still run in one UNet call. Needs single-entry conds without area or mask;
        token lengths are matched by repeating to their LCM (``stack_token_rows``), so a view whose
        prompt is longer does not split the step into calls of varying shapes.
        """
        if any(len(c) != 1 or "cross_attn" not in c[0] or c[0].get("area") is not None or c[0].get("mask") is not None for c in per_view):
            return None
        cross = stack_token_rows([c[0]["cross_attn"][:1] for c in per_view])
        if cross is None:
            return None
        merged = per_view[0][0].copy()
        merged["cross_attn"] = cross
        merged["model_conds"] = dict(merged.get("model_conds", {}))
        return [merged]

    def _predict(self, x: torch.Tensor, sigma: torch.Tensor, views: ViewBatch) -> NoisePrediction:
        """Batches the views into as few UNet calls as their prompts allow.

        One view: it runs with the "ID off" row only when ``views.cond_no_id`` asks for it. Several views:
        all run with it, so the step is one call of one shape. Views with different prompts share one call
        (row-wise cross_attn, token lengths repeated to their LCM), else one call per (positive, negative) pair.
        A view that did not ask gets ``cond`` as its ``cond_no_id`` (ID is off there already)."""
        st = self._state
        dev = st["device"]
        x = x.to(dev, torch.float32)
        sigma = sigma.to(dev, torch.float32).reshape(-1)
        conds = st["conds"]
        keys = self._prompt_keys(views)
        asked = views.wants_cond_no_id()
        # without our ID patch the "ID off" prediction is cond itself: no extra row
        extra = asked if self.id_patched else [False] * len(asked)
        if self.id_patched and len(extra) > 1:
            # Several views per step: every view gets the ID-off row, so the step is ONE UNet/ControlNet call
            # of one shape (3 rows per view). Only views with ID on ask for it (on average 39 % at +-180 deg),
            # so asking per view meant two calls of B + 1 random shapes a step: a CUDA graph for each (195
            # captures and 11 GiB in a 625-step run on an H100) and two launches where one bigger batch costs
            # less. The rows nobody asked for are replaced by cond below (their estimator is cond itself).
            extra = [True] * len(extra)
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
            cond, uncond, no_id = out.cond, out.uncond, (out.cond_no_id if e else out.cond)
        else:
            cond, uncond, no_id = torch.empty_like(x), torch.empty_like(x), torch.empty_like(x)
            for idx, pos, neg, e in jobs:
                ii = torch.tensor(idx, device=dev)
                out = self._run(x[ii], sigma[ii], _slice_views(views, idx), pos, neg, e, None if hint is None else hint[ii])
                cond[ii], uncond[ii] = out.cond, out.uncond
                no_id[ii] = out.cond_no_id if e else out.cond
        if not want_no_id:
            return NoisePrediction(cond, uncond, None)
        # views that did not ask (ID off there already) keep cond: their estimator is cond itself
        sel = torch.tensor(asked, device=cond.device).view(-1, 1, 1, 1)
        return NoisePrediction(cond, uncond, torch.where(sel, no_id, cond))

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
            conds = {k: attach_control(v, control, chained) for k, v in conds.items()}
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

