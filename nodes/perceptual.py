"""The LPIPS-VGG perceptual net for the nodes that use one (PanoHead Loader, Texture Refine).

Both take the same pair of files from models/idsculpt: the VGG16 backbone and, optionally, the
learned LPIPS v0.1 channel weights (``lpips/vgg.pth`` from the PyPI ``lpips`` package). The
``lpips_weights`` combo defaults to "auto": the table's file when it is there, else unit weights with
a warning (the loss is then not the authors').
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import folder_paths
import torch
from comfy_api.latest import io

from ..core.models import find_model, get_spec
from ..core.panohead.perceptual import VGG16Perceptual, load_vgg16
from .common import IDSCULPT_FOLDER, model_files, model_path

log = logging.getLogger("IDSculpt")

AUTO = "auto"
NONE = "none"


def _weight_files() -> list[str]:
    try:
        return [f for f in model_files(IDSCULPT_FOLDER) if f.lower().endswith((".pth", ".pt", ".safetensors", ".bin"))]
    except Exception:  # folder missing: the Combo still shows auto/none
        return []


def lpips_weights_input(name: str = "lpips_weights") -> io.Combo.Input:
    return io.Combo.Input(
        name, options=[AUTO, NONE] + _weight_files(), default=AUTO, optional=True,
        tooltip="Learned LPIPS v0.1 channel weights for the VGG16 perceptual loss (the lpips package's "
        "weights/v0.1/vgg.pth, put as models/idsculpt/lpips/vgg.pth). auto: that file when present; without it "
        "(or with 'none') every VGG channel weighs 1, which is not the authors' LPIPS loss (info says so).")


def resolve_lpips_weights(choice: Optional[str]) -> Optional[str]:
    """Path of the chosen LPIPS weights file, or None for unit weights."""
    if choice in (None, "", NONE):
        return None
    if choice == AUTO:
        path, _ = find_model(get_spec("lpips_vgg"), folder_paths.get_folder_paths)
        return path
    return model_path(IDSCULPT_FOLDER, choice, key="lpips_vgg")


def load_perceptual(vgg16_file: str, lpips_weights: Optional[str] = AUTO) -> VGG16Perceptual:
    """The perceptual net from the two combo choices; logs a warning when the learned weights are absent."""
    net = load_vgg16(model_path(IDSCULPT_FOLDER, vgg16_file, key="vgg16"), resolve_lpips_weights(lpips_weights))
    if not net.has_lpips_heads:
        log.warning("IDSculpt: %s", net.weights_note)
    return net


def texture_perceptual(net: VGG16Perceptual) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Texture Refine's perceptual term as the authors call it (``ip_controlnet_inpaint.py``: the 512-px
    render and the denoised image, both in 0..1, go to threestudio's LPIPS unchanged, although LPIPS is
    defined on [-1,1]; no resize). Returns [B]."""
    def perceptual(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return net(a, b, max_size=None)

    return perceptual
