"""Similarity fits (scale, rotation, translation) between 3D point sets: Umeyama's least squares and a
deterministic RANSAC over 3-point subsets. Used to map MediaPipe's 3D landmarks onto points found on a head
mesh (core/face/align.py) and to place a head mesh by a portrait's landmarks (core/panohead/place_mesh.py).
"""
from __future__ import annotations

import itertools

import torch


def umeyama(src: torch.Tensor, dst: torch.Tensor) -> tuple[float, torch.Tensor, torch.Tensor]:
    """Least-squares similarity dst ~ s * R @ src + t (Umeyama 1991). Returns (s, R [3,3], t [3])."""
    src = src.double()
    dst = dst.double()
    mu_s, mu_d = src.mean(0), dst.mean(0)
    xs, yd = src - mu_s, dst - mu_d
    cov = yd.T @ xs / src.shape[0]
    u, sv, vt = torch.linalg.svd(cov)
    dfix = torch.ones(3, dtype=src.dtype)
    if torch.det(u) * torch.det(vt) < 0:
        dfix[2] = -1.0
    rot = u @ torch.diag(dfix) @ vt
    var_s = (xs**2).sum(1).mean()
    s = float((sv * dfix).sum() / var_s) if var_s > 0 else 1.0
    t = mu_d - s * rot @ mu_s
    return s, rot.float(), t.float()


def ransac_similarity(
    src: torch.Tensor, dst: torch.Tensor, threshold: float
) -> tuple[float, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Robust similarity: every 3-point subset is fitted (7 points -> 35 fits, deterministic), the
    one with most inliers (residual < threshold; ties -> lower inlier residual) wins, and the final
    transform is the least-squares fit on its inliers. Returns (s, R, t, inlier mask [N])."""
    n = src.shape[0]
    best: tuple[int, float, torch.Tensor] | None = None
    for combo in itertools.combinations(range(n), 3):
        idx = list(combo)
        tri = dst[idx]
        if torch.linalg.norm(torch.cross(tri[1] - tri[0], tri[2] - tri[0], dim=0)) < 1e-9:
            continue  # collinear sample: rotation undetermined
        s, rot, t = umeyama(src[idx], dst[idx])
        res = (s * src @ rot.T + t - dst).norm(dim=1)
        inl = res < threshold
        score = (int(inl.sum()), -float(res[inl].mean()) if inl.any() else 0.0)
        if best is None or score > (best[0], best[1]):
            best = (score[0], score[1], inl)
    if best is None or best[0] < 3:
        s, rot, t = umeyama(src, dst)
        return s, rot, t, torch.ones(n, dtype=torch.bool)
    inl = best[2]
    s, rot, t = umeyama(src[inl], dst[inl])
    return s, rot, t, inl
