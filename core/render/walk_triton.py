"""The walking antialiaser's edge search as one Triton kernel (CUDA only).

Why: the search in ``silhouette.find_silhouette_edge`` is ~50 small tensor ops per walk step over
all discontinuity pairs, up to ``walk_steps + 1`` steps, with a host sync per step. On an H100 a
mask-loss render spends ~1,280 kernel launches and 28 host syncs on the walk while the GPU is busy
for ~4 ms of a ~40 ms render (docs/PERFORMANCE.md): Python's launches are the cost, not the maths.
Here one program walks one pair from start to end, so the search is one launch and no sync.

Same algorithm and the same float expressions as the torch version (read it for the geometry):
divisions are IEEE round-to-nearest (``div_rn``) and the launch disables FMA contraction, so each
decision (which edge the line leaves through, whether it is a silhouette) matches the torch code's.
Only the search is here; the chosen edge's crossing distance is still computed by the torch code
with autograd (it carries the gradient).
"""
from __future__ import annotations

import torch

from ..speed.triton_kernel import OptionalKernel


def _load():
    from ._walk_kernel import walk

    return walk


#: the kernel (compiled on first launch); off for the process after its first failure
KERNEL = OptionalKernel(_load, "fused silhouette walk", "using the torch walk instead")


def find_silhouette_edge(sxy: torch.Tensor, tri: torch.Tensor, neighbor: torch.Tensor, opposite: torch.Tensor,
                         b: torch.Tensor, t: torch.Tensor, t_other: torch.Tensor, off: torch.Tensor, ds: torch.Tensor,
                         down: torch.Tensor, to_bg: torch.Tensor, walk_steps: int, background_silhouettes: bool,
                         eps: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``silhouette.find_silhouette_edge`` in one launch: (edge triangle [K], edge slot [K], usable [K]).

    sxy [B,N,2] vertex screen positions (pixels, from the image centre); tri/neighbor/opposite [M,3];
    per pair: batch b, owning triangle t, the other pixel's triangle t_other, off [K,2] (centre minus
    reference pixel), ds (±1), down and to_bg (bool).
    """
    kernel = KERNEL.get()
    if kernel is None:
        raise RuntimeError("the fused silhouette walk needs Triton")
    n = int(t.shape[0])
    edge_t = torch.empty(n, dtype=torch.int64, device=t.device)
    edge_k = torch.empty(n, dtype=torch.int64, device=t.device)
    ok = torch.empty(n, dtype=torch.int8, device=t.device)
    if n == 0:
        return edge_t, edge_k, ok.bool()
    block = 256
    f32 = torch.float32
    off = off.to(f32)
    kernel[((n + block - 1) // block,)](
        sxy.to(f32).contiguous(), tri.long().contiguous(), neighbor.long().contiguous(), opposite.long().contiguous(),
        b.long().contiguous(), t.long().contiguous(), t_other.long().contiguous(), off[:, 0].contiguous(),
        off[:, 1].contiguous(), ds.to(f32).contiguous(), down.to(torch.int8).contiguous(), to_bg.to(torch.int8).contiguous(),
        edge_t, edge_k, ok, n, int(sxy.shape[1]), float(eps), WALK_STEPS=int(walk_steps),
        BACKGROUND=bool(background_silhouettes), BLOCK=block, enable_fp_fusion=False)
    return edge_t, edge_k, ok.bool()
