"""PanoHead nodes: load the released generator (converted safely to safetensors on first use) and run
stage 1 of ID-Sculpt (align -> invert + PTI -> initial mesh + 40 GAN views), or the template head."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any, Optional

import folder_paths
import numpy as np
import torch
from comfy_api.latest import io

from ..core.models import find_model, get_spec
from ..core.panohead.align import align_portrait
from ..core.panohead.checkpoint import convert_pickle, load_generator
from ..core.panohead.invert import InversionConfig
from ..core.panohead.perceptual import VGG16Perceptual, load_vgg16
from ..core.panohead.pipeline import run_stage1
from ..core.panohead.triplane import TriPlaneGenerator, build_generator
from .common import IDSCULPT_FOLDER, ComfyProgress, core_to_image, image_to_core, model_files, model_path, trainable
from .face_nodes import NO_TASK, landmarker_model_input, landmarker_model_path
from .perceptual import AUTO, lpips_weights_input, resolve_lpips_weights
from .types import CAMERA, FACE_ID, GAN_VIEWS, HEAD_MESH, PANOHEAD
from .engines.vram import graphs_allowed, module_tensors, optimisation_stage, vram_mode_input
from .validation import UNCONNECTED, connected, known, verdict

log = logging.getLogger("IDSculpt")

NONE = "none (template head)"
NO_VGG = "none"


@dataclass
class PanoHeadModel:
    """What travels on a PANOHEAD socket: the generator (CPU, eval) and the perceptual net."""

    generator: Optional[TriPlaneGenerator]
    perceptual: Optional[VGG16Perceptual]
    name: str
    note: str = ""  # which initialisation the loader settled on and why (repeated in Invert's info)

    def _comfy_cache_tensors(self) -> list:
        """The generator's and perceptual net's weights (CPU between runs), for ComfyUI's RAM-pressure cache."""
        return module_tensors(self.generator, self.perceptual)


def stage1_outputs() -> list:
    """What every stage-1 node gives the graph (PanoHead Invert, Place Head Mesh): one socket layout, so either
    can start stages 2-3."""
    return [
        HEAD_MESH.Output(display_name="head"),  # "head_mesh" up to 0.1.0: links are by slot, saved workflows still load
        CAMERA.Output(display_name="reference_camera"),
        io.Image.Output(display_name="aligned_portrait"),
        GAN_VIEWS.Output(display_name="gan_views"),
        io.String.Output(display_name="info"),
    ]


def _weights(ext: tuple[str, ...]) -> list[str]:
    try:
        return [f for f in model_files(IDSCULPT_FOLDER) if f.lower().endswith(ext)]
    except Exception:  # folder missing: the Combo still shows the 'none' choice
        return []


def _find(key: str) -> tuple[Optional[str], list[str]]:
    """The model table's file for ``key`` (core/models.py: its canonical and accepted names) in ComfyUI's folders."""
    return find_model(get_spec(key), folder_paths.get_folder_paths)


class PanoHeadLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="IDSculptPanoHeadLoader",
            display_name="IDSculpt PanoHead Loader",
            category="IDSculpt/loaders",
            description="Loads PanoHead (easy-khair-180-gpc0.8-trans10-025000.pkl, CC BY-NC) from models/idsculpt. The .pkl "
            "is read without running the code stored inside it and converted once to .safetensors + .json beside it; "
            "later runs load the converted files. 'auto' (default) takes PanoHead when its file is there and the "
            "template head otherwise; 'info' says which and why.",
            inputs=[
                io.Combo.Input("checkpoint", options=[AUTO, NONE] + _weights((".pkl", ".safetensors")), default=AUTO,
                               tooltip="auto: PanoHead when its release file (or its converted .safetensors) is in "
                               "models/idsculpt, else the procedural template head (lower identity). 'none (template "
                               "head)': always the template. Or a PanoHead checkpoint file in models/idsculpt (a .pkl is "
                               "converted on first use)."),
                io.Combo.Input("vgg16", options=[AUTO, NO_VGG] + _weights((".pth", ".pt", ".safetensors", ".bin")), default=AUTO,
                               tooltip="VGG16 weights for the inversion's perceptual loss (torchvision vgg16-397923af.pth or "
                               "an LPIPS vgg16 file) in models/idsculpt; needed only when PanoHead is used. auto: the model "
                               "table's file when PanoHead is used."),
                lpips_weights_input(),
            ],
            outputs=[PANOHEAD.Output(display_name="panohead"), io.String.Output(display_name="info")],
        )

    @classmethod
    def fingerprint_inputs(cls, checkpoint: str, vgg16: str, lpips_weights: str = AUTO) -> Any:
        """'auto' means whatever file is there now: ComfyUI must re-run the loader when that changes (PanoHead put
        in after a template run would otherwise stay unused behind the cached result)."""
        parts = []
        for choice, key in ((checkpoint, "panohead"), (vgg16, "vgg16"), (lpips_weights, "lpips_vgg")):
            if choice == AUTO:
                path, _ = _find(key)
                try:
                    st = os.stat(path) if path else None
                    parts.append(f"{path}:{st.st_mtime_ns}:{st.st_size}" if st else "-")
                except OSError:
                    parts.append(str(path))
            else:
                parts.append(choice)
        return "|".join(parts)

    @classmethod
    def execute(cls, checkpoint: str, vgg16: str, lpips_weights: str = AUTO) -> io.NodeOutput:
        spec = get_spec("panohead")
        if checkpoint == NONE:
            note = f"checkpoint '{NONE}': the template head is used"
            return io.NodeOutput(PanoHeadModel(None, None, NONE, note), f"{note} (PanoHead Invert uses the template head)")
        if checkpoint == AUTO:
            path, searched = _find("panohead")
            if path is None:
                note = (f"checkpoint auto: no PanoHead file ({spec.filename}) in {', '.join(searched) or 'models/idsculpt'}, "
                        "so the template head is used (lower identity); put the file there for PanoHead's ID-aware "
                        "initialisation (docs/MODELS.md)")
                log.info("IDSculpt PanoHead Loader: %s", note)
                return io.NodeOutput(PanoHeadModel(None, None, NONE, note), note)
            why = f"checkpoint auto: PanoHead found ({path})"
            name = os.path.basename(path)
        else:
            path = model_path(IDSCULPT_FOLDER, checkpoint, key="panohead")
            why, name = f"checkpoint {checkpoint}", checkpoint
        if vgg16 == NO_VGG:
            raise ValueError("PanoHead inversion needs VGG16 weights for its perceptual loss: put torchvision's "
                             "vgg16-397923af.pth into models/idsculpt and select it or 'auto' (or choose checkpoint "
                             f"'{NONE}')")
        if vgg16 == AUTO:
            vgg_path, searched = _find("vgg16")
            if vgg_path is None:
                v = get_spec("vgg16")
                raise FileNotFoundError(
                    f"PanoHead is used ({why}) but its inversion needs VGG16 weights for the perceptual loss, and none "
                    f"were found in {', '.join(searched) or 'models/idsculpt'}: put {v.filename} there (from {v.source}), "
                    f"or set the PanoHead Loader's checkpoint to '{NONE}' to use the template head")
            why += f"; vgg16 auto: {os.path.basename(vgg_path)}"
        else:
            vgg_path = model_path(IDSCULPT_FOLDER, vgg16, key="vgg16")
        if path.endswith(".pkl"):
            st, _ = convert_pickle(path)  # once; reuses the converted files afterwards
            info = f"{why}; converted {name} -> {os.path.basename(st)} (pickle code not executed)"
            path = st
        else:
            info = f"{why}; loaded {name}"
        g = load_generator(path, "cpu")
        vgg = load_vgg16(vgg_path, resolve_lpips_weights(lpips_weights))
        if not vgg.has_lpips_heads:
            log.warning("IDSculpt: %s", vgg.weights_note)
        info += f"; {vgg.weights_note}"
        return io.NodeOutput(PanoHeadModel(g, vgg, name, why), info)


def face_id_box(face_id, image_hw: tuple[int, int]) -> Optional[list[float]]:
    """ID Embed's face box in this portrait's pixels (scaled when ID Embed saw the image at another size)."""
    if face_id is None:
        return None
    h, w = image_hw
    h0, w0 = getattr(face_id, "image_size", (0, 0)) or (0, 0)
    sx, sy = (w / w0, h / h0) if h0 > 0 and w0 > 0 else (1.0, 1.0)
    x1, y1, x2, y2 = (float(v) for v in face_id.box.reshape(-1)[:4])
    return [x1 * sx, y1 * sy, x2 * sx, y2 * sy]


def photo_from_batch(portrait: torch.Tensor, face_id) -> int:
    """Which image of the ``portrait`` batch is the reference: ID Embed's ``reference_index`` (several photos
    of one person); a batch without face_id is refused, as no node said which photo the head is aligned to."""
    b = int(portrait.shape[0]) if portrait.dim() == 4 else 1
    if face_id is None:
        if b > 1:
            raise ValueError(f"portrait is a batch of {b} photos: connect ID Embed's face_id (its reference_index says "
                             "which photo the head is aligned to), or pass one image (e.g. core 'Image From Batch')")
        return 0
    i = int(getattr(face_id, "reference_index", 0))
    n = int(getattr(face_id, "num_photos", 1))
    if b == 1:  # one image given here: taken to be the reference photo itself
        return 0
    if b != n or i >= b:
        raise ValueError(f"portrait is a batch of {b}, but face_id came from {n} photo(s) (reference #{i}): connect the "
                         "same image (batch) to ID Embed and PanoHead Invert")
    return i


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
                io.Image.Input("portrait", tooltip="The input portrait (one face, roughly frontal). A batch of photos needs "
                               "face_id: its reference photo is used."),
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
                io.Int.Input("face_index", default=0, min=0, max=63, optional=True,
                             tooltip="Which face of the portrait to align when MediaPipe finds several: 0 = the largest, "
                             "1 = the next, ... (box area, as ID Embed counts). Ignored when face_id is connected. Set it "
                             "like ID Embed's face_index so geometry and identity come from the same person."),
                FACE_ID.Input("face_id", optional=True,
                              tooltip="ID Embed's face: aligns the MediaPipe face whose box overlaps it most, so the head's "
                              "geometry comes from the face whose identity ID Embed took (overrides face_index)."),
                landmarker_model_input(optional=True),
            ],
            outputs=stage1_outputs(),
        )

    @classmethod
    def validate_inputs(cls, init=None, w_steps=None, pti_steps=None, panohead=UNCONNECTED) -> bool | str:
        init_problem = steps_problem = None
        if init == "panohead" and not connected(panohead):
            init_problem = ("init is 'panohead' but the panohead input is not connected: connect IDSculpt PanoHead Loader, "
                            "or set init to 'auto' or 'template'")
        if (init != "template" and connected(panohead) and known(w_steps) and known(pti_steps)
                and w_steps + pti_steps == 0):
            steps_problem = ("w_steps and pti_steps are both 0: PanoHead would give its average head, not this person's "
                             "(the authors: 500 + 500); set one above 0, or init to 'template'")
        return verdict(cls, {"init": init, "w_steps": w_steps, "pti_steps": pti_steps}, init_problem, steps_problem)

    @classmethod
    def execute(cls, portrait: torch.Tensor, panohead: Optional[PanoHeadModel] = None, init: str = "auto", w_steps: int = 500,
                pti_steps: int = 500, mesh_resolution: int = 512, mesh_level: float = 20.0, view_resolution: int = 256,
                seed: int = 0, cuda_graphs: bool = True, vram_mode: str = "offload", face_index: int = 0,
                face_id=None, landmarker_model: str = NO_TASK) -> io.NodeOutput:
        import comfy.model_management as mm

        image = (image_to_core(portrait)[photo_from_batch(portrait, face_id)].numpy() * 255).round().astype(np.uint8)
        have = panohead is not None and panohead.generator is not None
        if init == "panohead" and not have:
            why = f" ({panohead.note})" if panohead is not None and panohead.note else ""
            raise ValueError(f"init='panohead' but no PanoHead checkpoint is loaded{why}: connect IDSculpt PanoHead Loader "
                             "with a checkpoint, or set init to 'auto'/'template'")
        use_gan = have and init != "template"
        # the portrait enters here: refused when too small (ID Embed's message), then the chosen face aligned
        aligned = align_portrait(image, face_index=face_index, model_path=landmarker_model_path(landmarker_model),
                                 face_box=face_id_box(face_id, image.shape[:2]))
        device = mm.get_torch_device()
        bar = ComfyProgress((w_steps + pti_steps + 20) if use_gan else 1)
        with optimisation_stage("PanoHead Invert", vram_mode):
            g = vgg = None
            if use_gan:
                src = panohead.generator
                g = trainable(src, into=build_generator(src.init_kwargs))
                g.neural_rendering_resolution = src.neural_rendering_resolution
                g.rendering_kwargs = dict(src.rendering_kwargs)
                g = g.to(device).eval()
                vgg = trainable(panohead.perceptual, into=VGG16Perceptual()).to(device).eval()
                vgg.has_lpips_heads = panohead.perceptual.has_lpips_heads
            cfg = InversionConfig(w_steps=w_steps, pti_steps=pti_steps, seed=seed, cuda_graphs=graphs_allowed(cuda_graphs, vram_mode))
            try:
                out = run_stage1(image, g, vgg, cfg, mesh_resolution=mesh_resolution, mesh_level=mesh_level,
                                 view_resolution=view_resolution, aligned=aligned, progress=bar.progress,
                                 interrupt=bar.interrupt, device=device)
            finally:
                del g, vgg
                mm.soft_empty_cache()
        views = out.gan_views
        info = out.info + (f"; {panohead.perceptual.weights_note}" if use_gan else "")
        if panohead is not None and panohead.note:
            info += f"; loader: {panohead.note}"
        info += f"; face: {aligned.log}"
        if aligned.num_faces > 1 and face_id is None:
            info += " (or connect ID Embed's face_id: PanoHead Invert then aligns the face ID Embed chose)"
        log.info("IDSculpt PanoHead Invert: %s", info)
        return io.NodeOutput(out.mesh, out.reference_camera, core_to_image(out.aligned), views, info)


NODES = [PanoHeadLoader, PanoHeadInvert]
