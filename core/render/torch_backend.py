"""Pure-torch rasteriser with nvdiffrast's interface and semantics (CPU, and CUDA as a fallback).

How it works, and why:

* ``rasterize`` is a z-buffer built *without* gradients, vectorised over triangles: every triangle's
  pixel bounding box is padded to a power-of-two size bucket, triangles of one bucket are expanded to
  all candidate pixels at once (chunked to bound memory), tested against their three edge functions,
  and the nearest one wins through one ``scatter_reduce(amin)`` of a 64-bit key (depth bits << 32 |
  triangle id). Edge functions of a shared edge are evaluated with the same canonical vertex order
  in both triangles, so they are exact negatives of each other: no cracks, no double coverage
  gaps. Then, for the covered pixels only, the barycentrics are *recomputed with autograd-friendly
  maths* from the winning triangle's clip positions (perspective-correct, like nvdiffrast), so
  ``rast[..., :3]`` is differentiable w.r.t. ``pos`` while the visibility decision is not
  (as in nvdiffrast).
* ``antialias`` is nvdiffrast's analytic antialiasing, with one extension: the line between two pixels of
  different triangles is followed across interior edges until it leaves through a silhouette edge
  (``walk_steps``), so a smooth dense mesh keeps its silhouette gradient; ``walk_steps=0,
  background_silhouettes=False`` is nvdiffrast's rule exactly. The edge search, the mesh topology it walks
  and the differentiable crossing live in core/render/silhouette.py; this class finds the pixel pairs
  and blends them.

Triangles with a vertex behind the near plane (z < -w) are dropped rather than clipped (nvdiffrast
clips them); heads seen from orbit cameras never reach the near plane.
"""
from __future__ import annotations

from typing import Any, Optional

import torch

from .backend import RenderBackend, check_rasterize_inputs
from .silhouette import GradScale, TopologyHash, crossing, find_silhouette_edge

_INT64_MAX = torch.iinfo(torch.int64).max
#: the default of TorchBackend(fused_walk=None): the edge search as one Triton kernel where available (a
#: process-wide switch for before/after benchmarks; nodes/vram.py sets it from IDSCULPT_FUSED_WALK)
FUSED_WALK = True


def _bucket(x: torch.Tensor) -> torch.Tensor:
    """Padded box size for x >= 1 from {1, 2, 3, 4, 6, 8, 12, 16, ...}: at most 1.5x padding, few groups."""
    x = x.clamp_min(1)
    p = torch.pow(2, torch.floor(torch.log2(x.double()))).long()  # largest power of two <= x
    return torch.where(x == p, p, torch.where((x <= p + p // 2) & (p >= 2), p + p // 2, 2 * p))


class TorchBackend(RenderBackend):
    """nvdiffrast-compatible rasteriser written in plain torch ops."""

    name = "torch"

    def __init__(
        self,
        device: torch.device | str | None = None,
        max_candidates: int = 1 << 22,
        background_silhouettes: bool = True,
        walk_steps: int = 8,
        fused_walk: Optional[bool] = None,
    ) -> None:
        super().__init__(device)
        self.max_candidates = int(max_candidates)  # pixel candidates per chunk: bounds peak memory
        # True: also antialias (and pass gradients through) the covering triangle's exit edge next to
        # background even where the mesh topology says it is not a silhouette; False: nvdiffrast's rule.
        self.background_silhouettes = bool(background_silhouettes)
        # Interior edges the antialiaser may walk across to reach the silhouette (0 = nvdiffrast).
        self.walk_steps = int(walk_steps)
        # On CUDA with Triton the edge search runs as one kernel (walk_triton.py); False: always torch ops.
        # None: FUSED_WALK (a process-wide switch for before/after benchmarks: nodes/vram.py sets it from
        # IDSCULPT_FUSED_WALK; core reads no environment).
        if fused_walk is None:
            fused_walk = FUSED_WALK
        self.fused_walk = bool(fused_walk)

    # ------------------------------------------------------------------------------ rasterize
    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int],
                  check_values: bool = True) -> torch.Tensor:
        pos, h, w = check_rasterize_inputs(pos, tri, resolution, check_values)
        bsz = pos.shape[0]
        tri_l = tri.long().to(pos.device)
        face_ids = self._visible_faces(pos.detach(), tri_l, h, w)  # [B*H*W] int64, -1 background
        return self._rast_from_ids(pos, tri_l, face_ids, bsz, h, w)

    @torch.no_grad()
    def _visible_faces(self, pos: torch.Tensor, tri: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """Z-buffer: id of the nearest triangle covering each pixel centre, -1 where none."""
        dev = pos.device
        bsz, m = pos.shape[0], tri.shape[0]
        zbuf = torch.full((bsz * h * w,), _INT64_MAX, dtype=torch.int64, device=dev)
        if m == 0:
            return torch.full((bsz * h * w,), -1, dtype=torch.int64, device=dev)
        p = pos.float()[:, tri]  # [B,M,3,4]
        cw = p[..., 3]
        ok = (cw > 1e-8).all(-1) & (p[..., 2] >= -cw).all(-1) & torch.isfinite(p).all(-1).all(-1)
        cw = torch.where(cw > 1e-8, cw, torch.ones_like(cw))
        lim = 1e6  # keep screen coordinates finite for vertices near w = 0 (their triangles are culled)
        sx = ((p[..., 0] / cw + 1) * (w / 2)).clamp(-lim, lim)  # pixel units, centres at j + 0.5
        sy = ((p[..., 1] / cw + 1) * (h / 2)).clamp(-lim, lim)
        sz = (p[..., 2] / cw).clamp(-2, 2)
        jmin = torch.ceil(sx.min(-1).values - 0.5).clamp_min(0)
        jmax = torch.floor(sx.max(-1).values - 0.5).clamp_max(w - 1)
        imin = torch.ceil(sy.min(-1).values - 0.5).clamp_min(0)
        imax = torch.floor(sy.max(-1).values - 0.5).clamp_max(h - 1)
        bw, bh = jmax - jmin + 1, imax - imin + 1
        area2 = (sx[..., 1] - sx[..., 0]) * (sy[..., 2] - sy[..., 0]) - (sx[..., 2] - sx[..., 0]) * (sy[..., 1] - sy[..., 0])
        ok &= (bw > 0) & (bh > 0) & (area2.abs() > 1e-10)
        bidx, tidx = ok.nonzero(as_tuple=True)
        if bidx.numel() == 0:
            return torch.full((bsz * h * w,), -1, dtype=torch.int64, device=dev)

        # Per-triangle data of the surviving (batch, triangle) pairs.
        X, Y, Z = sx[bidx, tidx], sy[bidx, tidx], sz[bidx, tidx]  # [T,3]
        vid = tri[tidx]  # [T,3] vertex ids: canonical edge orientation by vertex id
        x0, y0 = jmin[bidx, tidx], imin[bidx, tidx]
        bwt, bht = bw[bidx, tidx].long(), bh[bidx, tidx].long()
        # Edge k joins corners (k+1, k+2). Orient it from the lower to the higher vertex id so both
        # triangles sharing it evaluate the identical float expression; the sign that makes it
        # positive on the triangle's side is folded into (ex, ey), which negates exactly.
        ka = torch.tensor([1, 2, 0], device=dev)
        kb = torch.tensor([2, 0, 1], device=dev)
        va, vb = vid[:, ka], vid[:, kb]
        swap = va > vb
        ax = torch.where(swap, X[:, kb], X[:, ka])
        ay = torch.where(swap, Y[:, kb], Y[:, ka])
        ex = torch.where(swap, X[:, ka], X[:, kb]) - ax
        ey = torch.where(swap, Y[:, ka], Y[:, kb]) - ay
        e_at_corner = ex * (Y - ay) - ey * (X - ax)
        sgn = torch.where(e_at_corner >= 0, 1.0, -1.0)
        ex, ey = ex * sgn, ey * sgn
        # Depth plane z = zp0 * x + zp1 * y + zp2 (z/w is affine in screen space).
        area2 = e_at_corner.abs().clamp_min(1e-20)  # |2 * area| per edge (equal up to rounding)
        wz = Z / area2  # barycentric b_k = e_k / |2A|
        zp0 = (-ey * wz).sum(1)
        zp1 = (ex * wz).sum(1)
        zp2 = (wz * (ey * ax - ex * ay)).sum(1)

        bucket_w, bucket_h = _bucket(bwt), _bucket(bht)
        code = bucket_w * 65536 + bucket_h
        order = torch.argsort(code)
        codes, counts = torch.unique_consecutive(code[order], return_counts=True)
        start = 0
        for c, n in zip(codes.tolist(), counts.tolist()):
            gw, gh = c // 65536, c % 65536
            per = max(1, self.max_candidates // (gw * gh))
            offs = torch.arange(gw * gh, device=dev)
            oxh = (offs % gw).float() + 0.5
            oyh = (offs // gw).float() + 0.5
            for s in range(start, start + n, per):
                sel = order[s : min(s + per, start + n)]
                # Candidates past the bounding box lie outside the triangle (the box is tight to the
                # pixel centres), except past the image border: those are dropped below.
                fx = x0[sel, None] + oxh  # [T,K] pixel centres
                fy = y0[sel, None] + oyh
                emin = None
                for k in range(3):
                    e = ex[sel, k, None] * (fy - ay[sel, k, None]) - ey[sel, k, None] * (fx - ax[sel, k, None])
                    emin = e if emin is None else torch.minimum(emin, e)
                inside = emin >= 0
                ti, ki = inside.nonzero(as_tuple=True)
                if ti.numel() == 0:
                    continue
                cx, cy = fx[ti, ki], fy[ti, ki]
                tsel = sel[ti]
                z = zp0[tsel] * cx + zp1[tsel] * cy + zp2[tsel]
                keep = (cx < w) & (cy < h) & (z >= -1) & (z <= 1)
                cx, cy, z, tsel = cx[keep], cy[keep], z[keep], tsel[keep]
                pix = bidx[tsel] * (h * w) + cy.long() * w + cx.long()
                depth01 = ((z + 1) * 0.5).clamp(0, 1)  # >= 0: its float bits are monotonic
                key = (depth01.view(torch.int32).long() << 32) | tidx[tsel]
                zbuf.scatter_reduce_(0, pix, key, reduce="amin")
            start += n
        covered = zbuf != _INT64_MAX
        return torch.where(covered, zbuf & 0xFFFFFFFF, torch.full_like(zbuf, -1))

    @staticmethod
    def _rast_from_ids(pos: torch.Tensor, tri: torch.Tensor, face_ids: torch.Tensor, bsz: int, h: int, w: int) -> torch.Tensor:
        """(u, v, z/w, id+1) at the covered pixel centres, differentiable w.r.t. ``pos``."""
        pix = (face_ids >= 0).nonzero(as_tuple=True)[0]
        t = face_ids[pix]
        b = pix // (h * w)
        rem = pix % (h * w)
        py, px = rem // w, rem % w
        v = pos[b[:, None], tri[t]]  # [K,3,4]
        cw = v[..., 3]
        nx, ny, nz = v[..., 0] / cw, v[..., 1] / cw, v[..., 2] / cw
        qx = (2 * (px.to(pos.dtype) + 0.5) / w - 1)[:, None]  # pixel centre in NDC
        qy = (2 * (py.to(pos.dtype) + 0.5) / h - 1)[:, None]
        dx, dy = nx - qx, ny - qy  # corners relative to the sample point
        # Screen-space barycentrics from the sub-triangle areas; perspective correction divides by w.
        s0 = dx[:, 1] * dy[:, 2] - dx[:, 2] * dy[:, 1]
        s1 = dx[:, 2] * dy[:, 0] - dx[:, 0] * dy[:, 2]
        s2 = dx[:, 0] * dy[:, 1] - dx[:, 1] * dy[:, 0]
        tot = s0 + s1 + s2
        tot = torch.where(tot.abs() > 1e-30, tot, torch.full_like(tot, 1e-30))
        b0, b1, b2 = s0 / tot, s1 / tot, s2 / tot
        zw = b0 * nz[:, 0] + b1 * nz[:, 1] + b2 * nz[:, 2]
        c0, c1, c2 = b0 / cw[:, 0], b1 / cw[:, 1], b2 / cw[:, 2]
        cs = c0 + c1 + c2
        u, vv = c0 / cs, c1 / cs
        vals = torch.stack([u, vv, zw, (t + 1).to(pos.dtype)], dim=-1)
        rast = torch.zeros(bsz * h * w, 4, dtype=pos.dtype, device=pos.device).index_put((pix,), vals)
        return rast.reshape(bsz, h, w, 4)

    # ------------------------------------------------------------------------------ interpolate
    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor) -> tuple[torch.Tensor, None]:
        if rast.dim() != 4 or rast.shape[-1] != 4:
            raise ValueError(f"interpolate: rast must be [B,H,W,4], got {tuple(rast.shape)}")
        bsz, h, w, _ = rast.shape
        if attr.dim() == 3 and attr.shape[0] == 1:
            attr = attr[0]
        if attr.dim() == 3 and attr.shape[0] != bsz:
            raise ValueError(f"interpolate: attr batch {attr.shape[0]} does not match rast batch {bsz}")
        if attr.dim() not in (2, 3):
            raise ValueError(f"interpolate: attr must be [N,C] or [B,N,C], got {tuple(attr.shape)}")
        tri = tri.long().to(rast.device)
        flat = rast.reshape(-1, 4)
        ids = flat[:, 3].detach().long() - 1
        pix = (ids >= 0).nonzero(as_tuple=True)[0]
        t = ids[pix]
        f = tri[t]  # [K,3]
        a = attr[f] if attr.dim() == 2 else attr[(pix // (h * w))[:, None], f]  # [K,3,C]
        u, v = flat[pix, 0:1], flat[pix, 1:2]
        val = u * a[:, 0] + v * a[:, 1] + (1 - u - v) * a[:, 2]
        out = torch.zeros(bsz * h * w, attr.shape[-1], dtype=val.dtype, device=rast.device).index_put((pix,), val)
        return out.reshape(bsz, h, w, -1), None

    # ------------------------------------------------------------------------------ texture
    def texture(
        self, tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap"
    ) -> torch.Tensor:
        if tex.dim() == 3:
            tex = tex[None]
        if tex.dim() != 4 or uv.dim() != 4 or uv.shape[-1] != 2:
            raise ValueError(f"texture: need tex [B,Ht,Wt,C] and uv [B,H,W,2], got {tuple(tex.shape)}, {tuple(uv.shape)}")
        if tex.shape[0] not in (1, uv.shape[0]):
            raise ValueError(f"texture: tex batch {tex.shape[0]} must be 1 or match uv batch {uv.shape[0]}")
        if filter_mode not in ("linear", "nearest", "auto"):
            raise ValueError(f"texture: the torch backend supports filter_mode 'linear' or 'nearest', got {filter_mode!r}")
        if boundary_mode not in ("wrap", "clamp", "zero"):
            raise ValueError(f"texture: boundary_mode must be 'wrap', 'clamp' or 'zero', got {boundary_mode!r}")
        tb, th, tw, c = tex.shape
        bsz = uv.shape[0]
        # Texel centres at (k + 0.5) / size; v is up, so row 0 (top) is v = 1.
        x = uv[..., 0] * tw - 0.5
        y = (1 - uv[..., 1]) * th - 0.5
        flat = tex.reshape(-1, c)
        base = (torch.arange(bsz, device=uv.device) * (th * tw) if tb > 1 else torch.zeros(bsz, dtype=torch.long, device=uv.device))
        base = base.view(bsz, 1, 1)

        def fetch(ix: torch.Tensor, iy: torch.Tensor) -> torch.Tensor:
            valid = None
            if boundary_mode == "wrap":
                ix, iy = ix % tw, iy % th
            elif boundary_mode == "clamp":
                ix, iy = ix.clamp(0, tw - 1), iy.clamp(0, th - 1)
            else:
                valid = ((ix >= 0) & (ix < tw) & (iy >= 0) & (iy < th)).unsqueeze(-1)
                ix, iy = ix.clamp(0, tw - 1), iy.clamp(0, th - 1)
            val = flat[base + iy * tw + ix]
            return val if valid is None else val * valid

        if filter_mode == "nearest":
            return fetch(torch.floor(x + 0.5).long(), torch.floor(y + 0.5).long())
        xf, yf = torch.floor(x.detach()), torch.floor(y.detach())
        fx, fy = (x - xf).unsqueeze(-1), (y - yf).unsqueeze(-1)
        ix, iy = xf.long(), yf.long()
        top = fetch(ix, iy) * (1 - fx) + fetch(ix + 1, iy) * fx
        bot = fetch(ix, iy + 1) * (1 - fx) + fetch(ix + 1, iy + 1) * fx
        return top * (1 - fy) + bot * fy

    # ------------------------------------------------------------------------------ antialias
    def topology_hash(self, tri: torch.Tensor) -> TopologyHash:
        return TopologyHash(tri.to(self.device) if tri.device != self.device else tri)

    def antialias(
        self,
        color: torch.Tensor,
        rast: torch.Tensor,
        pos: torch.Tensor,
        tri: torch.Tensor,
        topology_hash: Optional[Any] = None,
        pos_gradient_boost: float = 1.0,
    ) -> torch.Tensor:
        if color.dim() != 4 or rast.shape[:3] != color.shape[:3]:
            raise ValueError(f"antialias: color [B,H,W,C] must match rast [B,H,W,4], got {tuple(color.shape)} vs {tuple(rast.shape)}")
        if pos.dim() == 2:
            pos = pos[None].expand(color.shape[0], -1, -1)
        if pos.shape[0] != color.shape[0]:
            raise ValueError(f"antialias: pos batch {pos.shape[0]} must match color batch {color.shape[0]}")
        topo = topology_hash if isinstance(topology_hash, TopologyHash) else TopologyHash(tri.to(pos.device))
        if topo.num_triangles != tri.shape[0]:
            raise ValueError("antialias: topology_hash was built for a different triangle tensor")
        if pos_gradient_boost != 1.0:
            pos = GradScale.apply(pos, float(pos_gradient_boost))
        bsz, h, w, c = color.shape
        tri = tri.long().to(pos.device)
        topo = topo.to(pos.device)
        ids = rast[..., 3].detach().long() - 1  # [B,H,W]
        zz = rast[..., 2].detach()
        flat_color = color.reshape(-1, c)
        eps = 0.0625  # nvdiffrast: expect no more than 1/16 pixel inaccuracy
        # The discontinuity pairs of both directions (right, then down neighbours) form one batch, so
        # the walk and the differentiable crossing run once per call, not once per direction.
        pairs = []
        for down in (False, True):
            if down:
                i0, i1, z0, z1 = ids[:, :-1, :], ids[:, 1:, :], zz[:, :-1, :], zz[:, 1:, :]
            else:
                i0, i1, z0, z1 = ids[:, :, :-1], ids[:, :, 1:], zz[:, :, :-1], zz[:, :, 1:]
            b, py, px = (i0 != i1).nonzero(as_tuple=True)
            if b.numel() == 0:
                continue
            t0, t1 = i0[b, py, px], i1[b, py, px]
            # The nearer triangle (or the only one) owns the discontinuity, as in nvdiffrast.
            use1 = (t1 >= 0) & ((t0 < 0) | (z1[b, py, px] <= z0[b, py, px]))
            t = torch.where(use1, t1, t0)
            ds = torch.where(use1, -1.0, 1.0).to(pos.dtype)
            pix0 = b * (h * w) + py * w + px
            pix1 = pix0 + (w if down else 1)
            # Reference pixel: the one the chosen triangle covers; coordinates relative to its centre.
            rx = (px + (use1 & (not down))).to(pos.dtype) + 0.5
            ry = (py + (use1 & down)).to(pos.dtype) + 0.5
            to_bg = (t0 < 0) | (t1 < 0)
            t_other = torch.where(use1, t0, t1)
            dn = torch.full_like(use1, down)
            pairs.append((b, t, t_other, rx, ry, ds, dn, to_bg, pix0, pix1))
        if not pairs:
            return flat_color.reshape(bsz, h, w, c)
        b, t, t_other, rx, ry, ds, dn, to_bg, pix0, pix1 = (torch.cat(x) for x in zip(*pairs))
        edge_t, edge_k, ok = self._find_silhouette_edge(pos, tri, topo, b, t, t_other, rx, ry, ds, dn, to_bg, h, w, eps)
        sel = ok.nonzero(as_tuple=True)[0]
        if sel.numel() == 0:
            return flat_color.reshape(bsz, h, w, c)
        # Only the chosen edge's crossing carries gradient: evaluate it once, with autograd.
        dc = crossing(pos, tri, b[sel], edge_t[sel], edge_k[sel], rx[sel], ry[sel], ds[sel], dn[sel], h, w).clamp(0, 1)
        alpha = ds[sel] * (0.5 - dc)
        p0, p1 = pix0[sel], pix1[sel]
        delta = alpha[:, None] * (flat_color.index_select(0, p1) - flat_color.index_select(0, p0))
        target = torch.where(alpha.detach() > 0, p0, p1)
        return flat_color.index_add(0, target, delta).reshape(bsz, h, w, c)

    def _find_silhouette_edge(self, pos, tri, topo, b, t, t_other, rx, ry, ds, down, to_bg, h: int, w: int,
                              eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`silhouette.find_silhouette_edge` with this backend's walk settings (one seam for tests)."""
        return find_silhouette_edge(pos, tri, topo, b, t, t_other, rx, ry, ds, down, to_bg, h, w, eps,
                                    self.walk_steps, self.background_silhouettes, self.fused_walk)
