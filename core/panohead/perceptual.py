"""LPIPS-VGG perceptual distance for the PanoHead inversion and the texture refinement.

Both of the authors' perceptual losses are LPIPS v0.1 over VGG16 with the learned per-channel
weights: PanoHead's projector calls NVIDIA's TorchScript ``vgg16.pt`` with ``return_lpips=True``
(LPIPS features derived from the pre-trained LPIPS weights), and the texture refinement calls
threestudio's ``PerceptualLoss`` (VGG16 + ``lin0..lin4`` loaded from LPIPS' ``vgg.pth``).
Nothing is downloaded here; two files in the pack's model folder make the network:

* the VGG16 backbone (``.pth``/``.pt``/``.bin`` read with ``weights_only=True``, or
  ``.safetensors``): torchvision's ``vgg16-397923af.pth`` (``features.N.*``; ``classifier.*``
  ignored), a features-only dict (``N.*``) or LPIPS' layout (``sliceK.N.*``, any prefix);
* the learned channel weights: LPIPS v0.1 ``vgg.pth`` from the PyPI ``lpips`` package
  (``lpips/weights/v0.1/vgg.pth``: ``lin{0..4}.model.1.weight`` of shapes [1,C,1,1],
  C = 64, 128, 256, 512, 512), given as a separate file (``lin_path``), or inside the backbone
  file when that is a full LPIPS state dict.

Distance (``lpips.LPIPS.forward``, v0.1, ``spatial=False``): scale the [-1,1] images by LPIPS'
ScalingLayer, take VGG16's relu1_2, relu2_2, relu3_3, relu4_3, relu5_3, unit-normalise each along
channels (norm + 1e-10), square the difference, weight channel c of tap k by lin_k[c] (the 1x1
convolution), average over pixels and sum over the five taps. Without the weights every channel
weighs 1: a plain normalised-VGG distance, NOT the authors' loss (``has_lpips_heads`` is False and
``weights_note`` says so for the nodes to report).
"""
from __future__ import annotations

import os
import re
from typing import Optional

import torch
import torch.nn.functional as F

from ..lpips_ops import LPIPS_SCALE, LPIPS_SHIFT, unit_normalize
from ..models import missing_model_message
from ..state_dict import read_state_dict, wrong_model_error

_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
_TAPS = (3, 8, 15, 22, 29)  # indices of the ReLUs after conv1_2, conv2_2, conv3_3, conv4_3, conv5_3
_CHANNELS = (64, 128, 256, 512, 512)
VGG_FILENAMES = ("vgg16-397923af.pth", "vgg16.pth", "vgg16.safetensors")
#: where the learned LPIPS v0.1 VGG weights go in models/idsculpt (table key ``lpips_vgg``)
LPIPS_VGG_FILENAMES = ("lpips/vgg.pth", "vgg.pth")

UNIT_WEIGHTS_NOTE = ("learned LPIPS channel weights absent (lpips/vgg.pth not given): every VGG channel weighs 1, "
                     "so this perceptual loss is NOT the authors' LPIPS-VGG")


class VGG16Perceptual(torch.nn.Module):
    """torchvision-compatible ``features`` stack (same indices) + LPIPS' per-channel weights."""

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
        # lin[k][c] = LPIPS' lin_k 1x1-conv weight of channel c (1 for every channel without vgg.pth)
        self.lin = torch.nn.ParameterList([torch.nn.Parameter(torch.ones(c), requires_grad=False) for c in _CHANNELS])
        # LPIPS input scaling of [-1,1] images (equivalent to ImageNet mean/std normalisation)
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1))
        self.has_lpips_heads = False
        self.requires_grad_(False)

    def _comfy_cache_tensors(self) -> list[torch.Tensor]:
        """The weights, for a host cache that sizes the outputs holding this net (ComfyUI's RAM-pressure
        cache calls ``_comfy_cache_tensors()``; core never imports ComfyUI, this is plain duck typing)."""
        return [*self.parameters(), *self.buffers()]

    @property
    def weights_note(self) -> str:
        """One line for node info / logs: which distance this is."""
        if self.has_lpips_heads:
            return "perceptual loss: LPIPS-VGG with the learned LPIPS v0.1 channel weights (as the authors)"
        return "perceptual loss: " + UNIT_WEIGHTS_NOTE

    def taps(self, images: torch.Tensor, max_size: Optional[int] = 256) -> list[torch.Tensor]:
        """images [B,3,H,W] in [-1,1] -> unit-normalised feature maps at the 5 taps. Inputs wider
        than ``max_size`` are area-downsampled to it first (256, as PanoHead's projector does);
        None keeps the input size (the texture refinement's LPIPS runs at 512)."""
        if max_size is not None and images.shape[-1] > max_size:
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
        """Per-sample distance [B] between precomputed tap lists: sum over taps of the spatial mean
        of the channel-weighted squared difference (LPIPS' lin 1x1 conv, then spatial_average)."""
        total = 0.0
        for k, (fa, fb) in enumerate(zip(a_taps, b_taps)):
            d = (fa - fb).square() * self.lin[k].view(1, -1, 1, 1)
            total = total + d.sum(1).mean(dim=(1, 2))
        return total

    def forward(self, a: torch.Tensor, b: torch.Tensor, max_size: Optional[int] = None) -> torch.Tensor:
        """LPIPS between [B,3,H,W] images in [-1,1] (at their own size unless ``max_size``) -> [B]."""
        return self.distance(self.taps(a, max_size), self.taps(b, max_size))

    def load_lin_weights(self, sd: dict, source: str = "LPIPS weights") -> None:
        """Set the channel weights from an LPIPS state dict (``lin{k}.model.1.weight`` [1,C,1,1],
        any prefix; other keys ignored). Raises ValueError unless all five have VGG16's shapes."""
        lins = _lin_tensors(sd)
        missing = [k for k in range(len(_CHANNELS)) if k not in lins]
        if missing:
            raise ValueError(f"{source} holds no LPIPS VGG channel weights lin{missing}.model.1.weight "
                             f"(expected the lpips package's weights/v0.1/vgg.pth)")
        for k, c in enumerate(_CHANNELS):
            v = lins[k]
            if v.numel() != c:
                raise ValueError(f"{source}: lin{k}.model.1.weight has {v.numel()} channels, VGG16's tap {k} has {c} "
                                 f"(an AlexNet/SqueezeNet alex.pth/squeeze.pth instead of vgg.pth?)")
            self.lin[k].data.copy_(v.reshape(-1))
        self.has_lpips_heads = True


def _lin_tensors(sd: dict) -> dict[int, torch.Tensor]:
    out: dict[int, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.search(r"(?:^|\.)lin(\d)\.model\.1\.weight$", k)
        if m and torch.is_tensor(v):
            out[int(m.group(1))] = v.float()
    return out


def load_vgg16(path: str, lin_path: Optional[str] = None) -> VGG16Perceptual:
    """The perceptual net from a VGG16 backbone file and, optionally, LPIPS' ``vgg.pth`` channel
    weights (``lin_path``). Without ``lin_path`` the weights come from the backbone file when it is
    a full LPIPS state dict, else every channel weighs 1 (``weights_note`` says so)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            missing_model_message(os.path.basename(path), "idsculpt", [os.path.dirname(path) or "."], key="vgg16")
            + " (An LPIPS vgg16 file works too.)")
    if lin_path is not None and not os.path.isfile(lin_path):
        raise FileNotFoundError(missing_model_message(os.path.basename(lin_path), "idsculpt",
                                                      [os.path.dirname(lin_path) or "."], key="lpips_vgg"))
    sd = read_state_dict(path, "vgg16")
    net = VGG16Perceptual()
    feats: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        m = re.search(r"(?:^|\.)(?:features|slice\d)\.(\d+)\.(weight|bias)$", k) or re.fullmatch(r"(\d+)\.(weight|bias)", k)
        if m:
            feats[f"{m.group(1)}.{m.group(2)}"] = v.float()
    own = net.features.state_dict()
    missing = [k for k in own if k not in feats]
    shapes = [f"{k} {tuple(feats[k].shape)} (VGG16: {tuple(own[k].shape)})" for k in own if k in feats and feats[k].shape != own[k].shape]
    extra = [k for k in feats if k not in own]
    if missing or shapes or extra:
        detail = ("no VGG16 conv weights in torchvision/LPIPS layout (features.N.weight)" if not feats else
                  f"conv weights missing: {missing[:4]}" if missing else f"shapes differ: {shapes[:2]}" if shapes
                  else f"layers VGG16 does not have: {extra[:4]}")
        raise wrong_model_error(path, sd, "vgg16", detail)
    net.features.load_state_dict(feats, strict=True)
    if lin_path is not None:
        lin_sd = read_state_dict(lin_path, "lpips_vgg")
        try:
            net.load_lin_weights(lin_sd, os.path.basename(lin_path))
        except ValueError as e:
            raise wrong_model_error(lin_path, lin_sd, "lpips_vgg", str(e)) from None
    elif len(_lin_tensors(sd)) == len(_CHANNELS):
        try:
            net.load_lin_weights(sd, os.path.basename(path))
        except ValueError as e:
            raise wrong_model_error(path, sd, "vgg16", str(e)) from None
    return net.eval()


def find_vgg16(folder: Optional[str]) -> Optional[str]:
    return _first_file(folder, VGG_FILENAMES)


def find_lpips_vgg(folder: Optional[str]) -> Optional[str]:
    """LPIPS' ``vgg.pth`` in a model folder (``lpips/vgg.pth`` first), else None."""
    return _first_file(folder, LPIPS_VGG_FILENAMES)


def _first_file(folder: Optional[str], names: tuple[str, ...]) -> Optional[str]:
    if not folder or not os.path.isdir(folder):
        return None
    for name in names:
        p = os.path.join(folder, *name.split("/"))
        if os.path.isfile(p):
            return p
    return None
