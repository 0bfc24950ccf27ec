"""Image losses of the sculpt stage (weights live in ``SculptConfig``)."""
from __future__ import annotations

import torch


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (x * m).sum() / m.sum().clamp_min(1.0)


# The normal the authors' renderer composites outside the surface, in world coordinates: their normal
# image is (n + 1)/2 over a background of 0 (threestudio nvdiff_rasterizer), read back as 2·x − 1.
# Axis permutations between their frame and ours leave it unchanged.
GAN_NORMAL_BACKGROUND = (-1.0, -1.0, -1.0)


def gan_normal_loss(normal_premult: torch.Tensor, coverage: torch.Tensor, target: torch.Tensor, target_mask: torch.Tensor,
                    background: tuple[float, float, float] = GAN_NORMAL_BACKGROUND) -> torch.Tensor:
    """Stage A as the authors run it (``IDsculpt_geo.py``, ``guidance == "ref"``): mean over the pixels
    inside the GAN mask (> 0.5) of 1 − cos(rendered normal, GAN normal), where the rendered normal is
    composited over ``background`` with the antialiased coverage. GAN-mask pixels the surface does not
    cover cost 1 − cos(background, target), and partly covered silhouette pixels blend toward it: this
    is what pulls the silhouette onto the GAN mask (there is no mask term).

    normal_premult: [B,H,W,3] coverage-premultiplied world normals (``RenderOutput.normal_world``);
    coverage: [B,H,W,1] antialiased coverage (``RenderOutput.mask``); target [B,H,W,3]; target_mask
    [B,H,W,1] or [B,H,W].
    """
    bg = torch.as_tensor(background, dtype=normal_premult.dtype, device=normal_premult.device)
    pred = normal_premult + (1 - coverage) * bg
    m = target_mask if target_mask.dim() == 4 else target_mask[..., None]
    m = (m > 0.5).to(pred.dtype)
    cos = torch.nn.functional.cosine_similarity(pred, target.to(pred.dtype), dim=-1, eps=1e-8)[..., None]
    return _masked_mean(1 - cos, m)


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
