"""ComfyUI's UPSCALE_MODEL (from Load Upscale Model) as the plain upscaler callable core code takes.

Used for the texture deblur (core/texture/deblur.py): the model runs tiled exactly as ComfyUI's
"Upscale Image (using Model)" node runs it (512-px tiles, 32-px overlap, halving the tile on OOM),
on the torch device, and is moved back to the CPU afterwards.
"""
from __future__ import annotations

from typing import Callable

import torch


def comfy_upscaler(upscale_model) -> tuple[Callable[[torch.Tensor], torch.Tensor], int]:
    """(upscale([B,3,h,w] in 0..1) -> [B,3,s·h,s·w] in 0..1 on the input's device, s = the model's scale)."""
    import comfy.model_management as mm
    import comfy.utils

    scale = int(upscale_model.scale)
    device = mm.get_torch_device()

    @torch.inference_mode()  # as ComfyUI's own upscale node runs: the loader's weights are inference tensors, and
    def upscale(x: torch.Tensor) -> torch.Tensor:  # moving them to the GPU outside inference mode fails there
        upscale_model.to(device)
        try:
            tile = 512
            while True:
                try:
                    out = comfy.utils.tiled_scale(x.to(device), lambda a: upscale_model(a), tile_x=tile, tile_y=tile,
                                                  overlap=32, upscale_amount=scale)
                    return out.clamp(0, 1).to(x.device)
                except mm.OOM_EXCEPTION:
                    tile //= 2
                    if tile < 128:
                        raise
        finally:
            upscale_model.to("cpu")

    return upscale, scale
