"""ISD_GUIDANCE as the nodes build it: core.guidance.ISDGuidance (the maths) over the ComfyUI noise predictor."""
from __future__ import annotations

import torch

from ...core.guidance import ISDConfig, ISDGuidance
from .noise_predictor import ComfyNoisePredictor


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

