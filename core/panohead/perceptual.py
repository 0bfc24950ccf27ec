"""LPIPS-style VGG16 perceptual distance for the PanoHead inversion.

PanoHead's projector uses NVIDIA's TorchScript ``vgg16.pt`` (LPIPS features of VGG16, downloaded
at run time). Nothing is downloaded here: the user puts a VGG16 file in the pack's model folder.
Accepted files (``.pth``/``.pt``/``.bin`` via ``torch.load(weights_only=True)``, or
``.safetensors``):
  * torchvision's ``vgg16-397923af.pth`` state dict (``features.N.weight``; ``classifier.*`` ignored);
  * a features-only dict (``N.weight``) or LPIPS' backbone layout (``sliceK.N.weight``, any prefix);
  * optionally LPIPS' linear heads (``lin0.model.1.weight`` ... ``lin4``) in the same file: then the
    distance is exactly LPIPS(VGG); without them every channel weighs 1 (the "LPIPS features"
    squared distance the projector uses).
Distance: for the taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, unit-normalise features along
channels, take the (weighted) squared difference, average over pixels, sum over taps.
"""
from __future__ import annotations

import os
import re
from typing import Optional

import torch
import torch.nn.functional as F

from ..eval.lpips import LPIPS_SCALE, LPIPS_SHIFT, unit_normalize
from ..models import missing_model_message, read_state_dict

_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices of the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
_CHANNELS = (64, 128, 256, 512, 512)
VGG_FILENAMES = ("vgg16-397923af.pth", "vgg16.pth", "vgg16.safetensors")


class VGG16Perceptual(torch.nn.Module):
    """torchvision-compatible ``features`` stack (same indices) + optional LPIPS heads."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[torch.nn.Module] = []
        in_ch = 3
        for v in _CFG:
            if v == "M":
                layers.append(torch.nn.MaxPool2d(2, 2))
            else:
                layers += [torch.nn.Conv2d(in_ch, v, 3, padding=1), torch.nn.ReLU(inplace=False)]
                in_ch = v
        self.features = torch.nn.Sequential(*layers)
        self.lin = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(c), requires_grad=False) for c in _CHANNELS])
        # LPIPS input scaling of [-1,1] images (equivalent to ImageNet mean/std normalisation)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.has_lpips_heads = False
        self.requires_grad_(False)

    def taps(self, images: torch.Tensor, max_size: int = 256) -> list[torch.Tensor]:
        """images [B,3,H,W] in [-1,1] -> unit-normalised feature maps at the 5 taps (inputs larger
        than ``max_size`` are area-downsampled first, 256 as in PanoHead's projector)."""
        if images.shape[-1] > max_size:
            images = F.interpolate(images, size=(max_size, max_size), mode="area")
        x = (images - self.shift) / self.scale
        outs = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                outs.append(unit_normalize(x))
            if i >= _TAPS[-1]:
                break
        return outs

    def distance(self, a_taps: list[torch.Tensor], b_taps: list[torch.Tensor]) -> torch.Tensor:
        """Per-sample perceptual distance [B] between precomputed tap lists."""
        total = 0.0
        for k, (fa, fb) in enumerate(zip(a_taps, b_taps)):
            d = (fa - fb).square() * self.lin[k].view(1, -1, 1, 1)
            total = total + d.sum(1).mean(dim=(1, 2))
        return total

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return self.distance(self.taps(a), self.taps(b))


def load_vgg16(path: str) -> VGG16Perceptual:
    """Build the perceptual net from a VGG16 weight file (see module docstring for layouts)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            missing_model_message(os.path.basename(path), "idsculpt", [os.path.dirname(path) or "."], key="vgg16")
            + " (An LPIPS vgg16 file works too.)")
    sd = read_state_dict(path)
    net = VGG16Perceptual()
    feats: dict[str, torch.Tensor] = {}
    lins: dict[int, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.search(r"(?:^|\.)(?:features|slice\d)\.(\d+)\.(weight|bias)$", k) or re.fullmatch(r"(\d+)\.(weight|bias)", k)
        if m:
            feats[f"{m.group(1)}.{m.group(2)}"] = v.float()
            continue
        m = re.search(r"lin(\d)\.model\.1\.weight$", k)
        if m:
            lins[int(m.group(1))] = v.float().reshape(-1)
    try:
        net.features.load_state_dict(feats, strict=True)
    except RuntimeError as e:
        raise ValueError(f"{os.path.basename(path)} does not hold VGG16 conv weights in torchvision/LPIPS layout: {e}") from e
    if len(lins) == 5:
        for k, v in lins.items():
            net.lin[k].data.copy_(v)
        net.has_lpips_heads = True
    return net.eval()


def find_vgg16(folder: Optional[str]) -> Optional[str]:
    if not folder or not os.path.isdir(folder):
        return None
    for name in VGG_FILENAMES:
        p = os.path.join(folder, name)
        if os.path.isfile(p):
            return p
    return None
