"""Image losses of the sculpt stage (weights live in ``SculptConfig``)."""
from __future__ import annotations

import torch


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp_min(1.0)


def normal_cosine_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean (1 − cos) between rendered and target normals [B,H,W,3] inside ``mask`` [B,H,W,1]
    (stage A: GAN-view normals). The renderer premultiplies silhouette normals by coverage, so both
    sides are renormalised first."""
    p = torch.nn.functional.normalize(pred, dim=-1, eps=1e-8)
    t = torch.nn.functional.normalize(target, dim=-1, eps=1e-8)
    return _masked_mean(1 - (p * t).sum(-1, keepdim=True), mask)


def mask_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between rendered coverage and target mask [B,H,W,1]."""
    return ((pred - target) ** 2).mean()


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE over the channels of the pixels inside ``mask`` (reference normals inside the face mask)."""
    return _masked_mean(((pred - target) ** 2).mean(-1, keepdim=True), mask)


def depth_losses(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(MSE after least-squares scale and shift, 1 − Pearson correlation) of relative depths.

    The reference depth is relative (a generated disparity map), so only its shape can be matched:
    the target is mapped onto the prediction by the least-squares a·target + b (coefficients detached,
    as in the authors' code), and the correlation term is scale- and shift-free by construction.
    pred, target [H,W,1] or [B,H,W,1]; mask of the same shape.
    """
    m = mask.reshape(-1) > 0.5
    if int(m.sum()) < 3:
        z = pred.sum() * 0
        return z, z
    p, t = pred.reshape(-1)[m], target.reshape(-1)[m]
    with torch.no_grad():
        a_mat = torch.stack([t, torch.ones_like(t)], -1)
        coef = torch.linalg.lstsq(a_mat.double(), p.detach().double()[:, None]).solution.float().squeeze(1)
    aligned = coef[0] * t + coef[1]
    mse = ((p - aligned) ** 2).mean()
    pc, tc = p - p.mean(), t - t.mean()
    pearson = (pc * tc).sum() / (pc.norm() * tc.norm()).clamp_min(1e-8)
    return mse, 1 - pearson


def mask_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> float:
    x, y = a > threshold, b > threshold
    union = (x | y).sum()
    return float((x & y).sum() / union.clamp_min(1))
