"""Benchmark of stage 2 (core.dmtet + core.sculpt): per-step cost of DMTet sculpting.

On CUDA (the lead runs this on an H100), for 128- and 256-equivalent tet grids (n = 64 / 128 cubes
per side) and 512² views, with the procedural head (core.dmtet.procedural) as the GAN mesh:
  * sdf_init_s: mesh → grid SDF (winding number + distances), wall clock, once;
  * marching_tets_ms: isosurface extraction, forward only;
  * stage_a_step_ms: one GAN-view step (extract, render 1 view, 1−cos + mask loss, backward, Adam);
  * reference_step_ms: one stage-B reference step (mask, normal, depth+Pearson losses, regularisers);
  * guidance_render_step_ms: the render part of a guidance step — extract, render the normal image of
    1 random 512² view, backward of a stand-in image gradient, regularisers, Adam (add the ISD
    model cost from bench_isd.py for the full step);
  * peak_mem_mib per configuration (torch.cuda.max_memory_allocated).
Timing: warm-up, CUDA events around each step, median. JSON written with --out.

    python bench/bench_sculpt.py --out bench/results/sculpt.json     # CUDA
    python bench/bench_sculpt.py --smoke [--out x.json]               # tiny, CPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402
import _timing  # noqa: E402

_pack.load()

import torch  # noqa: E402

from idsculpt.core.camera import Cameras  # noqa: E402
from idsculpt.core.dmtet import marching_tets, procedural_head_mesh  # noqa: E402
from idsculpt.core.render import render_mesh  # noqa: E402
from idsculpt.core.sculpt import GanViews, ReferenceGeometry, SculptConfig, Sculptor  # noqa: E402
from idsculpt.core.sculpt.views import RandomViewRanges  # noqa: E402


def _timer(device: torch.device, fn, warmup: int, iters: int) -> dict:
    """Median / min ms; the peak memory is read once per configuration (bench_config), so not reset here."""
    times, _ = _timing.measure(device, fn, warmup, iters, reset_peak=False)
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "iters": iters}


def make_inputs(target, res: int, device: torch.device, n_views: int = 8):
    az = torch.linspace(-180, 180, n_views + 1)[:-1]
    cams = Cameras.orbit(-5.0, az, 2.7, 25.0, res).to(device)
    v, f = target.vertices.to(device), target.faces.to(device)
    with torch.no_grad():
        out = render_mesh(v, f, cams)
        views = GanViews(cams, out.normal_world, (out.mask > 0.5).float())
        cam = Cameras.orbit(0.0, 0.0, 2.7, 13.4, res).to(device)
        r = render_mesh(v, f, cam)
        hard = r.coverage[0]
        mask = (r.mask[0] > 0.5).float()
        ref = ReferenceGeometry(image=r.normal_image()[0], camera=cam, normal_view=r.normal_view[0], disparity=r.disparity[0],
                                mask=mask, face_mask=mask * (r.normal_view[0][..., 2:3] > 0.3).float(),
                                depth_mask=mask * (r.disparity[0] > 0.2).float() * hard)
    return views, ref


def bench_config(target, grid_res: int, img_res: int, device: torch.device, warmup: int, iters: int) -> dict:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    views, ref = make_inputs(target, img_res, device)
    cfg = SculptConfig(steps=10**6, gan_steps=10**6, grid_resolution=grid_res, views=RandomViewRanges(resolution=img_res),
                       preview_every=0)
    t0 = time.perf_counter()
    s = Sculptor(target.to(device), views, ref, None, cfg, device=device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    sdf_init_s = time.perf_counter() - t0
    res: dict = {"grid_resolution": grid_res, "cubes_per_side": s.grid.n, "grid_vertices": s.grid.num_vertices,
                 "image_resolution": img_res, "sdf_init_s": round(sdf_init_s, 2)}
    v, f = s.current()
    res["surface_faces"] = int(f.shape[0])

    def mt() -> None:
        with torch.no_grad():
            marching_tets(s.grid, s.geometry.positions(), s.geometry.effective_sdf())

    res["marching_tets_ms"] = _timer(device, mt, warmup, iters)
    res["stage_a_step_ms"] = _timer(device, s.step, warmup, iters)

    s.gan_steps = 0  # from here on: stage B (reference-only: every step is a reference step)
    s.step_index = 0
    s.total = 10**6
    res["reference_step_ms"] = _timer(device, s.step, warmup, iters)

    gen = torch.Generator().manual_seed(0)
    grad_img = None

    def guidance_render_step() -> None:
        nonlocal grad_img
        from idsculpt.core.dmtet import laplacian_loss, normal_consistency_loss
        from idsculpt.core.sculpt.views import random_views

        vv, ff = s.geometry.extract()
        cams, az, el = random_views(1, cfg.views, gen)
        out = render_mesh(vv, ff, cams.to(device))
        img = out.normal_image()
        if grad_img is None:
            grad_img = torch.randn(img.shape, generator=gen).to(device) * 1e-3
        loss = (img * grad_img).sum() + 500 * normal_consistency_loss(vv, ff) + 1e5 * laplacian_loss(vv, ff)
        s.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        s.optimizer.step()

    res["guidance_render_step_ms"] = _timer(device, guidance_render_step, warmup, iters)
    if device.type == "cuda":
        res["peak_mem_mib"] = _timing.mib(torch.cuda.max_memory_allocated(device))
    return res


def main() -> None:
    ap = _timing.parser(__doc__, "tiny sizes on CPU (checks the script runs)", out_help="write the results as JSON here",
                        formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--grids", default="128,256", help="comma-separated grid resolutions (Quartet-equivalent)")
    args = ap.parse_args()

    if args.smoke:
        device = torch.device("cpu")
        grids, res, warmup, iters = [32], 64, 1, 3
        target = procedural_head_mesh(32)
    else:
        device = _timing.require_cuda("bench_sculpt.py")
        grids, res, warmup, iters = [int(g) for g in args.grids.split(",")], args.res, args.warmup, args.iters
        target = procedural_head_mesh(192)  # ~390k faces, like a 512³ marching-cubes GAN mesh
    report = {
        "stage": "sculpt",
        "device": _timing.device_name(device),
        "torch": torch.__version__,
        "smoke": args.smoke,
        "gan_mesh_faces": int(target.faces.shape[0]),
        "configs": [],
    }
    for g in grids:
        try:
            report["configs"].append(bench_config(target, g, res, device, warmup, iters))
        except Exception as e:  # record and go on: one OOM must not lose the other numbers
            report["configs"].append({"grid_resolution": g, "error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-2000:]})
        print(json.dumps(report["configs"][-1], indent=1), flush=True)
    _timing.write_json(report, args.out, indent=1)


if __name__ == "__main__":
    main()
