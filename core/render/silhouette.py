"""The silhouette part of the torch rasteriser's analytic antialiasing (core/render/torch_backend.py).

nvdiffrast's antialiasing: for each horizontally / vertically adjacent pixel pair with different triangle
ids, the nearer triangle's *silhouette* edge that crosses the line between the two pixel centres is found,
and the pixel on the far side of the crossing from the midpoint is blended with its neighbour by
``0.5 - crossing distance``. The blend weight is a function of the edge's screen position, which is how
mask / silhouette losses get gradients to vertex positions. One extension: nvdiffrast only looks at the
covering triangle's own exit edge, which near the rim of a smooth dense mesh is almost never the silhouette
(the rim triangles are thinner than a pixel in projection), so it loses most of the silhouette gradient
there. Here the line is followed across interior edges until it leaves through a silhouette edge
(``walk_steps``), and next to background the last exit edge is the fallback (``background_silhouettes``).
With ``walk_steps=0, background_silhouettes=False`` the result is nvdiffrast's rule exactly.

This module holds the mesh topology the walk needs (:class:`TopologyHash`), the edge search
(:func:`find_silhouette_edge`, torch ops, or one Triton kernel from walk_triton.py), the differentiable
crossing distance of the chosen edge (:func:`crossing`) and nvdiffrast's ``pos_gradient_boost``
(:class:`GradScale`).
"""
from __future__ import annotations

import torch

from . import walk_triton


class TopologyHash:
    """Per-triangle opposite vertices across each edge, the torch analogue of nvdiffrast's hash.

    ``opposite[t, k]`` is the vertex of the neighbouring triangle across the edge opposite corner k
    of triangle t (the edge (v[k+1], v[k+2])), or v[k] itself where the edge is a boundary or is
    shared by more than two triangles: such edges then always count as silhouettes.
    ``neighbor[t, k]`` is that neighbouring triangle, -1 where there is none.
    """

    def __init__(self, tri: torch.Tensor) -> None:
        tri = tri.long()
        m = tri.shape[0]
        self.num_triangles = m
        self.opposite = tri.clone()
        self.neighbor = torch.full_like(tri, -1)
        if m == 0:
            return
        a = torch.stack([tri[:, 1], tri[:, 2], tri[:, 0]], dim=1)  # edge k = (a_k, b_k), opposite v_k
        b = torch.stack([tri[:, 2], tri[:, 0], tri[:, 1]], dim=1)
        n = int(tri.max()) + 1
        key = (torch.minimum(a, b) * n + torch.maximum(a, b)).reshape(-1)
        degenerate = (a == b).reshape(-1)
        key = torch.where(degenerate, torch.full_like(key, -1), key)
        order = torch.argsort(key)
        sk = key[order]
        _, inv, counts = torch.unique_consecutive(sk, return_inverse=True, return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        pos_in_group = torch.arange(sk.numel(), device=sk.device) - starts[inv]
        pair = (counts[inv] == 2) & (sk >= 0)
        partner_sorted = starts[inv] + (1 - pos_in_group)
        partner = order[partner_sorted.clamp(0, sk.numel() - 1)]  # flat (triangle*3 + corner) of neighbour
        flat_tri = tri.reshape(-1)
        opp = self.opposite.reshape(-1).clone()
        opp[order[pair]] = flat_tri[partner[pair]]
        self.opposite = opp.reshape(m, 3)
        nb = self.neighbor.reshape(-1).clone()
        nb[order[pair]] = partner[pair] // 3
        self.neighbor = nb.reshape(m, 3)

    def to(self, device: torch.device) -> "TopologyHash":
        self.opposite = self.opposite.to(device)
        self.neighbor = self.neighbor.to(device)
        return self


@torch.no_grad()
def find_silhouette_edge(
    pos, tri, topo: TopologyHash, b, t, t_other, rx, ry, ds, down, to_bg, h: int, w: int, eps: float,
    walk_steps: int, background_silhouettes: bool, fused_walk: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The triangle and edge at which each pair's line leaves the surface (no autograd).

    Step 0 is nvdiffrast's test: the owning triangle's edge that the line exits through, used
    if it is a silhouette edge. nvdiffrast stops there; where triangles near the rim are
    sub-pixel, that exit edge is usually an interior edge and the silhouette gradient is lost.
    So (``walk_steps`` > 0) the line is followed across interior edges into the neighbouring
    triangles until it exits through a silhouette edge. If no silhouette is reached and the
    neighbour pixel is background, the last exit edge stands in for it
    (``background_silhouettes``). Returns (triangle [K], edge slot [K], usable mask [K]).

    Why no autograd here: only the chosen edge's crossing distance carries a gradient, so the
    search runs on detached values over all pairs at once (masks instead of shrinking index
    sets: one host sync per walk step; vertex screen positions computed once; only the exit
    edge's silhouette test) and ``crossing`` recomputes that one distance with autograd — the
    same float expressions, so the values are bit-identical to evaluating it here.
    ``fused_walk``: on CUDA with Triton the search runs as one kernel (walk_triton.py); False: always
    these torch ops.
    """
    n = t.shape[0]
    dev = pos.device
    pos = pos.detach()
    # Screen positions of every vertex, once per call; per pair they are taken relative to the
    # pair's reference pixel (the same float expression as ``_screen``, so the same bits).
    pw = pos[..., 3].clamp_min(1e-8)
    sxy = torch.stack([pos[..., 0] / pw * (w / 2), pos[..., 1] / pw * (h / 2)], dim=-1)  # [B,N,2]
    off = torch.stack([w / 2 - rx, h / 2 - ry], dim=-1)  # [K,2]
    if fused_walk:
        fused = walk_triton.KERNEL.attempt(dev, lambda: walk_triton.find_silhouette_edge(
            sxy, tri, topo.neighbor, topo.opposite, b, t, t_other, off, ds, down, to_bg, walk_steps, background_silhouettes, eps))
        if fused is not None:
            return fused
    bcol, dn = b[:, None], down[:, None]
    nxt_a = torch.tensor([1, 2, 0], device=dev)  # edge k joins corners (k+1, k+2)
    nxt_b = torch.tensor([2, 0, 1], device=dev)
    found = torch.zeros(n, dtype=torch.bool, device=dev)
    last_ok = torch.zeros(n, dtype=torch.bool, device=dev)
    edge_t = t.clone()
    edge_k = torch.zeros(n, dtype=torch.long, device=dev)
    alive = torch.ones(n, dtype=torch.bool, device=dev)
    cur = t
    for step in range(walk_steps + 1):
        p = sxy[bcol, tri[cur]] + off[:, None, :]  # [K,3,2]
        xs, ys = p[..., 0], p[..., 1]
        # Along the pair's axis: x for right neighbours, y for down neighbours.
        al, ac = torch.where(dn, ys, xs), torch.where(dn, xs, ys)
        e_a, e_b, c_a, c_b = al[:, nxt_a], al[:, nxt_b], ac[:, nxt_a], ac[:, nxt_b]
        d_al, d_ac = e_b - e_a, c_b - c_a
        straddle = torch.signbit(c_a) != torch.signbit(c_b)
        cross = ds[:, None] * (e_a - c_a * d_al / torch.where(straddle, d_ac, torch.ones_like(d_ac)))
        # The exit edge: the largest crossing among the edges that straddle the line.
        k = torch.where(straddle, cross, torch.full_like(cross, -float("inf"))).argmax(dim=1)
        kk = k[:, None]
        cr = cross.gather(1, kk).squeeze(1)
        st = straddle.gather(1, kk).squeeze(1)
        # Steep enough for this pair direction (nvdiffrast's rule).
        sp = d_ac.gather(1, kk).squeeze(1).abs() >= d_al.gather(1, kk).squeeze(1).abs()
        # Silhouette test of edge k only: the wing triangle (opposite vertex + edge) has the
        # triangle's orientation when the neighbour folds back over the edge in screen space
        # (or there is none, then the opposite vertex is the triangle's own corner).
        ia, ib = nxt_a[k][:, None], nxt_b[k][:, None]
        xa, xb = xs.gather(1, ia).squeeze(1), xs.gather(1, ib).squeeze(1)
        ya, yb = ys.gather(1, ia).squeeze(1), ys.gather(1, ib).squeeze(1)
        o = sxy[b, topo.opposite[cur, k]] + off
        ox, oy = o[:, 0], o[:, 1]
        wing = (xa - ox) * (yb - oy) - (xb - ox) * (ya - oy)
        x0, x1, x2 = xs.unbind(1)
        y0, y1, y2 = ys.unbind(1)
        bb = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        si = torch.signbit(wing) == torch.signbit(bb)
        usable = alive & st & sp & (cr > -eps) & (cr < 1 + eps)
        hit = usable & si
        take = hit
        found |= hit
        # Background fallback: the *last* exit edge seen, if it is an interior edge usable for
        # this pair direction. A silhouette that is not steep for this direction belongs to the
        # other pair direction: then no fallback either (it would be counted twice).
        if background_silhouettes:
            fb = usable & ~si & to_bg
            last_ok = torch.where(alive, fb, last_ok)
            take = hit | fb
        edge_t = torch.where(take, cur, edge_t)
        edge_k = torch.where(take, k, edge_k)
        nxt = topo.neighbor[cur, k]
        # Stop on reaching the other pixel's triangle: a continuous surface, no silhouette between.
        go = alive & st & ~si & (nxt >= 0) & (nxt != t_other) & (cr < 1 + eps)
        if step == walk_steps or not bool(go.any()):
            break
        alive, cur = go, torch.where(go, nxt, cur)
    return edge_t, edge_k, found | last_ok


def _screen(pos, tri, b, t, rx, ry, h: int, w: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Corner screen positions [K,3] (pixels) of triangles ``t`` relative to the pair's reference pixel."""
    # one flat index_select (its backward is one index_add; advanced indexing's sorts the indices first)
    idx = (b[:, None] * pos.shape[1] + tri[t].long()).reshape(-1)
    pv = pos.reshape(-1, pos.shape[-1]).index_select(0, idx).view(-1, 3, pos.shape[-1])  # [K,3,4]
    # Walked-into neighbours may reach behind the camera: keep w > 0 so no inf / NaN enters the
    # graph (unselected edges get zero gradient, and 0 * inf would be NaN).
    pw = pv[..., 3].clamp_min(1e-8)
    xs = pv[..., 0] / pw * (w / 2) + (w / 2 - rx[:, None])
    ys = pv[..., 1] / pw * (h / 2) + (h / 2 - ry[:, None])
    return xs, ys


def crossing(pos, tri, b, t, k, rx, ry, ds, down, h: int, w: int) -> torch.Tensor:
    """Differentiable crossing distance (pixels, toward the neighbour) of edge ``k`` of ``t``
    with the pair's line: the walk's expression for one edge, with autograd."""
    xs, ys = _screen(pos, tri, b, t, rx, ry, h, w)
    dn = down[:, None]
    al, ac = torch.where(dn, ys, xs), torch.where(dn, xs, ys)
    ia, ib = ((k + 1) % 3)[:, None], ((k + 2) % 3)[:, None]  # edge k = corners (k+1, k+2)
    e_a, e_b = al.gather(1, ia).squeeze(1), al.gather(1, ib).squeeze(1)
    c_a, c_b = ac.gather(1, ia).squeeze(1), ac.gather(1, ib).squeeze(1)
    d_al, d_ac = e_b - e_a, c_b - c_a  # the edge straddles the line, so d_ac != 0
    return ds * (e_a - c_a * d_al / d_ac)


class GradScale(torch.autograd.Function):
    """Identity whose backward scales the gradient (nvdiffrast's ``pos_gradient_boost``)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: float) -> torch.Tensor:  # type: ignore[override]
        ctx.s = s
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):  # type: ignore[override]
        return g * ctx.s, None
