"""Arithmetic of each stage's steps at full size (FLOPs): the floor in docs/PERFORMANCE.md.

FLOPs depend on shapes, not on weights, values or the device, so this runs on a CPU in ~15 s:

1. ``per_sample``: FLOPs per sample of every network at the method's sizes (512² views, 64² latents,
   VGG16 on 256², PanoHead at neural 64² and 128²), full-size models built from ComfyUI's own classes
   and the pack's, counted by torch's ``FlopCounterMode`` under ``FakeTensorMode`` (shapes propagate,
   no arithmetic runs, no activation is stored). A ``+grad`` key is forward plus the backward that the
   step really takes: the gradient to the input only, the weights being frozen there.
2. ``samples_per_step``: how many samples each step pushes through each network, recorded while the
   pack's own step code runs once with tiny models (CFG batches, sampler steps, which calls carry a
   gradient), so the count follows the code rather than a formula.
3. ``step_gflop``: (1) × (2) for each step; PanoHead's W+ and PTI steps are counted whole (their
   own step code under FakeTensorMode).

FlopCounterMode counts matrix products, convolutions and attention. Rasterisation, marching tets and
elementwise work count zero, so the geometry steps have no arithmetic floor (they are memory- and
launch-bound). The ID adapter's 16 extra cross-attention tokens are left out of the UNet's count
(< 0.1 % of it).

    python bench/bench_flops.py --out bench/results/flops.json [--comfy PATH]
    python bench/bench_flops.py --smoke          # tiny networks in (1): checks the plumbing only
"""
from __future__ import annotations

import collections
import contextlib
import json
import os
import sys
import time
from typing import Any, Callable, Iterator

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402
import _timing  # noqa: E402
from _projection import workflow_settings  # noqa: E402

_pack.load(tests=True)

GRAD = "+grad"
RESOLUTION = 512  # the method's view size (ISD renders, inpaint crops, refine views)
PANOHEAD_NEURAL = (64, 128)


# ---------------------------------------------------------------------------------- counting
def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` under FakeTensorMode (real tensors it meets are treated as fake: weights
    built on the CPU are read for their shapes only)."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.utils.flop_counter import FlopCounterMode

    with FakeTensorMode(allow_non_fake_inputs=True), FlopCounterMode(display=False) as counter:
        fn()
    return int(counter.get_total_flops())


def _forward_and_input_backward(net: Callable[[torch.Tensor], Any], x: torch.Tensor) -> None:
    """Forward with a gradient to ``x`` and the backward of a scalar made from the outputs."""
    x = x.clone().requires_grad_(True)
    out = net(x)
    outs = out if isinstance(out, (list, tuple)) else [out]
    sum(o.float().sum() for o in outs).backward()


def per_sample(net: Callable[[torch.Tensor], Any], x: torch.Tensor, grad: bool = False) -> int:
    """FLOPs per sample of ``net`` on the batch ``x``; with ``grad`` forward + input backward."""
    if grad:
        total = count_flops(lambda: _forward_and_input_backward(net, x))
    else:
        def fwd() -> None:
            with torch.no_grad():
                net(x)
        total = count_flops(fwd)
    return total // x.shape[0]


# ---------------------------------------------------------------------------------- (1) networks
def network_flops(full: bool, res: int) -> dict[str, int]:
    """Per-sample FLOPs of the diffusion-side networks at view size ``res`` (latents res/8)."""
    import comfy.cldm.cldm
    import comfy.latent_formats
    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    from tiny_models import sd15_unet_config, tiny_vae

    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.nodes.engines.vae_encoder import DifferentiableVAEEncoder

    cfg = sd15_unet_config(full, torch.float32)
    ctx = cfg["context_dim"]
    # disable_weight_init: uninitialised weights (never read under fake tensors), built in milliseconds
    unet = openaimodel.UNetModel(**cfg, operations=comfy.ops.disable_weight_init, device="cpu")
    cn_cfg = dict(cfg)
    cn_cfg.pop("out_channels")
    control = comfy.cldm.cldm.ControlNet(**cn_cfg, hint_channels=3, operations=comfy.ops.disable_weight_init, device="cpu")
    vae = tiny_vae(full=full, dtype=torch.float32)
    encoder = DifferentiableVAEEncoder(vae, comfy.latent_formats.SD15(), torch.device("cpu"), torch.float32)
    decoder = vae.first_stage_model
    vgg = VGG16Perceptual()

    lat = res // 8
    x = torch.zeros(1, 4, lat, lat)
    t = torch.full((1,), 500.0)
    context = torch.zeros(1, 77, ctx)
    hint = torch.zeros(1, 3, res, res)
    image = torch.zeros(1, res, res, 3)
    return {
        "unet": per_sample(lambda z: unet(z, t, context=context), x),
        "controlnet": per_sample(lambda z: control(z, hint, t, context), x),
        "vae_encoder": per_sample(encoder, image),
        "vae_encoder" + GRAD: per_sample(encoder, image, grad=True),
        "vae_decoder": per_sample(decoder.decode, x),
        "vgg_taps": per_sample(vgg.taps, torch.zeros(1, 3, res, res)),
        "vgg_taps" + GRAD: per_sample(vgg.taps, torch.zeros(1, 3, res, res), grad=True),
    }


def panohead_flops(full: bool) -> dict[str, int]:
    """FLOPs of one W+ and one PTI step (render, loss, backward; Adam is elementwise) per neural
    rendering resolution, through core.panohead.invert's own step functions."""
    import importlib

    from idsculpt.core.camera import eg3d_frontal_label
    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.core.panohead.triplane import TriPlaneGenerator, release_config, tiny_config

    inv = importlib.import_module("idsculpt.core.panohead.invert")
    cfg = inv.InversionConfig()
    torch.manual_seed(0)
    g = TriPlaneGenerator(**(release_config() if full else tiny_config())).eval().requires_grad_(False)
    vgg = VGG16Perceptual()
    lab = eg3d_frontal_label()
    # the target and its VGG taps are computed once per loop, outside the step (real tensors here)
    target = torch.zeros(1, 3, g.img_resolution, g.img_resolution)
    with torch.no_grad():
        taps = vgg.taps(target, cfg.perceptual_size)
    w_avg = torch.zeros(1, g.num_ws, g.w_dim)
    out: dict[str, int] = {}
    for neural in (PANOHEAD_NEURAL if full else (16,)):
        def w_step() -> None:
            w_opt = w_avg.clone().requires_grad_(True)
            synth = inv._synth(g, w_opt, lab, neural, torch.Generator())
            inv._w_loss(vgg, target, taps, synth, w_opt, w_avg, cfg).backward()

        def pti_step() -> None:
            g.requires_grad_(True)
            try:
                synth = inv._synth(g, w_avg, lab, neural, torch.Generator())
                inv._pti_loss(vgg, target, taps, synth, cfg).backward()
            finally:
                g.requires_grad_(False)
                for p in g.parameters():  # the fake gradients the backward left
                    p.grad = None

        out[f"panohead_w_step_neural{neural}"] = count_flops(w_step)
        out[f"panohead_pti_step_neural{neural}"] = count_flops(pti_step)
    return out


# ---------------------------------------------------------------------------------- (2) call structure
class SampleLog:
    """Counts the samples each wrapped callable receives (the first tensor argument's batch), with
    ``+grad`` when it carries a gradient; ``watch`` restores the callables afterwards."""

    def __init__(self) -> None:
        self.samples: collections.Counter = collections.Counter()

    @contextlib.contextmanager
    def watch(self, targets: list[tuple[Any, str, str]]) -> Iterator["SampleLog"]:
        saved = []
        for obj, attr, name in targets:
            had = attr in vars(obj)
            orig = getattr(obj, attr)
            saved.append((obj, attr, had, vars(obj).get(attr)))
            setattr(obj, attr, self._wrap(orig, name))
        try:
            yield self
        finally:
            for obj, attr, had, value in reversed(saved):
                if had:
                    setattr(obj, attr, value)
                else:
                    delattr(obj, attr)

    def _wrap(self, orig: Callable, name: str) -> Callable:
        def wrapped(*args, **kwargs):
            x = next((a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)), None)
            if x is not None:
                grad = torch.is_grad_enabled() and x.requires_grad
                self.samples[name + (GRAD if grad else "")] += int(x.shape[0])
            return orig(*args, **kwargs)
        return wrapped

    def take(self) -> dict[str, int]:
        out, self.samples = dict(self.samples), collections.Counter()
        return out


def _diffusion_targets(model, control, vae) -> list[tuple[Any, str, str]]:
    fsm = vae.first_stage_model
    return [(model.model.diffusion_model, "forward", "unet"), (control.control_model, "forward", "controlnet"),
            (fsm.encoder, "forward", "vae_encoder"), (fsm.decoder, "forward", "vae_decoder")]


def call_structure(workflow: dict) -> dict[str, dict[str, int]]:
    """Samples per step and network, from one run of each step's code with tiny models on the CPU
    at the workflow's settings (sampler steps, CFG, views per ISD step)."""
    import nodes as comfy_nodes  # ComfyUI's nodes.py (ComfyUI is first on sys.path)
    from bench_isd import FixedHints, isd_setup
    from bench_render import icosphere
    from tiny_models import TINY_CONTEXT, tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae

    from idsculpt.core.camera import Cameras
    from idsculpt.core.mesh import HeadMesh
    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.core.texture import ReferenceView, RefineConfig, normalbae_control, refine_texture, render_textured, unwrap_uv
    from idsculpt.nodes.engines.sampling import ComfyDenoiser, ComfyInpainter, ComfySampling

    res, dev = 64, torch.device("cpu")
    model, control, vae = tiny_sd15_model(), tiny_controlnet(), tiny_vae()
    pos, neg = tiny_conditioning(3, width=TINY_CONTEXT), tiny_conditioning(4, width=TINY_CONTEXT)
    log = SampleLog()
    out: dict[str, dict[str, int]] = {}

    isd, inpaint, refine, ksampler = workflow["isd"], workflow["inpaint"], workflow["refine"], workflow["reference_geometry"]
    for n in sorted({workflow["sculpt"]["guidance_views"], 1, 4}):  # both the fast default (4) and the paper (1)
        g, cams, image = isd_setup(model, pos, neg, vae, control, FixedHints(n, res, dev), n, res, dev)
        g.config.cfg = isd["cfg"]
        # the ISD encodes through its own copy of the VAE encoder (made on first use by deep copy, so
        # ComfyUI's encoder is not watched here: the copy would inherit the wrapper)
        targets = [t for t in _diffusion_targets(model, control, vae) if t[2] != "vae_encoder"]
        with g, log.watch(targets + [(g.predictor, "encode", "vae_encoder")]):
            g(image.clone().requires_grad_(True), cams).backward()
        out[f"isd_step_{n}view"] = log.take()

    v, f = icosphere(2, dev)
    mesh, _ = unwrap_uv(HeadMesh(v, f), 256)
    cam = Cameras.orbit(-15.0, 45.0, 3.8, 30.0, res)
    sampling = ComfySampling(model, pos, neg, vae, control, 1.0, steps=inpaint["steps"], cfg=inpaint["cfg"],
                             sampler_name=inpaint["sampler_name"], scheduler=inpaint["scheduler"], cuda_graphs=False)
    view, _ = render_textured(mesh, torch.full((256, 256, 3), 0.5), cam)
    with log.watch(_diffusion_targets(model, control, vae)), torch.inference_mode():
        ComfyInpainter(sampling, inpaint["denoise"]).inpaint(view.color[0], (view.mask[0, ..., 0] > 0.5).float(),
                                                              normalbae_control(view.normal_view[0], view.mask[0]), None)
    out["inpaint_view"] = log.take()

    sampling = ComfySampling(model, pos, neg, vae, control, 1.0, steps=refine["steps"], cfg=refine["cfg"],
                             sampler_name=refine["sampler_name"], scheduler=refine["scheduler"], cuda_graphs=False)
    vgg = VGG16Perceptual()
    textured = mesh.with_(texture=torch.full((256, 256, 3), 0.5))
    ref = ReferenceView(torch.rand(res, res, 3), Cameras.orbit(0.0, 0.0, 2.7, 13.37, res))
    config = dict(resolution=res, seed=0, preview_every=0, t_range=(refine["t_min"], refine["t_max"]))
    with log.watch(_diffusion_targets(model, control, vae) + [(vgg, "taps", "vgg_taps")]):
        refine_texture(textured, ComfyDenoiser(sampling), None, RefineConfig(refine_steps=1, **config), lambda a, b: vgg(a * 2 - 1, b * 2 - 1))
    out["refine_random_step"] = log.take()
    with log.watch(_diffusion_targets(model, control, vae)):
        refine_texture(textured, None, ref, RefineConfig(refine_steps=1, **config))
    out["refine_reference_step"] = log.take()

    # Reference normal / depth: ComfyUI's own KSampler (canny ControlNet) from an empty latent, then VAE decode
    with log.watch(_diffusion_targets(model, control, vae)), torch.inference_mode():
        p, n_ = comfy_nodes.ControlNetApplyAdvanced().apply_controlnet(pos, neg, control, torch.rand(1, res, res, 3), 1.0, 0.0, 1.0)
        latent = comfy_nodes.EmptyLatentImage().generate(res, res, 1)[0]
        samples = comfy_nodes.KSampler().sample(model, 0, ksampler["steps"], ksampler["cfg"], ksampler["sampler_name"],
                                                ksampler["scheduler"], p, n_, latent, denoise=ksampler["denoise"])[0]
        comfy_nodes.VAEDecode().decode(vae, samples)
    out["reference_geometry_sample"] = log.take()
    return out


# ---------------------------------------------------------------------------------- (3) steps
def step_flops(samples: dict[str, dict[str, int]], per: dict[str, int]) -> dict[str, int]:
    """FLOPs of each step: Σ samples × per-sample FLOPs; a network without a per-sample count is an error
    (a new call in the step code must not silently count zero)."""
    out = {}
    for step, calls in samples.items():
        missing = sorted(set(calls) - set(per))
        if missing:
            raise KeyError(f"{step}: no per-sample FLOPs for {missing}")
        out[step] = sum(n * per[k] for k, n in calls.items())
    return out


def main() -> None:
    ap = _timing.parser(__doc__.split("\n\n")[0], "tiny networks in the per-sample counts (plumbing check)",
                        comfy=True, res=RESOLUTION)
    ap.add_argument("--workflow", default=os.path.join(_timing.ROOT, "workflows", "api", "full.json"))
    args = ap.parse_args()
    # Counts do not depend on the device: keep every model (the tiny ones of the call structure too) on
    # the CPU, also on a GPU machine (set before ComfyUI first asks torch for CUDA devices).
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
    _timing.find_comfyui(args.comfy, "bench_flops.py")
    from tiny_models import import_comfy

    import_comfy(skip=False)
    torch.set_grad_enabled(True)
    t0 = time.time()
    full = not args.smoke
    workflow = workflow_settings(args.workflow)
    res = args.res if full else 64
    per = network_flops(full, res)
    panohead = panohead_flops(full)
    samples = call_structure(workflow)
    steps = step_flops(samples, per)
    result = {
        "stage": "flops",
        "device": "any (FLOPs depend on shapes only)",
        "torch": torch.__version__,
        "smoke": bool(args.smoke),
        "resolution": res,
        "workflow": os.path.relpath(args.workflow, _timing.ROOT),
        "per_sample_gflop": {k: round(v / 1e9, 2) for k, v in per.items()},
        "samples_per_step": samples,
        "step_gflop": {**{k: round(v / 1e9, 2) for k, v in steps.items()},
                       **{k: round(v / 1e9, 2) for k, v in panohead.items()}},
        "wall_s": round(time.time() - t0, 1),
    }
    print(json.dumps(result, indent=2))
    _timing.write_json(result, args.out)


if __name__ == "__main__":
    main()
