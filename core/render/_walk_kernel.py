"""The Triton kernel of the fused silhouette walk (imported only where Triton is installed; see
walk_triton.py for what it computes and why)."""
import triton
import triton.language as tl


@triton.jit
def _neg(x):
    # torch.signbit: the sign bit itself (true for -0.0)
    return x.to(tl.int32, bitcast=True) < 0


_POINTERS = ["sxy_ptr", "tri_ptr", "nbr_ptr", "opp_ptr", "b_ptr", "t_ptr", "tother_ptr", "offx_ptr", "offy_ptr", "ds_ptr",
             "dn_ptr", "tobg_ptr", "edge_t_ptr", "edge_k_ptr", "ok_ptr"]


# No specialisation on the sizes (divisible by 16 or not) or on the pointers' alignment: they change from
# step to step as the surface changes, and each new combination compiled the kernel again (~35 s each
# on the H100, inside the first sculpt steps: bench/bench_first_use.py). The loads are gathers, which
# alignment does not speed up.
@triton.jit(do_not_specialize=["n_pairs", "n_verts"], do_not_specialize_on_alignment=_POINTERS)
def walk(sxy_ptr, tri_ptr, nbr_ptr, opp_ptr, b_ptr, t_ptr, tother_ptr, offx_ptr, offy_ptr, ds_ptr, dn_ptr,
         tobg_ptr, edge_t_ptr, edge_k_ptr, ok_ptr, n_pairs, n_verts, eps, WALK_STEPS: tl.constexpr,
         BACKGROUND: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    live = i < n_pairs
    b = tl.load(b_ptr + i, mask=live, other=0)
    cur = tl.load(t_ptr + i, mask=live, other=0)
    t_other = tl.load(tother_ptr + i, mask=live, other=-1)
    offx = tl.load(offx_ptr + i, mask=live, other=0.0)
    offy = tl.load(offy_ptr + i, mask=live, other=0.0)
    ds = tl.load(ds_ptr + i, mask=live, other=1.0)
    dn = tl.load(dn_ptr + i, mask=live, other=0) != 0
    to_bg = tl.load(tobg_ptr + i, mask=live, other=0) != 0
    base = b * n_verts
    found = tl.zeros([BLOCK], dtype=tl.int1)
    last_ok = tl.zeros([BLOCK], dtype=tl.int1)
    edge_t = cur
    edge_k = tl.zeros([BLOCK], dtype=tl.int64)
    alive = live
    # a loop, not unrolled: the unrolled body made a large kernel that was slow to compile
    for _step in range(WALK_STEPS + 1):
        v0 = tl.load(tri_ptr + cur * 3 + 0, mask=live, other=0)
        v1 = tl.load(tri_ptr + cur * 3 + 1, mask=live, other=0)
        v2 = tl.load(tri_ptr + cur * 3 + 2, mask=live, other=0)
        x0 = tl.load(sxy_ptr + (base + v0) * 2, mask=live, other=0.0) + offx
        y0 = tl.load(sxy_ptr + (base + v0) * 2 + 1, mask=live, other=0.0) + offy
        x1 = tl.load(sxy_ptr + (base + v1) * 2, mask=live, other=0.0) + offx
        y1 = tl.load(sxy_ptr + (base + v1) * 2 + 1, mask=live, other=0.0) + offy
        x2 = tl.load(sxy_ptr + (base + v2) * 2, mask=live, other=0.0) + offx
        y2 = tl.load(sxy_ptr + (base + v2) * 2 + 1, mask=live, other=0.0) + offy
        # along the pair's axis (al) and across it (ac)
        al0 = tl.where(dn, y0, x0)
        al1 = tl.where(dn, y1, x1)
        al2 = tl.where(dn, y2, x2)
        ac0 = tl.where(dn, x0, y0)
        ac1 = tl.where(dn, x1, y1)
        ac2 = tl.where(dn, x2, y2)
        # edge k joins corners (k+1, k+2): edge 0 = (1, 2), edge 1 = (2, 0), edge 2 = (0, 1)
        st0 = _neg(ac1) != _neg(ac2)
        st1 = _neg(ac2) != _neg(ac0)
        st2 = _neg(ac0) != _neg(ac1)
        dal0, dac0 = al2 - al1, ac2 - ac1
        dal1, dac1 = al0 - al2, ac0 - ac2
        dal2, dac2 = al1 - al0, ac1 - ac0
        cr0 = ds * (al1 - tl.math.div_rn(ac1 * dal0, tl.where(st0, dac0, 1.0)))
        cr1 = ds * (al2 - tl.math.div_rn(ac2 * dal1, tl.where(st1, dac1, 1.0)))
        cr2 = ds * (al0 - tl.math.div_rn(ac0 * dal2, tl.where(st2, dac2, 1.0)))
        m0 = tl.where(st0, cr0, float("-inf"))
        m1 = tl.where(st1, cr1, float("-inf"))
        m2 = tl.where(st2, cr2, float("-inf"))
        # argmax, first index on ties (torch.argmax); all -inf -> 0
        k = tl.where(m1 > m0, 1, 0)
        mk = tl.maximum(m0, m1)
        k = tl.where(m2 > mk, 2, k).to(tl.int64)
        cr = tl.where(k == 0, cr0, tl.where(k == 1, cr1, cr2))
        st = tl.where(k == 0, st0, tl.where(k == 1, st1, st2))
        dal = tl.where(k == 0, dal0, tl.where(k == 1, dal1, dal2))
        dac = tl.where(k == 0, dac0, tl.where(k == 1, dac1, dac2))
        sp = tl.abs(dac) >= tl.abs(dal)
        # corners of edge k: a = k+1, b = k+2 (mod 3)
        xa = tl.where(k == 0, x1, tl.where(k == 1, x2, x0))
        ya = tl.where(k == 0, y1, tl.where(k == 1, y2, y0))
        xb = tl.where(k == 0, x2, tl.where(k == 1, x0, x1))
        yb = tl.where(k == 0, y2, tl.where(k == 1, y0, y1))
        ov = tl.load(opp_ptr + cur * 3 + k, mask=live, other=0)
        ox = tl.load(sxy_ptr + (base + ov) * 2, mask=live, other=0.0) + offx
        oy = tl.load(sxy_ptr + (base + ov) * 2 + 1, mask=live, other=0.0) + offy
        wing = (xa - ox) * (yb - oy) - (xb - ox) * (ya - oy)
        bb = (x1 - x0) * (y2 - y0) - (x2 - x0) * (y1 - y0)
        si = _neg(wing) == _neg(bb)
        usable = alive & st & sp & (cr > -eps) & (cr < 1 + eps)
        hit = usable & si
        take = hit
        found = found | hit
        if BACKGROUND:
            fb = usable & (si == 0) & to_bg
            last_ok = tl.where(alive, fb, last_ok)
            take = hit | fb
        edge_t = tl.where(take, cur, edge_t)
        edge_k = tl.where(take, k, edge_k)
        nxt = tl.load(nbr_ptr + cur * 3 + k, mask=live, other=-1)
        go = alive & st & (si == 0) & (nxt >= 0) & (nxt != t_other) & (cr < 1 + eps)
        alive = go
        cur = tl.where(go, nxt, cur)
    tl.store(edge_t_ptr + i, edge_t, mask=live)
    tl.store(edge_k_ptr + i, edge_k, mask=live)
    tl.store(ok_ptr + i, (found | last_ok).to(tl.int8), mask=live)

