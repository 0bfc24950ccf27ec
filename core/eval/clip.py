"""CLIP-I's image embedder outside ComfyUI: a transformers CLIP vision model from a local folder.

In ComfyUI the node passes the user's CLIP_VISION model instead (``encode_image(...).image_embeds``);
core only needs a callable images [B,H,W,3] in 0..1 → embeddings [B,D]. This one reads a Hugging Face
``CLIPVisionModelWithProjection`` folder (config.json + weights, e.g. openai/clip-vit-large-patch14)
with ``local_files_only`` (nothing is downloaded) and preprocesses like CLIP: bicubic resize of the
short side to the model's image size, centre crop, OpenAI mean/std.
"""
from __future__ import annotations

import os
from typing import Optional

import torch
import torch.nn.functional as F

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def clip_preprocess(images: torch.Tensor, size: int, mean=OPENAI_CLIP_MEAN, std=OPENAI_CLIP_STD) -> torch.Tensor:
    """[B,H,W,3] 0..1 → [B,3,size,size] normalised (short side resized, centre crop)."""
    x = images.permute(0, 3, 1, 2).float()
    h, w = x.shape[-2:]
    s = size / min(h, w)
    nh, nw = max(size, round(h * s)), max(size, round(w * s))
    x = F.interpolate(x, size=(nh, nw), mode="bicubic", align_corners=False, antialias=True).clamp(0, 1)
    top, left = (nh - size) // 2, (nw - size) // 2
    x = x[..., top:top + size, left:left + size]
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    sd = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / sd


class HFClipImageEmbedder:
    """Callable: images [B,H,W,3] 0..1 → projected CLIP image embeddings [B,D] (what CLIP-I compares)."""

    def __init__(self, model_dir: str, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None) -> None:
        if not os.path.isfile(os.path.join(model_dir, "config.json")):
            raise FileNotFoundError(
                f"CLIP vision model folder {model_dir!r} has no config.json: give a Hugging Face "
                "CLIPVisionModelWithProjection folder (e.g. openai/clip-vit-large-patch14) saved locally"
            )
        from transformers import CLIPVisionModelWithProjection

        self.model = CLIPVisionModelWithProjection.from_pretrained(model_dir, local_files_only=True)
        self.model.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
        self.size = int(self.model.config.image_size)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = clip_preprocess(images.to(self.device), self.size).to(next(self.model.parameters()).dtype)
        return self.model(pixel_values=x).image_embeds.float()
