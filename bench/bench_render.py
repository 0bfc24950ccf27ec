"""Benchmark of core.render: rasterize + interpolate + antialias, forward + backward, both backends.

On CUDA (the lead runs this on an H100): an ~80k-face mesh (icosphere level 6 with bumps, 81,920
faces) at 512², 1 and 4 views, for nvdiffrast, nvdiffrast + the walking antialiaser
("nvdiffrast_walk") and the pure-torch backend; plus full ``render_mesh`` forward + backward, the
silhouette-gradient ratio (autograd d(mask area)/d(scale) of a sphere over the analytic value) per
backend, and the backend agreement check (mask IoU, normal cosine, face ids).
Timing: warm-up, then CUDA events around each iteration, median; peak memory from
``torch.cuda.max_memory_allocated`` per configuration. Results are printed and written as JSON.

    python bench/bench_render.py --out bench/results/render.json       # CUDA
    python bench/bench_render.py --smoke [--out x.json]                 # tiny, CPU, torch backend
"""
from __future__ import annotations

import json
import math
import os
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402
import _timing  # noqa: E402

_pack.load()

import torch  # noqa: E402

from idsculpt.core.camera import Cameras  # noqa: E402
from idsculpt.core.render import get_backend, render_mesh  # noqa: E402
from idsculpt.core.render.renderer import compare_backends, vertex_normals  # noqa: E402


def icosphere(level: int, device: torch.device, bumps: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """Unit icosphere (20 * 4**level faces) with smooth bumps: self-occlusion, varied normals."""
    t = (1 + math.sqrt(5)) / 2
    v = torch.tensor(
        [[-1, t, 0], [1, t, 0], [-1, -t, 0], [1, -t, 0], [0, -1, t], [0, 1, t], [0, -1, -t], [0, 1, -t],
         [t, 0, -1], [t, 0, 1], [-t, 0, -1], [-t, 0, 1]], dtype=torch.float64)
    f = torch.tensor(
        [[0, 11, 5], [0, 5, 1], [0, 1, 7], [0, 7, 10], [0, 10, 11], [1, 5, 9], [5, 11, 4], [11, 10, 2],
         [10, 7, 6], [7, 1, 8], [3, 9, 4], [3, 4, 2], [3, 2, 6], [3, 6, 8], [3, 8, 9], [4, 9, 5],
         [2, 4, 11], [6, 2, 10], [8, 6, 7], [9, 8, 1]], dtype=torch.int64)
    v = v / v.norm(dim=-1, keepdim=True)
    for _ in range(level):
        e = torch.cat([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        key = torch.minimum(e[:, 0], e[:, 1]) * len(v) + torch.maximum(e[:, 0], e[:, 1])
        uniq, inv = torch.unique(key, return_inverse=True)
        a, b = uniq // len(v), uniq % len(v)
        mid = v[a] + v[b]
        mid = mid / mid.norm(dim=-1, keepdim=True)
        m = inv.view(3, -1) + len(v)  # midpoint ids of edges (01, 12, 20) per face
        v = torch.cat([v, mid])
        f = torch.cat([
            torch.stack([f[:, 0], m[0], m[2]], 1), torch.stack([f[:, 1], m[1], m[0]], 1),
            torch.stack([f[:, 2], m[2], m[1]], 1), torch.stack([m[0], m[1], m[2]], 1)])
    v = v.float()
    if not bumps:
        return v.to(device), f.to(device)
    bump = 0.08 * torch.sin(5 * v[:, 0]) * torch.cos(4 * v[:, 1]) + 0.05 * torch.sin(7 * v[:, 2])
    return (v * (1 + bump[:, None])).to(device), f.to(device)


def bench_ops(backend: str, v: torch.Tensor, f: torch.Tensor, cams: Cameras, warmup: int, iters: int) -> dict:
    """rasterize + interpolate (vertex normals) + antialias, forward + backward to positions."""
    dev = v.device
    be = get_backend(backend, dev)
    tri = f.int().contiguous()
    proj = cams.full_projection().to(dev)
    normals = vertex_normals(v, f).contiguous()
    topo = be.topology_hash(tri)
    verts = v.clone().requires_grad_(True)

    def step() -> None:
        homo = torch.cat([verts, torch.ones_like(verts[:, :1])], -1)
        clip = (homo[None] @ proj.transpose(1, 2)).contiguous()
        rast = be.rasterize(clip, tri, (cams.height, cams.width))
        col, _ = be.interpolate(normals, rast, tri)
        col = be.antialias(col.contiguous(), rast, clip, tri, topology_hash=topo)
        col.square().sum().backward()
        verts.grad = None

    return _timing.timed(dev, step, warmup, iters)


def bench_render_mesh(backend: str, v: torch.Tensor, f: torch.Tensor, cams: Cameras, warmup: int, iters: int) -> dict:
    """Full render_mesh (mask, depth, disparity, normals, vertex colours, AA) forward + backward."""
    verts = v.clone().requires_grad_(True)
    colors = ((v + 1) / 2).contiguous()

    def step() -> None:
        out = render_mesh(verts, f, cams, vertex_colors=colors, backend=backend)
        (out.mask.sum() + out.normal_view.sum() + out.depth.sum() + out.color.sum()).backward()
        verts.grad = None

    return _timing.timed(v.device, step, warmup, iters)


def silhouette_gradient_ratio(backend: str, level: int, res: int, device: torch.device) -> float:
    """Autograd d(mask area)/d(scale) of a unit sphere over the analytic value (1 = exact).

    nvdiffrast antialiases topological silhouette edges only, so where the rim triangles are thinner
    than a pixel in projection most of this gradient is lost; the torch antialiaser walks to the rim.
    """
    v, f = icosphere(level, device, bumps=False)
    dist = 3.0
    cams = Cameras.orbit(0.0, 0.0, dist, 40.0, res).to(device)
    s = torch.tensor(1.0, device=device, requires_grad=True)
    render_mesh(v * s, f, cams, backend=backend).mask.sum().backward()
    rp = float(cams.focal_pixels()[0]) / math.sqrt(dist**2 - 1)
    return round(float(s.grad) / (2 * math.pi * rp * rp * dist**2 / (dist**2 - 1)), 4)


def main() -> None:
    ap = _timing.parser(__doc__.split("\n\n")[0], "tiny sizes on CPU, torch backend only")
    ap.add_argument("--level", type=int, default=6, help="icosphere level (6 = 81,920 faces)")
    args = ap.parse_args()

    if args.smoke:
        dev = torch.device("cpu")
        level, res, iters, warmup, view_counts = 3, 64, 2, 1, (1, 2)
        backends = ["torch"]
    else:
        dev = _timing.require_cuda("bench_render.py")
        level, res, iters, warmup, view_counts = args.level, args.res, args.iters, args.warmup, (1, 4)
        # nvdiffrast_walk: nvdiffrast's rasteriser + the torch silhouette-walking antialiaser
        backends = ["nvdiffrast", "nvdiffrast_walk", "torch"]

    v, f = icosphere(level, dev)
    result: dict = {
        "stage": "render",
        "device": _timing.device_name(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "mesh_faces": int(f.shape[0]),
        "mesh_vertices": int(v.shape[0]),
        "resolution": res,
        "smoke": bool(args.smoke),
        "ops_fwd_bwd": {},
        "render_mesh_fwd_bwd": {},
    }
    if dev.type == "cuda":
        try:
            t0 = time.time()
            get_backend("nvdiffrast", dev)  # first use JIT-builds the plugin (1-2 min, cached after)
            import nvdiffrast

            result["nvdiffrast"] = nvdiffrast.__version__
            result["nvdiffrast_load_s"] = round(time.time() - t0, 1)
        except Exception as e:  # noqa: BLE001 - record why, still measure the torch backend
            result["nvdiffrast_error"] = f"{type(e).__name__}: {e}"
            backends = ["torch"]
            print("nvdiffrast unavailable:", e, flush=True)

    for backend in backends:
        for n in view_counts:
            cams = Cameras.orbit([5.0] * n, [i * 360.0 / n for i in range(n)], 2.7, 30.0, res).to(dev)
            key = f"{backend}_{n}view"
            try:
                result["ops_fwd_bwd"][key] = bench_ops(backend, v, f, cams, warmup, iters)
                result["render_mesh_fwd_bwd"][key] = bench_render_mesh(backend, v, f, cams, warmup, iters)
            except Exception as e:  # noqa: BLE001
                result["ops_fwd_bwd"][key] = {"error": f"{type(e).__name__}: {e}"}
                traceback.print_exc()
            print(key, result["ops_fwd_bwd"][key], result["render_mesh_fwd_bwd"].get(key), flush=True)

    result["silhouette_gradient_ratio"] = {}
    for backend in backends:
        for lv, rs in ((level, res), (max(level - 2, 1), res // 4)):
            key = f"{backend}_{20 * 4**lv}faces_{rs}px"
            try:
                result["silhouette_gradient_ratio"][key] = silhouette_gradient_ratio(backend, lv, rs, dev)
            except Exception as e:  # noqa: BLE001
                result["silhouette_gradient_ratio"][key] = f"{type(e).__name__}: {e}"
    print("silhouette gradient / analytic", result["silhouette_gradient_ratio"], flush=True)

    if "nvdiffrast" in backends:
        cams = Cameras.orbit([5.0, 10.0, -5.0, 0.0], [0.0, 45.0, 180.0, -90.0], 2.7, 30.0, res).to(dev)
        try:
            result["agreement_torch_vs_nvdiffrast"] = {k: round(x, 5) for k, x in compare_backends(v, f, cams).items()}
        except Exception as e:  # noqa: BLE001
            result["agreement_torch_vs_nvdiffrast"] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        print("agreement", result["agreement_torch_vs_nvdiffrast"], flush=True)

    print(json.dumps(result, indent=2))
    _timing.write_json(result, args.out, indent=2)


if __name__ == "__main__":
    main()
