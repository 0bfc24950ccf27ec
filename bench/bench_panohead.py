"""Benchmark of stage 1 (core.panohead): inversion and PTI steps, mesh extraction, GAN views.

On CUDA (the lead runs this on an H100): the full-size PanoHead generator of the release config
(random weights: speed depends on shapes, not values) and a random VGG16 perceptual net.
  * ms per W+ projection step and per PTI step (render 512² + VGG on 256² + backward + Adam), at
    neural rendering resolution 64 and 128, fp32;
  * W statistics (10,000 mapped samples);
  * mesh extraction at 256³ and 512³: density grid and marching cubes timed separately;
  * the 40 GAN views (normals by central differences + masks) at 256²;
  * peak VRAM (torch.cuda.max_memory_allocated) per item.
Timing: warm-up, CUDA events around each iteration, median. Results printed and written as JSON.

    python bench/bench_panohead.py --out bench/results/panohead.json     # CUDA, full size
    python bench/bench_panohead.py --smoke [--out x.json]                # tiny generator, CPU
"""
from __future__ import annotations

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

from idsculpt.core.camera import eg3d_frontal_label  # noqa: E402
from idsculpt.core.panohead.extract import density_grid, gan_view_cameras, mesh_from_grid, render_gan_views  # noqa: E402
from idsculpt.core.panohead.invert import w_statistics  # noqa: E402
from idsculpt.core.panohead.perceptual import VGG16Perceptual  # noqa: E402
from idsculpt.core.panohead.triplane import TriPlaneGenerator, release_config, tiny_config  # noqa: E402


def _timer(device: torch.device, fn, warmup: int, iters: int) -> dict:
    """This stage's result layout (``ms_median``, ``ms_min``, peak in GiB) of the shared measurement."""
    times, peak = _timing.measure(device, fn, warmup, iters)
    return {"ms_median": round(statistics.median(times), 3), "ms_min": round(min(times), 3), "iters": iters,
            "peak_gib": None if peak is None else round(peak / 2 ** 30, 3)}


def _random_generator(cfg: dict, device: torch.device) -> TriPlaneGenerator:
    torch.manual_seed(0)
    g = TriPlaneGenerator(**cfg).to(device).eval()
    with torch.no_grad():  # the release's mapping has a meaningful w_avg; random weights: keep defaults
        for n, p in g.named_parameters():
            if n.endswith("noise_strength"):
                p.fill_(0.05)
    return g


def bench_steps(g: TriPlaneGenerator, vgg: VGG16Perceptual, device: torch.device, res: int, warmup: int, iters: int,
                autocast: bool = False) -> dict:
    """One W+ step and one PTI step; ``autocast``: bf16 autocast around the forward passes (an
    experiment for speed: the node runs fp32)."""
    import contextlib

    ctx = (lambda: torch.autocast(device.type, dtype=torch.bfloat16)) if autocast else contextlib.nullcontext
    lab = eg3d_frontal_label().to(device)
    target = torch.rand(1, 3, g.img_resolution, g.img_resolution, device=device) * 2 - 1
    with torch.no_grad():
        target_taps = vgg.taps(target)
        w0 = g.mapping(torch.randn(1, g.z_dim, device=device), lab)
    out = {}
    # W+ projection step: gradient to w only
    w = w0.clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.01)

    def w_step():
        with ctx():
            img = g.synthesis(w, lab, neural_rendering_resolution=res, noise_mode="const")["image"]
            loss = 0.1 * (img.float() - target).square().mean() + vgg.distance(target_taps, vgg.taps(img)).float().mean()
        loss = loss + (w - w0).square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    g.requires_grad_(False)
    out["w_step"] = _timer(device, w_step, warmup, iters)
    # PTI step: gradients to every generator weight
    g.requires_grad_(True)
    popt = torch.optim.Adam(g.parameters(), lr=3e-4)
    wp = w0.detach()

    def pti_step():
        with ctx():
            img = g.synthesis(wp, lab, neural_rendering_resolution=res, noise_mode="const")["image"]
            loss = 0.1 * (img.float() - target).square().mean() + vgg.distance(target_taps, vgg.taps(img)).float().mean()
        popt.zero_grad(set_to_none=True)
        loss.backward()
        popt.step()

    out["pti_step"] = _timer(device, pti_step, warmup, iters)
    g.requires_grad_(False)
    del popt
    return out


def bench_mesh(g: TriPlaneGenerator, device: torch.device, res: int, chunk: int) -> dict:
    with torch.no_grad():
        planes = g.planes(g.mapping(torch.randn(1, g.z_dim, device=device), eg3d_frontal_label().to(device)))
        holder = {}

        def grid():
            holder["g"] = density_grid(g, planes, res, chunk)

        t_grid = _timer(device, grid, 1, 2)
        gr = holder["g"]
        # random weights: put the level at the grid's median so marching cubes has a real surface to walk
        level = float(gr.flatten()[:: max(1, gr.numel() // 1_000_000)].median())
        t0 = time.perf_counter()
        try:
            mesh = mesh_from_grid(gr, float(g.rendering_kwargs["box_warp"]), level=level)
            mc = {"ms": round((time.perf_counter() - t0) * 1000, 1), "vertices": int(mesh.vertices.shape[0]),
                  "faces": int(mesh.faces.shape[0])}
        except Exception as e:  # noqa: BLE001
            mc = {"error": repr(e)[:200]}
    return {"density_grid": t_grid, "marching_cubes_cpu": mc, "level_used": round(level, 3)}


def bench_views(g: TriPlaneGenerator, device: torch.device, res: int, n_views: int) -> dict:
    with torch.no_grad():
        planes = g.planes(g.mapping(torch.randn(1, g.z_dim, device=device), eg3d_frontal_label().to(device)))
    cams = gan_view_cameras(n_views=n_views, resolution=res)
    return _timer(device, lambda: render_gan_views(g, planes=planes, cameras=cams, resolution=res), 0 if device.type != "cuda" else 1, 1)


def main() -> None:
    args = _timing.parser(None, "tiny generator on CPU (checks the script)", res=None, iters=10, warmup=3).parse_args()
    smoke = args.smoke or not torch.cuda.is_available()
    device = torch.device("cpu" if smoke else "cuda")
    if smoke:
        torch.set_num_threads(1)
    cfg = tiny_config() if smoke else release_config()
    res = {"device": _timing.device_name(device),
           "torch": torch.__version__, "smoke": smoke, "config": "tiny" if smoke else "release (random weights)"}
    t0 = time.perf_counter()
    g = _random_generator(cfg, device)
    res["generator_params_M"] = round(sum(p.numel() for p in g.parameters()) / 1e6, 2)
    vgg = VGG16Perceptual().to(device).eval()
    iters, warmup = (2, 1) if smoke else (args.iters, args.warmup)
    try:
        n = 128 if smoke else 10000
        res["w_statistics"] = _timer(device, lambda: w_statistics(g, n), 0, 1)
        res["w_statistics"]["samples"] = n
    except Exception:  # noqa: BLE001
        res["w_statistics"] = {"error": traceback.format_exc()[-400:]}
    for nr in ((32,) if smoke else (64, 128)):
        try:
            res[f"steps_neural{nr}"] = bench_steps(g, vgg, device, nr, warmup, iters)
        except Exception:  # noqa: BLE001
            res[f"steps_neural{nr}"] = {"error": traceback.format_exc()[-600:]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    if device.type == "cuda":
        try:
            res["steps_neural128_bf16_autocast_experimental"] = bench_steps(g, vgg, device, 128, warmup, iters, autocast=True)
        except Exception:  # noqa: BLE001
            res["steps_neural128_bf16_autocast_experimental"] = {"error": traceback.format_exc()[-600:]}
        torch.cuda.empty_cache()
    for mr in ((32, 48) if smoke else (256, 512)):
        try:
            res[f"mesh_{mr}"] = bench_mesh(g, device, mr, 1 << (14 if smoke else 22))
        except Exception:  # noqa: BLE001
            res[f"mesh_{mr}"] = {"error": traceback.format_exc()[-600:]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
    try:
        vr, nv = (16, 4) if smoke else (256, 40)
        res["gan_views"] = bench_views(g, device, vr, nv)
        res["gan_views"].update({"resolution": vr, "views": nv})
    except Exception:  # noqa: BLE001
        res["gan_views"] = {"error": traceback.format_exc()[-600:]}
    for k in ("w_step", "pti_step"):
        key = f"steps_neural{32 if smoke else 128}"
        if isinstance(res.get(key), dict) and k in res[key] and "ms_median" in res[key][k]:
            res[f"estimated_{k}s_500_s"] = round(res[key][k]["ms_median"] * 500 / 1000, 1)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    _timing.write_json(res, args.out, indent=1)


if __name__ == "__main__":
    main()
