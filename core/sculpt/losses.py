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

    Everything is a masked sum, with the 2×2 normal equations of the fit solved in float64: no boolean
    indexing, no solver, so no host sync (each one stalled the sculpt step's CPU). Fewer than 3 masked
    pixels give zero losses; a constant target fits its mean (a = 0), as the minimum-norm solution does.
    """
    m = (mask.reshape(-1) > 0.5).to(pred.dtype)
    p, t = pred.reshape(-1), target.reshape(-1).to(pred.dtype)
    n = m.sum()
    enough = n >= 3
    n_safe = n.clamp_min(1.0)
    with torch.no_grad():
        md, pd, td = m.double(), p.detach().double(), t.double()
        nd = md.sum().clamp_min(1.0)
        st, sp = (md * td).sum(), (md * pd).sum()
        stt, stp = (md * td * td).sum(), (md * td * pd).sum()
        var_t = stt - st * st / nd  # n · variance of the masked target
        flat = var_t <= 1e-12 * stt.abs().clamp_min(1e-300)
        a = torch.where(flat, torch.zeros_like(var_t), (stp - st * sp / nd) / torch.where(flat, torch.ones_like(var_t), var_t))
        b = (sp - a * st) / nd
    aligned = a.float() * t + b.float()
    mse = (m * (p - aligned) ** 2).sum() / n_safe
    pc, tc = (p - (m * p).sum() / n_safe) * m, (t - (m * t).sum() / n_safe) * m
    pearson = (pc * tc).sum() / (pc.norm() * tc.norm()).clamp_min(1e-8)
    zero = pred.sum() * 0
    return torch.where(enough, mse, zero), torch.where(enough, 1 - pearson, zero)


def mask_iou(a: torch.Tensor, b: torch.Tensor, threshold: float = 0.5) -> float:
    x, y = a > threshold, b > threshold
    union = (x | y).sum()
    return float((x & y).sum() / union.clamp_min(1))
