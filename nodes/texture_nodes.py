"""Texture stage nodes: Progressive Inpaint and Texture Refine, on ComfyUI's own sampling (the adapter they hand
core/texture, its ControlNet wiring, Cancel checks and CUDA graphs: nodes/engines/sampling.py).

Both sample every view with the prompt pair of its direction (nodes/view_prompts.py, the texture
thresholds core.guidance.TEXTURE_VIEW_THRESHOLDS: front |az| < 45°, back |az| > 135°, overhead
elevation > 60°), as the authors' texture guidance does: a view of the back of the head gets the back
prompt and the "face, nose, eyes, …" negative, never the front prompt.
"""
from __future__ import annotations

import logging
from typing import Optional

import torch
from comfy_api.latest import io

import comfy.model_management
import comfy.sample
import comfy.samplers

from ..core.camera import Cameras
from ..core.guidance import TEXTURE_VIEW_THRESHOLDS
from ..core.mesh import HeadMesh
from ..core.texture import (
    InpaintConfig,
    ReferenceView,
    RefineConfig,
    check_texture_size,
    head_frame_warning,
    parse_view_plan,
    progressive_inpaint,
    refine_texture,
    unwrap_uv,
)
from ..core.texture.deblur import deblur_texture
from .perceptual import load_perceptual, lpips_weights_input, texture_perceptual
from .upscale import comfy_upscaler
from .common import IDSCULPT_FOLDER, ComfyProgress, core_to_image, image_to_core, model_files, trainable
from .engines.cuda_graphs import cuda_graphs_input
from .engines.sampling import ComfyDenoiser, ComfyInpainter, ComfySampling
from .engines.vram import graphs_allowed, optimisation_stage, vram_mode_input
from .types import CAMERA, HEAD_MESH
from .validation import UNCONNECTED, both_or_neither, known, verdict
from .view_prompts import view_conditioning, view_conditioning_inputs

log = logging.getLogger("IDSculpt")


# ---------------------------------------------------------------------------------------------- helpers
def _reference(image, camera, mask) -> Optional[ReferenceView]:
    if image is None and camera is None:
        return None
    if image is None or camera is None:
        raise ValueError("connect both reference_image and reference_camera (the stage-1 reference camera), or neither")
    if not isinstance(camera, Cameras):
        raise ValueError(f"reference_camera must be an IDSCULPT_CAMERA (core Cameras), got {type(camera).__name__}")
    img = image_to_core(image)[0]
    cam = camera.first()
    m = None if mask is None else mask.reshape(-1, *mask.shape[-2:])[0].float().clone()
    return ReferenceView(img, cam, m)


def _device_mesh(head: HeadMesh) -> HeadMesh:
    if not isinstance(head, HeadMesh):
        raise ValueError(f"head must be an IDSCULPT_HEAD_MESH, got {type(head).__name__}")
    return trainable(head).to(comfy.model_management.get_torch_device())


def _check_head_frame(head: HeadMesh, node: str) -> Optional[str]:
    """Log (and return) a warning when the head is not in the frame the texture cameras assume."""
    if not isinstance(head, HeadMesh):
        raise ValueError(f"head must be an IDSCULPT_HEAD_MESH, got {type(head).__name__}")
    note = head_frame_warning(head.vertices)
    if note:
        log.warning("[IDSculpt] %s: %s", node, note)
    return note


def _sampler_inputs(steps: int, cfg: float) -> list:
    return [
        io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True, tooltip="Noise seed (view k uses seed + k)."),
        io.Int.Input("steps", default=steps, min=1, max=200, tooltip="Sampling steps per view (ID-Sculpt: 20 DDIM steps)."),
        io.Float.Input("cfg", default=cfg, min=0.0, max=50.0, step=0.1, round=0.01, tooltip="Classifier-free guidance scale (ID-Sculpt: 10)."),
        io.Combo.Input("sampler_name", options=comfy.samplers.KSampler.SAMPLERS, default="ddim", tooltip="Sampler (ID-Sculpt: DDIM)."),
        io.Combo.Input("scheduler", options=comfy.samplers.KSampler.SCHEDULERS, default="ddim_uniform", tooltip="Noise schedule (ddim_uniform = diffusers' DDIM timesteps)."),
    ]


def _model_inputs() -> list:
    return [
        HEAD_MESH.Input("head", tooltip="The sculpted head mesh (IDSculpt DMTet Sculpt: vertex mean 0, max |coordinate| 0.9, the frame the texture cameras assume)."),
        io.Model.Input("model", tooltip="Texture SD1.5 MODEL (e.g. Realistic Vision; swap it to restyle), through IDSculpt Apply ID Adapter."),
        io.Conditioning.Input("positive", tooltip="Prompt describing the person (caption)."),
        io.Conditioning.Input("negative", tooltip="Negative prompt."),
        io.Vae.Input("vae", tooltip="SD1.5 VAE used to encode the views and decode the results."),
        io.ControlNet.Input("control_net", optional=True, tooltip="control_v11p_sd15_normalbae: each view's rendered normals are its hint. Unconnected: no geometry control."),
    ] + view_conditioning_inputs(TEXTURE_VIEW_THRESHOLDS)


def _reference_inputs() -> list:
    return [
        io.Image.Input("reference_image", optional=True, tooltip="The aligned portrait (stage-1 crop): painted into the texture first (Progressive Inpaint), fitted on odd steps (Texture Refine)."),
        CAMERA.Input("reference_camera", optional=True, tooltip="The portrait's camera in the head's frame (IDSculpt DMTet Sculpt's reference_camera)."),
        io.Mask.Input("reference_mask", optional=True, tooltip="Head mask of the portrait (face parsing > 0): only these pixels are projected "
                      "(Progressive Inpaint) and fitted by the reference L1 (Texture Refine)."),
    ]


def _crop_problem(resolution) -> Optional[str]:
    """The view size must split into the VAE's 8-pixel blocks (the widget's step of 64 binds the UI only)."""
    if known(resolution) and int(resolution) % 8:
        return f"resolution ({resolution}) must be a multiple of 8: the VAE encodes 8x8-pixel blocks (SD1.5: 512)"
    return None


def _reference_problem(reference_image, reference_camera) -> Optional[str]:
    return both_or_neither("reference_image", reference_image, "reference_camera", reference_camera,
                           "the portrait is placed on the head by its camera: DMTet Sculpt's reference_camera")


# ---------------------------------------------------------------------------------------------- nodes
class ProgressiveInpaint(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptProgressiveInpaint",
            display_name="IDSculpt Progressive Inpaint",
            category="IDSculpt/texture",
            description="UV-unwraps the head, projects the portrait, then inpaints the unpainted texels view by view (ID-Sculpt §3.3).",
            inputs=_model_inputs() + _reference_inputs() + _sampler_inputs(20, 10.0) + [
                io.Float.Input("denoise", default=0.95, min=0.05, max=1.0, step=0.01, tooltip="Start of the inpainting schedule (0.95 ≈ t = 950, as ID-Sculpt)."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=3.0, step=0.05, tooltip="normalbae ControlNet strength."),
                io.Combo.Input("texture_size", options=["512", "1024", "2048"], default="1024", tooltip="Texture resolution in texels."),
                io.Int.Input("max_faces", default=100000, min=1000, max=2000000, tooltip="Meshes above this are decimated before UV unwrapping (xatlas time grows quickly with faces)."),
                io.String.Input("view_plan", default="default", multiline=True,
                                tooltip="'default' (ID-Sculpt's 15 views) or 'elevation, azimuth[, distance[, fov]]' per line or ';', in order."),
                io.Int.Input("resolution", default=512, min=64, max=1024, step=64, tooltip="Size of each view crop fed to the model (SD1.5: 512); views are rendered at twice this size before cropping."),
                io.Int.Input("erode_iterations", default=8, min=0, max=32, tooltip="Erosion of the back-projection mask (iterations of a 5×5 kernel on the 512-px crop, as ID-Sculpt: 8 = 16 px): drops grazing/silhouette pixels."),
                io.Float.Input("cos_threshold", default=0.0, min=-1.0, max=0.99, step=0.01, tooltip="Back-project only texels whose normal faces the camera more than this cosine."),
                io.Combo.Input("policy", options=["first", "best_cosine"], default="first",
                               tooltip="first: a texel keeps its first colour (paper); best_cosine: later, more head-on views overwrite (never the portrait)."),
                io.UpscaleModel.Input("upscale_model", optional=True,
                                      tooltip="RealESRGAN x2 (Load Upscale Model): the authors' deblur of the finished texture "
                                      "(8-bit, half-size bicubic, then x2 super-resolution) before refinement. Unconnected: no deblur."),
                cuda_graphs_input(),
                vram_mode_input(),
            ],
            outputs=[HEAD_MESH.Output(display_name="head"), io.Image.Output(display_name="texture"), io.Image.Output(display_name="views")],
        )

    @classmethod
    def validate_inputs(cls, texture_size=None, view_plan=None, resolution=None, reference_image=UNCONNECTED,
                        reference_camera=UNCONNECTED) -> bool | str:
        plan = None
        if known(view_plan):
            try:
                parse_view_plan(view_plan)
            except ValueError as e:
                plan = f"view_plan: {e}"
        return verdict(cls, {"texture_size": texture_size, "resolution": resolution}, plan, _crop_problem(resolution),
                       _reference_problem(reference_image, reference_camera))

    @classmethod
    def execute(cls, head, model, positive, negative, vae, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                denoise: float, control_strength: float, texture_size: str, max_faces: int, view_plan: str, resolution: int,
                erode_iterations: int, cos_threshold: float, policy: str, control_net=None, reference_image=None,
                reference_camera=None, reference_mask=None, upscale_model=None, cuda_graphs: bool = True,
                vram_mode: str = "offload", **per_direction) -> io.NodeOutput:
        size = check_texture_size(int(texture_size))
        plan = parse_view_plan(view_plan)
        views = view_conditioning(positive, negative, TEXTURE_VIEW_THRESHOLDS, **per_direction)
        _check_head_frame(head, "Progressive Inpaint")
        mesh = head.detach()
        note = ""
        if not mesh.has_uv:
            mesh, info = unwrap_uv(mesh.to("cpu"), size, max_faces, interrupt=ComfyProgress.interrupt)
            note = info.summary()
            log.info("IDSculpt Progressive Inpaint: %s", note)
        mesh = _device_mesh(mesh)
        reference = _reference(reference_image, reference_camera, reference_mask)
        sampling = ComfySampling(model, positive, negative, vae, control_net, control_strength, steps, cfg, sampler_name, scheduler, seed,
                                 graphs_allowed(cuda_graphs, vram_mode), views)
        # views are rendered at twice the crop size: the head's alpha box covers only part of the frame, so the
        # crop handed to the model (resolution²) is then a downscale of the render, not a blurry upscale
        config = InpaintConfig(render_resolution=min(2 * resolution, 2048), resolution=resolution, erode_iterations=erode_iterations,
                               cos_threshold=cos_threshold, policy=policy)
        views: list[torch.Tensor] = []
        # the bar counts sampler steps: the portrait's projection is 1, each view ``steps`` (its sampler steps)
        first = 1 if reference is not None else 0
        bar = ComfyProgress(first + len(plan) * steps, preview_size=resolution)
        done_units = [0]  # bar position once the views core has reported so far are done

        def progress(done, total, preview):  # core: ``done`` views finished (the portrait counts as one)
            if preview is not None and preview.shape[0] == resolution:
                views.append(preview.detach().float().cpu())
            done_units[0] = min(done, first) + max(done - first, 0) * steps
            bar.progress(done_units[0], bar.total, preview)  # the view's composite is the live preview

        def sampler_step(step, total_steps):  # inside the current view
            bar.progress(done_units[0] + min(steps, max(1, round(steps * step / total_steps))), bar.total, None)

        sampling.on_step = sampler_step

        try:
            with optimisation_stage("Progressive Inpaint", vram_mode):
                result = progressive_inpaint(mesh, ComfyInpainter(sampling, denoise), plan, reference, config, size, progress, bar.interrupt)
        finally:
            sampling.close()
        out = result.mesh.to("cpu")
        if upscale_model is not None:  # IDsculpt_tex.py initialize_texture: dilate, then deblur, then refine
            upscale, scale = comfy_upscaler(upscale_model)
            out = out.with_(texture=deblur_texture(out.texture, upscale, scale))  # no autograd: node's inference mode
        texture = core_to_image(out.texture)
        view_batch = core_to_image(torch.stack(views)) if views else texture
        return io.NodeOutput(out, texture, view_batch)


class TextureRefine(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptTextureRefine",
            display_name="IDSculpt Texture Refine",
            category="IDSculpt/texture",
            description="Optimises the texture against SDEdit-denoised random views and the portrait (ID-Sculpt §3.3, Eq. 8–9).",
            inputs=_model_inputs() + _reference_inputs() + _sampler_inputs(20, 10.0) + [
                io.Int.Input("refine_steps", default=400, min=0, max=5000, tooltip="Optimisation steps (ID-Sculpt: 400; even = random view, odd = reference)."),
                io.Int.Input("t_min", default=50, min=1, max=998, tooltip="Smallest SDEdit start timestep (of 1000)."),
                io.Int.Input("t_max", default=200, min=2, max=999, tooltip="Largest SDEdit start timestep (exclusive)."),
                io.Float.Input("learning_rate", default=0.02, min=1e-5, max=1.0, step=0.001, tooltip="AdamW learning rate on the texture logits."),
                io.Float.Input("control_strength", default=1.0, min=0.0, max=3.0, step=0.05, tooltip="normalbae ControlNet strength."),
                io.Int.Input("resolution", default=512, min=64, max=1024, step=64, tooltip="Random-view render size (SD1.5: 512)."),
                io.Combo.Input("perceptual_model", options=["none"] + model_files(IDSCULPT_FOLDER), default="none",
                               tooltip="VGG16 weights in models/idsculpt for the perceptual term (50·LPIPS); 'none' skips it."),
                lpips_weights_input(),
                cuda_graphs_input(),
                vram_mode_input(),
                # the last widget and optional: saved UI workflows keep their widget values in place (they are
                # positional) and saved API prompts without it still validate (1 = the authors' behaviour)
                io.Int.Input("denoise_batch", default=1, min=1, max=16, optional=True,
                             tooltip="Random views whose SDEdit targets come from one batched sampler run (one t per batch; "
                                     "each target is then used by its own later step). 1: one run per view, as ID-Sculpt. "
                                     "4 (the fast workflow's value): fewer, larger sampler runs, faster on a GPU."),
            ],
            outputs=[HEAD_MESH.Output(display_name="head"), io.Image.Output(display_name="texture")],
        )

    @classmethod
    def validate_inputs(cls, t_min=None, t_max=None, resolution=None, reference_image=UNCONNECTED,
                        reference_camera=UNCONNECTED, denoise_batch=None) -> bool | str:
        t_range = None
        if known(t_min) and known(t_max) and t_min >= t_max:
            t_range = (f"t_min ({t_min}) must be below t_max ({t_max}): each random view's SDEdit start timestep is "
                       "drawn from [t_min, t_max) (ID-Sculpt: 50 to 200)")
        return verdict(cls, {"t_min": t_min, "t_max": t_max, "resolution": resolution, "denoise_batch": denoise_batch}, t_range,
                       _crop_problem(resolution),
                       _reference_problem(reference_image, reference_camera))

    @classmethod
    def execute(cls, head, model, positive, negative, vae, seed: int, steps: int, cfg: float, sampler_name: str, scheduler: str,
                refine_steps: int, t_min: int, t_max: int, learning_rate: float, control_strength: float, resolution: int,
                perceptual_model: str = "none", control_net=None, reference_image=None, reference_camera=None,
                reference_mask=None, cuda_graphs: bool = True, vram_mode: str = "offload", lpips_weights: str = "auto",
                denoise_batch: int = 1, **per_direction) -> io.NodeOutput:
        if int(denoise_batch) < 1:
            raise ValueError(f"denoise_batch must be at least 1 (random views denoised per sampler run), got {denoise_batch}")
        if not isinstance(head, HeadMesh) or not head.has_uv or head.texture is None:
            raise ValueError("Texture Refine needs a textured head with UVs: connect IDSculpt Progressive Inpaint's head output")
        views = view_conditioning(positive, negative, TEXTURE_VIEW_THRESHOLDS, **per_direction)
        _check_head_frame(head, "Texture Refine")
        mesh = _device_mesh(head)
        dev = mesh.vertices.device
        # odd steps fit the portrait inside its whole-head mask (the authors' mask.png), not the face oval
        reference = _reference(reference_image, reference_camera, reference_mask)
        perceptual = None  # loaded first: a missing file should stop the node before any model work
        if perceptual_model and perceptual_model != "none":
            with torch.inference_mode(False):
                perceptual = texture_perceptual(load_perceptual(perceptual_model, lpips_weights).to(dev))

        sampling = ComfySampling(model, positive, negative, vae, control_net, control_strength, steps, cfg, sampler_name, scheduler, seed,
                                 graphs_allowed(cuda_graphs, vram_mode), views)
        config = RefineConfig(refine_steps=refine_steps, learning_rate=learning_rate, t_range=(t_min, t_max), resolution=resolution, seed=seed,
                              denoise_batch=int(denoise_batch))
        bar = ComfyProgress(max(refine_steps, 1), preview_size=resolution)
        try:
            with optimisation_stage("Texture Refine", vram_mode):
                result = refine_texture(mesh, ComfyDenoiser(sampling), reference, config, perceptual, bar.progress, bar.interrupt)
        finally:
            sampling.close()
        out = result.mesh.to("cpu")
        return io.NodeOutput(out, core_to_image(out.texture))


NODES = [ProgressiveInpaint, TextureRefine]
