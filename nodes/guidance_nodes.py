"""IDSculpt ISD Guidance: bundles the user's (already ID-adapted) MODEL, prompts, VAE and optional landmark
ControlNet into an ISD_GUIDANCE value (nodes/engines/isd_guidance.py over the ComfyUI noise predictor,
nodes/engines/noise_predictor.py) for the DMTet Sculpt node.
"""
from __future__ import annotations

import logging
import math

from comfy_api.latest import io

from ..core.guidance import ISD_ESTIMATORS, ISD_VIEW_THRESHOLDS
from .engines.cuda_graphs import cuda_graphs_input
from .engines.id_patch import has_id_adapter
from .engines.isd_guidance import build_isd_guidance
from .engines.vae_encoder import VAE_POSTERIORS
from .types import ISD_GUIDANCE, LANDMARKS
from .view_prompts import view_conditioning, view_conditioning_inputs

log = logging.getLogger("IDSculpt")


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
