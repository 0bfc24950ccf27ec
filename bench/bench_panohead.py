"""Benchmark of stage 1 (core.panohead): inversion and PTI steps, mesh extraction, GAN views.

On CUDA (the lead runs this on an H100): the full-size PanoHead generator of the release config
(random weights: speed depends on shapes, not values) and a random VGG16 perceptual net.
  * ms per W+ projection step and per PTI step (render 512² + VGG on 256² + backward + Adam), at
    neural rendering resolution 64 and 128, fp32;
  * W statistics (10,000 mapped samples);
  * mesh extraction at 256³ and 512³: density grid and marching cubes timed separately;
  * the 40 GAN views (normals by central differences + masks) at 256²;
  * peak VRAM (torch.cuda.max_memory_allocated) per item;
  * graph mode (``steps_neural{64,128}_graph``): the inversion's own W+ and PTI steps
    (core.panohead.invert, the code the node runs) captured in a CUDA graph: capture time (3 eager
    warm-ups + capture + check replay), ms per replayed step (per-step lr/noise copies + replay +
    loss slot), peak allocated and reserved VRAM;
  * whole loops (``loop_neural{64,128}``): project_w and pivotal_tuning for --loop-steps steps,
    graph mode and eager, seconds per step by the host clock (capture included in graph mode).
Timing: warm-up, CUDA events around each iteration, median. Results printed and written as JSON.

    python bench/bench_panohead.py --out bench/results/panohead.json     # CUDA, full size
    python bench/bench_panohead.py --steps-only --out x.json              # CUDA, only the step/loop rows
    python bench/bench_panohead.py --no-graphs ...                        # without the graph-mode rows
    python bench/bench_panohead.py --smoke [--out x.json]                # tiny generator, CPU (eager only)
"""
from __future__ import annotations

import copy
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
import importlib  # noqa: E402

inv = importlib.import_module("idsculpt.core.panohead.invert")  # the module (the package exports a function of that name)
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


def _gib(nbytes: float) -> float:
    return round(nbytes / 2 ** 30, 3)


def _time_graphed(device: torch.device, build, name: str, steps: int, warmup: int, iters: int) -> dict:
    """Capture one graphed step (``build`` -> invert._StepParts) and time its replays."""
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    parts, gs, do_step = inv._capture(build, name, 12345)
    torch.cuda.synchronize()
    capture_s = time.perf_counter() - t0
    k = [0]

    def step() -> None:
        do_step(k[0] % steps)
        k[0] += 1

    try:
        times, peak = _timing.measure(device, step, warmup, iters, reset_peak=False)
        reserved = torch.cuda.memory_reserved(device)
    finally:
        gs.close()
        del parts, gs, do_step
    return {"ms_median": round(statistics.median(times), 3), "ms_min": round(min(times), 3), "iters": iters,
            "capture_s": round(capture_s, 3), "peak_gib": _gib(peak), "reserved_gib": _gib(reserved)}


def bench_graph_steps(g: TriPlaneGenerator, vgg: VGG16Perceptual, device: torch.device, res: int, warmup: int, iters: int) -> dict:
    """The inversion's own W+ and PTI steps replayed from CUDA graphs (what the node runs on CUDA)."""
    steps = max(warmup + iters, inv.MIN_GRAPH_STEPS)
    cfg = inv.InversionConfig(w_steps=steps, pti_steps=steps, neural_rendering_resolution=res)
    lab = eg3d_frontal_label().to(device)
    target = torch.rand(1, 3, g.img_resolution, g.img_resolution, device=device) * 2 - 1
    g.eval().requires_grad_(False)
    with torch.no_grad():
        taps = vgg.taps(target, cfg.perceptual_size)
        w_avg = g.mapping(torch.randn(1, g.z_dim, device=device), lab)
    noise = torch.randn(steps, *w_avg.shape, device=device)
    schedule = [inv._w_schedule(cfg, 0.5, s) for s in range(steps)]
    out = {}
    try:
        out["w_step"] = _time_graphed(device, lambda: inv._w_step_parts(g, target, taps, lab, vgg, cfg, w_avg, noise, schedule),
                                      "bench W+ step", steps, warmup, iters)
    except Exception:  # noqa: BLE001  (GraphCaptureError says which part failed)
        out["w_step"] = {"error": traceback.format_exc()[-1500:]}
    torch.cuda.empty_cache()
    gt = copy.deepcopy(g).train().requires_grad_(True)
    try:
        out["pti_step"] = _time_graphed(device, lambda: inv._pti_step_parts(gt, target, taps, w_avg, lab, vgg, cfg),
                                        "bench PTI step", steps, warmup, iters)
    except Exception:  # noqa: BLE001
        out["pti_step"] = {"error": traceback.format_exc()[-1500:]}
    del gt
    torch.cuda.empty_cache()
    return out


def bench_loops(g: TriPlaneGenerator, vgg: VGG16Perceptual, device: torch.device, res: int, steps: int, graphs: bool) -> dict:
    """project_w and pivotal_tuning end to end (host clock / steps), graph mode and eager."""
    lab = eg3d_frontal_label().to(device)
    target = torch.rand(1, 3, g.img_resolution, g.img_resolution, device=device) * 2 - 1
    out: dict = {"steps": steps}
    # on CPU the loop runs with cuda_graphs=True: it must notice there is no CUDA device and run eagerly
    modes = (True, False) if graphs else ((True,) if device.type != "cuda" else (False,))
    if not graphs:
        out["graph_mode"] = ("skipped: CUDA graphs need a CUDA device" if device.type != "cuda" else "skipped (--no-graphs)")
    for use in modes:
        key = "graph" if use and graphs else "eager"
        cfg = inv.InversionConfig(w_steps=steps, pti_steps=steps, w_avg_samples=1000, neural_rendering_resolution=res,
                                  preview_every=25, cuda_graphs=use)
        try:
            info_w: dict = {}
            info_p: dict = {}
            with torch.enable_grad():
                sec, peak, (ws, *_) = _timing.wall(device, lambda: inv.project_w(g, target, lab, vgg, cfg, info=info_w))
                sec_p, peak_p, _ = _timing.wall(device, lambda: inv.pivotal_tuning(g, target, ws, lab, vgg, cfg, info=info_p))
            out[key] = {"w_ms_per_step": round(sec * 1000 / steps, 2), "pti_ms_per_step": round(sec_p * 1000 / steps, 2),
                        "w_mode": info_w, "pti_mode": info_p,
                        "peak_mib": None if peak is None else round(max(peak, peak_p), 1)}
        except Exception:  # noqa: BLE001
            out[key] = {"error": traceback.format_exc()[-1500:]}
        if device.type == "cuda":
            torch.cuda.empty_cache()
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


def _summarise(res: dict) -> None:
    """500-step estimates at neural 128 (the default config's) from the eager and the graphed steps."""
    smoke = res.get("smoke")
    for suffix, tag in (("", ""), ("_graph", "graph_")):
        key = f"steps_neural{32 if smoke else 128}{suffix}"
        for k in ("w_step", "pti_step"):
            row = res.get(key, {}).get(k, {}) if isinstance(res.get(key), dict) else {}
            if "ms_median" in row:
                res[f"estimated_{tag}{k}s_500_s"] = round(row["ms_median"] * 500 / 1000, 1)
    for nr in (64, 128):
        e, gr = res.get(f"steps_neural{nr}", {}), res.get(f"steps_neural{nr}_graph", {})
        for k in ("w_step", "pti_step"):
            if "ms_median" in e.get(k, {}) and "ms_median" in gr.get(k, {}):
                res[f"speedup_graph_{k}_neural{nr}"] = round(e[k]["ms_median"] / gr[k]["ms_median"], 2)


def main() -> None:
    ap = _timing.parser(None, "tiny generator on CPU (checks the script; eager only)", res=None, iters=10, warmup=3)
    ap.add_argument("--no-graphs", action="store_true", help="skip the graph-mode rows (CUDA graphs of the inversion steps)")
    ap.add_argument("--steps-only", action="store_true", help="only the step and loop rows (no W statistics, mesh, views, bf16)")
    ap.add_argument("--loop-steps", type=int, default=30, help="steps of the whole-loop rows (0: skip them)")
    args = ap.parse_args()
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
    graphs = device.type == "cuda" and not args.no_graphs
    res["graph_mode"] = ("on" if graphs else "skipped: CUDA graphs need a CUDA device (the smoke run checks the eager path)"
                         if device.type != "cuda" else "skipped (--no-graphs)")
    for nr in ((32,) if smoke else (64, 128)):
        if graphs:
            try:
                res[f"steps_neural{nr}_graph"] = bench_graph_steps(g, vgg, device, nr, warmup, iters)
            except Exception:  # noqa: BLE001
                res[f"steps_neural{nr}_graph"] = {"error": traceback.format_exc()[-1500:]}
        if args.loop_steps > 0:
            res[f"loop_neural{nr}"] = bench_loops(g, vgg, device, nr, 2 if smoke else args.loop_steps, graphs)
    if args.steps_only and not smoke:
        for nr in (64, 128):
            try:
                res[f"steps_neural{nr}"] = bench_steps(g, vgg, device, nr, warmup, iters)
            except Exception:  # noqa: BLE001
                res[f"steps_neural{nr}"] = {"error": traceback.format_exc()[-600:]}
            torch.cuda.empty_cache()
        _summarise(res)
        res["wall_s"] = round(time.perf_counter() - t0, 1)
        print(json.dumps(res, indent=1))
        _timing.write_json(res, args.out, indent=1)
        return
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
    _summarise(res)
    res["wall_s"] = round(time.perf_counter() - t0, 1)
    print(json.dumps(res, indent=1))
    _timing.write_json(res, args.out, indent=1)


if __name__ == "__main__":
    main()
