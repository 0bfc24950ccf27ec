"""LPIPS (Zhang et al. 2018) with the AlexNet backbone, state-dict compatible with the public files.

The paper measures fidelity at the reference view with LPIPS(AlexNet) at 224 px. The `lpips` package
downloads its backbone from torchvision at first use, which this pack never does, so this is our own
implementation of the same network that reads the same files from a model folder:

* the backbone: a torchvision-style AlexNet state dict (``features.{0,3,6,8,10}.{weight,bias}``, the
  ``classifier.*`` keys are ignored), e.g. torchvision's ``alexnet-owt-7be5be79.pth``; or a full
  `lpips` model state dict (``net.slice{1..5}.{N}.*``, the layout ``lpips.LPIPS().state_dict()`` saves);
* the linear calibration layers: the `lpips` package's ``weights/v0.1/alex.pth``
  (``lin{0..4}.model.1.weight`` of shapes [1,C,1,1], C = 64, 192, 384, 256, 256).

Computation (LPIPS v0.1, ``spatial=False``): images in [-1,1] are shifted/scaled by the package's
ScalingLayer, features are tapped after the five ReLUs, unit-normalised along channels, their squared
differences weighted by the 1x1 linear layers, averaged over space and summed over layers.
"""
from __future__ import annotations

import os
from typing import Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..lpips_ops import LPIPS_SCALE, LPIPS_SHIFT, unit_normalize
from ..models import missing_model_message
from ..state_dict import read_state_dict, wrong_model_error

# Channel counts of the five AlexNet taps (after features.1, .4, .7, .9, .11).
ALEX_CHANNELS = (64, 192, 384, 256, 256)
_TAPS = (1, 4, 7, 9, 11)

LIN_FILE = "alex.pth"
BACKBONE_CANDIDATES = (
    "alexnet-owt-7be5be79.pth",
    "alexnet.pth",
    "alexnet.safetensors",
    "lpips_alex.pth",
)


def _alexnet_features() -> nn.Sequential:
    """torchvision's ``alexnet().features`` layer for layer, so its state-dict keys load unchanged."""
    return nn.Sequential(
        nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=False),
        nn.MaxPool2d(kernel_size=3, stride=2),
    )


class _NetLin(nn.Module):
    """The lpips package's NetLinLayer: Dropout then a bias-free 1x1 conv (keys ``model.1.weight``)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Dropout(), nn.Conv2d(channels, 1, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)




class LPIPSAlex(nn.Module):
    """LPIPS v0.1 with AlexNet. ``forward(x, y)`` takes [B,3,H,W] in [-1,1] and returns [B]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = _alexnet_features()
        for i, c in enumerate(ALEX_CHANNELS):
            self.add_module(f"lin{i}", _NetLin(c))
        self.register_buffer("shift", torch.tensor(LPIPS_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(LPIPS_SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval().requires_grad_(False)

    # ------------------------------------------------------------------ weights
    def load_backbone_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load torchvision AlexNet keys (``features.N.*``) or lpips model keys (``net.sliceK.N.*``)."""
        feats: dict[str, torch.Tensor] = {}
        for k, v in sd.items():
            if k.startswith("features."):
                feats[k[len("features."):]] = v
            elif k.startswith("net.slice"):
                # lpips keeps torchvision's layer index inside each slice: net.slice2.3.weight = features.3.weight
                rest = k.split(".", 2)[2]
                feats[rest] = v
        if not feats:
            raise ValueError(
                "LPIPS backbone file holds no AlexNet feature weights (expected torchvision keys "
                "'features.0.weight' ... or lpips keys 'net.slice1.0.weight' ...)"
            )
        own = self.features.state_dict()
        missing, unexpected = sorted(set(own) - set(feats)), sorted(set(feats) - set(own))
        shapes = [f"{k} {tuple(feats[k].shape)} (AlexNet: {tuple(own[k].shape)})" for k in own
                  if k in feats and feats[k].shape != own[k].shape]
        if missing or unexpected or shapes:
            raise ValueError(f"LPIPS backbone keys do not match AlexNet: missing {missing}, unexpected {unexpected}"
                             + (f", shapes differ: {shapes[:2]}" if shapes else ""))
        self.features.load_state_dict(feats, strict=True)

    def load_lin_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Load the lpips package's ``alex.pth`` (``lin{i}.model.1.weight``)."""
        lins = {k: v for k, v in sd.items() if k.startswith("lin")}
        want = {f"lin{i}.model.1.weight" for i in range(len(ALEX_CHANNELS))}
        if set(lins) != want:
            raise ValueError(f"LPIPS linear-layer file must hold exactly {sorted(want)}, found {sorted(lins)}")
        for i, c in enumerate(ALEX_CHANNELS):
            got = tuple(lins[f"lin{i}.model.1.weight"].shape)
            if got != (1, c, 1, 1):
                raise ValueError(f"lin{i}.model.1.weight has shape {got}, AlexNet's tap {i} needs (1, {c}, 1, 1)")
        self.load_state_dict(lins, strict=False)

    # ------------------------------------------------------------------ maths
    def feature_taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for i, layer in enumerate(self.features):
            x = layer(x)
            if i in _TAPS:
                taps.append(x)
            if i == _TAPS[-1]:
                break
        return taps

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        if x.shape != y.shape or x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"LPIPS needs two [B,3,H,W] images of one shape, got {tuple(x.shape)} and {tuple(y.shape)}")
        # Two separate passes: identical inputs then give bitwise-identical features, hence exactly 0.
        fx, fy = self.feature_taps(x), self.feature_taps(y)
        total = x.new_zeros(x.shape[0])
        for i, (a, b) in enumerate(zip(fx, fy)):
            d = (unit_normalize(a) - unit_normalize(b)) ** 2
            total = total + getattr(self, f"lin{i}")(d).mean(dim=(1, 2, 3))
        return total


def lpips_distance(
    model: LPIPSAlex, image_a: torch.Tensor, image_b: torch.Tensor, resolution: Optional[int] = 224
) -> torch.Tensor:
    """LPIPS between ComfyUI-layout images [B,H,W,3] (or [H,W,3]) in 0..1; returns [B].

    Both are resized to ``resolution``² first (the paper's 224 px); None keeps the input size.
    """
    def prep(img: torch.Tensor) -> torch.Tensor:
        img = torch.as_tensor(img, dtype=torch.float32)
        if img.dim() == 3:
            img = img[None]
        if img.dim() != 4 or img.shape[-1] != 3:
            raise ValueError(f"LPIPS images must be [B,H,W,3] RGB in 0..1, got {tuple(img.shape)}")
        x = img.permute(0, 3, 1, 2).clamp(0, 1)
        if resolution is not None and tuple(x.shape[-2:]) != (resolution, resolution):
            x = F.interpolate(x, size=(resolution, resolution), mode="bilinear", align_corners=False, antialias=True)
        return x * 2 - 1

    dev = next(model.parameters()).device
    a, b = prep(image_a).to(dev), prep(image_b).to(dev)
    if a.shape[0] != b.shape[0]:
        if a.shape[0] == 1:
            a = a.expand_as(b)
        elif b.shape[0] == 1:
            b = b.expand_as(a)
        else:
            raise ValueError(f"LPIPS batch sizes differ: {a.shape[0]} vs {b.shape[0]}")
    with torch.no_grad():
        return model(a, b)


def find_lpips_files(folders: Iterable[str]) -> tuple[Optional[str], Optional[str]]:
    """(backbone path, alex.pth path) found in the first folders that hold them, else None each."""
    backbone = lin = None
    for folder in folders:
        if not folder or not os.path.isdir(folder):
            continue
        if lin is None and os.path.isfile(os.path.join(folder, LIN_FILE)):
            lin = os.path.join(folder, LIN_FILE)
        if backbone is None:
            for name in BACKBONE_CANDIDATES:
                if os.path.isfile(os.path.join(folder, name)):
                    backbone = os.path.join(folder, name)
                    break
    return backbone, lin


def load_lpips_alex(folders: Iterable[str] | str, device: torch.device | str = "cpu") -> LPIPSAlex:
    """Build LPIPS(AlexNet) from files in a model folder; never downloads.

    Raises FileNotFoundError naming the files and where to get them when they are absent.
    """
    folders = [folders] if isinstance(folders, str) else list(folders)
    backbone, lin = find_lpips_files(folders)
    if backbone is None or lin is None:
        # One table message per absent file (core/models.py), so this matches every other loader.
        need = []
        if backbone is None:
            need.append(missing_model_message(BACKBONE_CANDIDATES[0], "idsculpt", folders, key="lpips_alex"))
        if lin is None:
            need.append(missing_model_message(LIN_FILE, "idsculpt", folders, key="lpips_lin"))
        raise FileNotFoundError("LPIPS(AlexNet) weights missing. " + " ".join(need))
    model = LPIPSAlex()
    backbone_sd = read_state_dict(backbone, "lpips_alex")
    try:
        model.load_backbone_state_dict(backbone_sd)
    except ValueError as e:
        raise wrong_model_error(backbone, backbone_sd, "lpips_alex", str(e)) from None
    lin_sd = read_state_dict(lin, "lpips_lin")
    # A full lpips model file may also serve as the backbone; its lin keys are read from alex.pth only.
    try:
        model.load_lin_state_dict(lin_sd)
    except ValueError as e:
        raise wrong_model_error(lin, lin_sd, "lpips_lin", str(e)) from None
    return model.to(device)
