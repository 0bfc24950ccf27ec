"""PanoHead nodes: load the released generator (converted safely to safetensors on first use) and run
stage 1 of ID-Sculpt (align -> invert + PTI -> initial mesh + 40 GAN views), or the template head."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

import numpy as np
import torch
from comfy_api.latest import io

from ..core.panohead.checkpoint import convert_pickle, load_generator
from ..core.panohead.invert import InversionConfig
from ..core.panohead.perceptual import VGG16Perceptual
from ..core.panohead.pipeline import run_stage1
from ..core.panohead.triplane import TriPlaneGenerator, build_generator
from .common import IDSCULPT_FOLDER, ComfyProgress, core_to_image, image_to_core, model_files, model_path
from .perceptual import AUTO, load_perceptual, lpips_weights_input
from .types import CAMERA, GAN_VIEWS, HEAD_MESH, PANOHEAD
from .vram import graphs_allowed, stage, vram_mode_input

log = logging.getLogger("IDSculpt")

NONE = "none (template head)"
NO_VGG = "none"


@dataclass
class PanoHeadModel:
    """What travels on a PANOHEAD socket: the generator (CPU, eval) and the perceptual net."""

    generator: Optional[TriPlaneGenerator]
    perceptual: Optional[VGG16Perceptual]
    name: str


def _weights(ext: tuple[str, ...]) -> list[str]:
    try:
        return [f for f in model_files(IDSCULPT_FOLDER) if f.lower().endswith(ext)]
    except Exception:  # folder missing: the Combo still shows the 'none' choice
        return []


def _trainable_copy(module: torch.nn.Module, fresh: torch.nn.Module) -> torch.nn.Module:
    """Tensors loaded under ComfyUI's inference_mode can't be trained: clone them outside it."""
    fresh.load_state_dict({k: v.detach().clone() for k, v in module.state_dict().items()}, strict=True)
    return fresh


class PanoHeadLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptPanoHeadLoader",
            display_name="IDSculpt PanoHead Loader",
            category="IDSculpt/loaders",
            description="Loads PanoHead (easy-khair-180-gpc0.8-trans10-025000.pkl, CC BY-NC) from models/idsculpt. The .pkl "
            "is read without running the code stored inside it and converted once to .safetensors + .json beside it; "
            "later runs load the converted files. Without a checkpoint, Invert falls back to the template head.",
            inputs=[
                io.Combo.Input("checkpoint", options=[NONE] + _weights((".pkl", ".safetensors")), default=NONE,
                               tooltip="PanoHead checkpoint in models/idsculpt: the released .pkl (converted on first use) "
                               "or its converted .safetensors. 'none' = use the procedural template head instead."),
                io.Combo.Input("vgg16", options=[NO_VGG] + _weights((".pth", ".pt", ".safetensors", ".bin")), default=NO_VGG,
                               tooltip="VGG16 weights for the inversion's perceptual loss (torchvision vgg16-397923af.pth or "
                               "an LPIPS vgg16 file) in models/idsculpt. Required when a checkpoint is chosen."),
                lpips_weights_input(),
            ],
            outputs=[PANOHEAD.Output(display_name="panohead"), io.String.Output(display_name="info")],
        )

    @classmethod
    def execute(cls, checkpoint: str, vgg16: str, lpips_weights: str = AUTO) -> io.NodeOutput:
        if checkpoint == NONE:
            return io.NodeOutput(PanoHeadModel(None, None, NONE), "no PanoHead checkpoint: Invert will use the template head")
        path = model_path(IDSCULPT_FOLDER, checkpoint, key="panohead")
        if vgg16 == NO_VGG:
            raise ValueError("PanoHead inversion needs VGG16 weights for its perceptual loss: put torchvision's "
                             "vgg16-397923af.pth into models/idsculpt and select it (or choose checkpoint 'none')")
        if path.endswith(".pkl"):
            st, _ = convert_pickle(path)  # once; reuses the converted files afterwards
            info = f"converted {checkpoint} -> {os.path.basename(st)} (pickle code not executed)"
            path = st
        else:
            info = f"loaded {checkpoint}"
        g = load_generator(path, "cpu")
        vgg = load_perceptual(vgg16, lpips_weights)
        info += f"; {vgg.weights_note}"
        return io.NodeOutput(PanoHeadModel(g, vgg, checkpoint), info)


class PanoHeadInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptPanoHeadInvert",
            display_name="IDSculpt PanoHead Invert",
            category="IDSculpt/geometry",
            description="Stage 1 of ID-Sculpt: aligns the portrait to PanoHead's crop and camera, inverts it (W+ projection "
            "then pivotal tuning), extracts the initial head mesh from the density field and renders the 40 GAN views "
            "(normals + masks) that DMTet Sculpt fits first. Without PanoHead, a procedural template head placed by the "
            "face landmarks is used; 'info' says which.",
            inputs=[
                io.Image.Input("portrait", tooltip="The input portrait (one face, roughly frontal). First image of the batch."),
                PANOHEAD.Input("panohead", optional=True, tooltip="From IDSculpt PanoHead Loader. Leave unconnected for the "
                               "template head."),
                io.Combo.Input("init", options=["auto", "panohead", "template"], default="auto",
                               tooltip="auto: PanoHead when a checkpoint is loaded, else the template head. panohead: "
                               "fail if none is loaded. template: always the template head."),
                io.Int.Input("w_steps", default=500, min=0, max=5000, tooltip="W+ projection steps (authors: 500)."),
                io.Int.Input("pti_steps", default=500, min=0, max=5000, tooltip="Pivotal tuning steps (authors: 500)."),
                io.Int.Input("mesh_resolution", default=512, min=64, max=1024, step=32,
                             tooltip="Density grid resolution for marching cubes (authors: 512; 256 is 8x cheaper)."),
                io.Float.Input("mesh_level", default=20.0, min=0.0, max=200.0, step=0.5,
                               tooltip="Density level of the surface (authors: 20)."),
                io.Int.Input("view_resolution", default=256, min=32, max=512, step=16,
                             tooltip="Resolution of the 40 volume-rendered supervision views (normals, masks)."),
                io.Int.Input("seed", default=0, min=0, max=2 ** 31 - 1, tooltip="Seed of the inversion (latent noise, ray samples)."),
                io.Boolean.Input("cuda_graphs", default=True, optional=True,
                                 tooltip="Replay each inversion and PTI step from a CUDA graph (same method, several times "
                                         "faster on a GPU; the random ray samples differ from the eager loop's but stay "
                                         "seeded). Off: the plain eager loop. Ignored on CPU."),
                vram_mode_input(),
            ],
            outputs=[
                HEAD_MESH.Output(display_name="head_mesh"),
                CAMERA.Output(display_name="reference_camera"),
                io.Image.Output(display_name="aligned_portrait"),
                GAN_VIEWS.Output(display_name="gan_views"),
                io.String.Output(display_name="info"),
            ],
        )

    @classmethod
    def execute(cls, portrait: torch.Tensor, panohead: Optional[PanoHeadModel] = None, init: str = "auto", w_steps: int = 500,
                pti_steps: int = 500, mesh_resolution: int = 512, mesh_level: float = 20.0, view_resolution: int = 256,
                seed: int = 0, cuda_graphs: bool = True, vram_mode: str = "offload") -> io.NodeOutput:
        import comfy.model_management as mm

        image = (image_to_core(portrait)[0].numpy() * 255).round().astype(np.uint8)
        have = panohead is not None and panohead.generator is not None
        if init == "panohead" and not have:
            raise ValueError("init='panohead' but no PanoHead checkpoint is loaded: connect IDSculpt PanoHead Loader with a "
                             "checkpoint, or set init to 'auto'/'template'")
        use_gan = have and init != "template"
        device = mm.get_torch_device()
        bar = ComfyProgress((w_steps + pti_steps + 20) if use_gan else 1)
        with stage("PanoHead Invert", vram_mode), torch.inference_mode(False), torch.enable_grad():
            g = vgg = None
            if use_gan:
                src = panohead.generator
                g = _trainable_copy(src, build_generator(src.init_kwargs))
                g.neural_rendering_resolution = src.neural_rendering_resolution
                g.rendering_kwargs = dict(src.rendering_kwargs)
                g = g.to(device).eval()
                vgg = _trainable_copy(panohead.perceptual, VGG16Perceptual()).to(device).eval()
                vgg.has_lpips_heads = panohead.perceptual.has_lpips_heads
            cfg = InversionConfig(w_steps=w_steps, pti_steps=pti_steps, seed=seed, cuda_graphs=graphs_allowed(cuda_graphs, vram_mode))
            try:
                out = run_stage1(image, g, vgg, cfg, mesh_resolution=mesh_resolution, mesh_level=mesh_level,
                                 view_resolution=view_resolution, progress=bar.progress, interrupt=bar.interrupt,
                                 device=device)
            finally:
                del g, vgg
                mm.soft_empty_cache()
        views = out.gan_views
        info = out.info + (f"; {panohead.perceptual.weights_note}" if use_gan else "")
        log.info("IDSculpt PanoHead Invert: %s", info)
        return io.NodeOutput(out.mesh, out.reference_camera, core_to_image(out.aligned), views, info)


NODES = [PanoHeadLoader, PanoHeadInvert]
