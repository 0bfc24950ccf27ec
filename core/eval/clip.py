"""CLIP-I's image embedder outside ComfyUI: a transformers CLIP vision model from a local folder.

In ComfyUI the node passes the user's CLIP_VISION model instead (``encode_image(...).image_embeds``);
core only needs a callable images [B,H,W,3] in 0..1 → embeddings [B,D]. This one reads a Hugging Face
``CLIPVisionModelWithProjection`` folder (config.json + weights, e.g. openai/clip-vit-large-patch14)
with ``local_files_only`` (nothing is downloaded) and preprocesses like CLIP: bicubic resize of the
short side to the model's image size, centre crop, OpenAI mean/std.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import torch
import torch.nn.functional as F

from ..state_dict import ModelFileError, check_weight_file, read_state_dict, safetensors_shapes, wrong_model_error

#: weight files of a saved Hugging Face model, in the order transformers prefers them
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
#: what this loader wants (ComfyUI's CLIP-I node instead takes models/clip_vision's single file)
CLIP_FOLDER = ("a CLIPVisionModelWithProjection folder (config.json + model.safetensors) saved from Hugging Face "
               "`openai/clip-vit-large-patch14`")
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


def _weight_file(model_dir: str) -> str:
    return next((os.path.join(model_dir, n) for n in HF_WEIGHT_FILES if os.path.isfile(os.path.join(model_dir, n))), "")


def check_clip_folder(model_dir: str) -> None:
    """A saved CLIP vision folder, checked before transformers reads it: config.json readable and of a
    CLIP model, and the weight file whole (a corrupt or truncated file gets the pack's message)."""
    cfg_path = os.path.join(model_dir, "config.json")
    if not os.path.isfile(cfg_path):
        raise FileNotFoundError(
            f"CLIP vision model folder {model_dir!r} has no config.json: give a Hugging Face "
            "CLIPVisionModelWithProjection folder (e.g. openai/clip-vit-large-patch14) saved locally"
        )
    try:
        with open(cfg_path, encoding="utf-8") as fh:
            cfg = json.load(fh)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ModelFileError(f"{cfg_path} is corrupt or truncated: not valid JSON ({e}). "
                             f"Expected {CLIP_FOLDER}.", "corrupt", cfg_path) from None
    kind = cfg.get("model_type") if isinstance(cfg, dict) else None
    if kind not in ("clip", "clip_vision_model"):
        raise ModelFileError(f"{model_dir!r} holds a {kind or 'model without a model_type'} model (config.json), not a "
                             f"CLIP vision model. Expected {CLIP_FOLDER}.", "wrong", cfg_path)
    weights = _weight_file(model_dir)
    if not weights:
        raise FileNotFoundError(f"CLIP vision model folder {model_dir!r} has no {' or '.join(HF_WEIGHT_FILES)}. "
                                f"Expected {CLIP_FOLDER}.")
    check_weight_file(weights, CLIP_FOLDER)


class HFClipImageEmbedder:
    """Callable: images [B,H,W,3] 0..1 → projected CLIP image embeddings [B,D] (what CLIP-I compares)."""

    def __init__(self, model_dir: str, device: torch.device | str = "cpu", dtype: Optional[torch.dtype] = None) -> None:
        check_clip_folder(model_dir)
        from transformers import CLIPVisionModelWithProjection

        try:
            self.model, info = CLIPVisionModelWithProjection.from_pretrained(model_dir, local_files_only=True,
                                                                              output_loading_info=True)
        except (OSError, ValueError, RuntimeError) as e:  # files the checks above could not see into
            raise ModelFileError(f"CLIP vision model folder {model_dir!r} could not be loaded "
                                 f"({str(e).splitlines()[0]}). Expected {CLIP_FOLDER}.", "corrupt") from None
        # transformers fills weights the file lacks with random values and only logs it: refuse instead
        missing = [k for k in info.get("missing_keys", []) if "position_ids" not in k]
        if missing:
            weights = _weight_file(model_dir)
            raise wrong_model_error(weights, safetensors_shapes(weights) if weights.endswith(".safetensors") else
                                    read_state_dict(weights, CLIP_FOLDER), CLIP_FOLDER,
                                    f"{len(missing)} CLIP vision weights missing, e.g. {missing[:3]}", kind="clip_vision")
        self.model.to(device=device, dtype=dtype or torch.float32).eval().requires_grad_(False)
        self.size = int(self.model.config.image_size)
        self.device = torch.device(device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        x = clip_preprocess(images.to(self.device), self.size).to(next(self.model.parameters()).dtype)
        return self.model(pixel_values=x).image_embeds.float()
