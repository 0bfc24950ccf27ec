"""Ray casting onto a triangle mesh: first hits of rays, and the world rays through pixels of a camera.

A plain torch Moller-Trumbore test: it runs on CPU and GPU with no extra dependency (trimesh's ray module
needs rtree/embree, which are not always there). Camera rays (one common origin, a forward cone) go through
a screen-space grid so the cost is linear in mesh size; other rays take a chunked brute-force path.
Used to place landmarks on a head (core/face/align.py, core/panohead/place_mesh.py).
"""
from __future__ import annotations

import math

import torch

from ..camera import Cameras

_CHUNK_ELEMENTS = 4_000_000  # rays x triangles per chunk: bounds the temporary memory (~50 MB)


def raycast(
    origins: torch.Tensor, directions: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """First intersections of rays with a triangle mesh (both faces of a triangle count).

    origins, directions: [R,3] (directions need not be unit: t is in units of |direction|).
    Returns t [R] (inf on a miss), triangle index [R] (-1 on a miss), barycentrics (b1, b2) [R,2].

    Rays from one common origin within a forward cone (camera rays: every use in this pack) go
    through a 2D grid: triangles are projected from the origin, binned by their screen bounding
    boxes against the rays' cells, and only (ray, triangle) pairs sharing a cell get the exact
    Moller-Trumbore test -- linear in mesh size (a 330k-face head costs about what a 5k-face one
    costs with the brute-force path). Other rays use :func:`raycast_bruteforce`.
    """
    o = origins.reshape(-1, 3).float()
    d = directions.reshape(-1, 3).to(o)
    if o.shape[0] > 0 and faces.shape[0] > 0 and bool(((o - o[:1]).abs().max() < 1e-6)):
        out = _raycast_from_point(o[0], d, vertices.to(o), faces.to(o.device).long())
        if out is not None:
            return out
    return raycast_bruteforce(o, d, vertices, faces)


def _mt_pairs(o, d, v0, v1, v2, ri, fi):
    """Moller-Trumbore on (ray, triangle) index pairs; returns (hit mask, t, b1, b2) per pair."""
    a0, e1, e2 = v0[fi], v1[fi] - v0[fi], v2[fi] - v0[fi]
    dd, oo = d[ri], o[ri]
    p = torch.cross(dd, e2, dim=-1)
    det = (e1 * p).sum(-1)
    ok = det.abs() > 1e-12
    inv = 1.0 / torch.where(ok, det, torch.ones_like(det))
    tvec = oo - a0
    u = (tvec * p).sum(-1) * inv
    q = torch.cross(tvec, e1, dim=-1)
    w = (dd * q).sum(-1) * inv
    t = (e2 * q).sum(-1) * inv
    hit = ok & (u >= 0) & (w >= 0) & (u + w <= 1) & (t > 1e-6)
    return hit, t, u, w


def _reduce_first(r, ri, fi, hit, t, u, w, device):
    best_t = torch.full((r,), math.inf, device=device)
    best_f = torch.full((r,), -1, dtype=torch.long, device=device)
    best_uv = torch.zeros(r, 2, device=device)
    if hit.any():
        ri, fi, t, u, w = ri[hit], fi[hit], t[hit], u[hit], w[hit]
        best_t = best_t.scatter_reduce(0, ri, t, reduce="amin")
        is_min = t == best_t[ri]
        best_f[ri[is_min]] = fi[is_min]
        best_uv[ri[is_min]] = torch.stack([u[is_min], w[is_min]], -1)
    return best_t, best_f, best_uv


def _raycast_from_point(origin, d_raw, v, f):
    r = d_raw.shape[0]
    dlen = d_raw.norm(dim=-1).clamp_min(1e-12)
    d = d_raw / dlen[:, None]
    axis = torch.nn.functional.normalize(d.mean(0), dim=0)
    cos = d @ axis
    if float(cos.min()) < 0.3:  # rays spread too wide for one projection plane
        return None
    helper = torch.tensor([0.0, 1.0, 0.0], device=d.device) if abs(float(axis[1])) < 0.9 else torch.tensor([1.0, 0.0, 0.0], device=d.device)
    ax = torch.nn.functional.normalize(torch.cross(helper, axis, dim=0), dim=0)
    ay = torch.cross(axis, ax, dim=0)
    basis = torch.stack([ax, ay, axis], 1)  # [3,3]
    pr = (d @ basis)
    ray2 = pr[:, :2] / pr[:, 2:]
    q = (v - origin) @ basis  # vertices in the ray frame
    tri = q[f]  # [M,3,3]
    depth = tri[..., 2]
    front = (depth > 1e-6).all(-1)
    mixed = ~front & (depth > 1e-6).any(-1)  # crosses the origin plane: test those by brute force
    lo2 = ray2.min(0).values
    hi2 = ray2.max(0).values
    ext = float((hi2 - lo2).max()) + 1e-9
    fidx = front.nonzero()[:, 0]
    p2 = tri[fidx, :, :2] / tri[fidx, :, 2:]
    blo, bhi = p2.min(1).values, p2.max(1).values
    keep = (bhi >= lo2).all(-1) & (blo <= hi2).all(-1)
    fidx, blo, bhi = fidx[keep], blo[keep], bhi[keep]
    g = max(1, int(math.ceil(math.sqrt(r))) * 2)
    cs = ext / g
    rc = ((ray2 - lo2) / cs).floor().long().clamp(0, g - 1)
    rcell = rc[:, 1] * g + rc[:, 0]
    order = torch.argsort(rcell)
    counts = torch.bincount(rcell, minlength=g * g)
    starts = torch.cumsum(counts, 0) - counts
    c0 = ((blo - lo2) / cs).floor().long().clamp(0, g - 1)
    c1 = ((bhi - lo2) / cs).floor().long().clamp(0, g - 1)
    nx, ny = c1[:, 0] - c0[:, 0] + 1, c1[:, 1] - c0[:, 1] + 1
    ncell = nx * ny
    if int(ncell.sum()) > 50_000_000:  # pathological (huge triangles): fall back
        return None
    tri_rep = torch.repeat_interleave(torch.arange(fidx.shape[0], device=d.device), ncell)
    k = torch.arange(tri_rep.shape[0], device=d.device) - torch.repeat_interleave(torch.cumsum(ncell, 0) - ncell, ncell)
    cx = c0[tri_rep, 0] + k % nx[tri_rep]
    cy = c0[tri_rep, 1] + k // nx[tri_rep]
    cell = cy * g + cx
    nr = counts[cell]
    pair_tri = torch.repeat_interleave(tri_rep, nr)
    pair_cell = torch.repeat_interleave(cell, nr)
    kk = torch.arange(pair_tri.shape[0], device=d.device) - torch.repeat_interleave(torch.cumsum(nr, 0) - nr, nr)
    ri = order[starts[pair_cell] + kk]
    fi = fidx[pair_tri]
    if bool(mixed.any()):
        midx = mixed.nonzero()[:, 0]
        ri = torch.cat([ri, torch.arange(r, device=d.device).repeat_interleave(midx.shape[0])])
        fi = torch.cat([fi, midx.repeat(r)])
    vv = v.float()
    o = origin.reshape(1, 3).expand(r, 3)
    hit, t, u, w = _mt_pairs(o, d, vv[f[:, 0]], vv[f[:, 1]], vv[f[:, 2]], ri, fi)
    best_t, best_f, best_uv = _reduce_first(r, ri, fi, hit, t, u, w, d.device)
    return best_t / dlen, best_f, best_uv


def raycast_bruteforce(
    origins: torch.Tensor, directions: torch.Tensor, vertices: torch.Tensor, faces: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`raycast` for arbitrary rays: a bounding-sphere test for every (ray, triangle) pair,
    done with two matrix products (distance of the triangle's centroid from the ray line < its
    bounding radius), then Moller-Trumbore on the surviving pairs. Chunked over triangles."""
    o = origins.reshape(-1, 3).float()
    d_raw = directions.reshape(-1, 3).to(o)
    dlen = d_raw.norm(dim=-1).clamp_min(1e-12)
    d = d_raw / dlen[:, None]
    v = vertices.to(o)
    f = faces.to(o.device).long()
    r, m = o.shape[0], f.shape[0]
    best_t = torch.full((r,), math.inf, device=o.device)
    best_f = torch.full((r,), -1, dtype=torch.long, device=o.device)
    best_uv = torch.zeros(r, 2, device=o.device)
    if r == 0 or m == 0:
        return best_t, best_f, best_uv
    v0, v1, v2 = v[f[:, 0]], v[f[:, 1]], v[f[:, 2]]
    cen = (v0 + v1 + v2) / 3
    rad = torch.stack([(v0 - cen).norm(dim=-1), (v1 - cen).norm(dim=-1), (v2 - cen).norm(dim=-1)], -1).amax(-1) * 1.001 + 1e-7
    od = (o * d).sum(-1)  # [R]
    oo = (o * o).sum(-1)
    chunk = max(1, _CHUNK_ELEMENTS // r)
    for s in range(0, m, chunk):
        c = cen[s : s + chunk]
        rc = rad[s : s + chunk]
        along = d @ c.T - od[:, None]  # (c - o) . d, [R,C]
        dist2 = (c * c).sum(-1)[None] - 2 * (o @ c.T) + oo[:, None] - along * along
        cand = (dist2 <= (rc * rc)[None]) & (along > -rc[None])
        ri, ci = cand.nonzero(as_tuple=True)
        if ri.numel() == 0:
            continue
        fi = ci + s
        hit, t, u, w = _mt_pairs(o, d, v0, v1, v2, ri, fi)
        if not hit.any():
            continue
        ri, fi, t, u, w = ri[hit], fi[hit], t[hit], u[hit], w[hit]
        tmin = torch.full((r,), math.inf, device=o.device).scatter_reduce(0, ri, t, reduce="amin")
        better = tmin < best_t
        if better.any():
            # the pair that realised each ray's minimum
            is_min = better[ri] & (t == tmin[ri])
            rsel = ri[is_min]
            best_t[rsel] = t[is_min]
            best_f[rsel] = fi[is_min]
            best_uv[rsel] = torch.stack([u[is_min], w[is_min]], -1)
    return best_t / dlen, best_f, best_uv


def pixel_rays(cameras: Cameras, pixels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """World rays through pixel positions [B,N,2] (x right, y down, centres at +0.5).

    Returns origins [B,N,3] and directions [B,N,3] scaled so that t = camera-frame depth z.
    """
    f = cameras.focal_pixels()[:, None]
    x = (pixels[..., 0] - cameras.width / 2) / f
    y = (pixels[..., 1] - cameras.height / 2) / f
    d_cam = torch.stack([x, y, torch.ones_like(x)], -1)
    d = d_cam @ cameras.cam2world[:, :3, :3].transpose(1, 2)
    o = cameras.position[:, None].expand_as(d)
    return o, d
