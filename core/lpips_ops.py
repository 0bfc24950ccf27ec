"""LPIPS's shared pieces (Zhang et al. 2018, the ``lpips`` package): its input scaling and per-tap normalisation.

Used by the evaluation's LPIPS-Alex (core/eval/lpips.py) and by the LPIPS-VGG of the PanoHead inversion and the
texture refinement (core/panohead/perceptual.py): a primitive, so those stages do not import each other.
"""
from __future__ import annotations

import torch

# The lpips package's ScalingLayer constants (ImageNet statistics expressed for inputs in [-1,1]).
LPIPS_SHIFT = (-0.030, -0.088, -0.188)
LPIPS_SCALE = (0.458, 0.448, 0.450)


def unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Feature maps [B,C,H,W] scaled to unit length along channels (LPIPS' per-tap normalisation)."""
    # Same form as lpips.normalize_tensor: divide by (norm + eps), not by max(norm, eps).
    return x / (torch.sqrt(torch.sum(x * x, dim=1, keepdim=True)) + eps)
