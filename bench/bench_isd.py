"""Benchmark one ISD step through ComfyUI: render -> VAE encode -> noise -> UNet + ControlNet (CFG) -> grad -> backward.

Full-size random-weight SD1.5 UNet + SD1.5 ControlNet (fp16, built with ComfyUI's own model classes at
the real config), a full-size IP-Adapter FaceID Portrait adapter (16 tokens on all 16 cross-attention
layers) and an SD VAE (AutoencoderKL, 512^2). Speed depends on shapes, not weights. Reports the median
ms per ISD step for 1 and 4 views per step, the predictor alone (UNet+ControlNet, CFG batch 2B), the VAE
encoder forward+backward alone, and peak VRAM (torch.cuda.max_memory_allocated).

    python bench/bench_isd.py --out bench/results/isd.json [--comfy PATH]   # CUDA
    python bench/bench_isd.py --smoke [--out x.json]                         # tiny models, CPU

ComfyUI is found from --comfy, else $COMFYUI_PATH, else <repo>/.comfy/ComfyUI.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402
import _timing  # noqa: E402

_pack.load(tests=True)


class FixedHints:
    """Landmark stand-in: ``draw(cameras)`` returns precomputed sparse line images (drawing is not timed here)."""

    def __init__(self, n: int, res: int, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        self.hints = (torch.rand(n, res, res, 3, generator=g) > 0.97).float().to(device)

    def draw(self, cameras):
        return self.hints[: len(cameras)]


def host_profile(dev: torch.device, fn, iters: int, rows: int = 45) -> dict:
    """Where the host time of ``fn`` goes (cProfile, cumulative): the graphed predictor is bound by
    Python work in ComfyUI's sampling path, which CUDA-event timings cannot attribute."""
    import cProfile
    import io
    import pstats

    prof = cProfile.Profile()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    prof.enable()
    for _ in range(iters):
        fn()
    prof.disable()
    if dev.type == "cuda":
        torch.cuda.synchronize()
    wall = (time.perf_counter() - t0) / iters * 1000
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(rows)
    return {"ms_per_call_under_profiler": round(wall, 2), "calls": iters, "table": buf.getvalue()[-12000:]}


def isd_setup(model, pos, neg, vae, control, hints, n: int, res: int, device: torch.device, cuda_graphs: bool = False):
    """The timed ISD configuration (also used by profile_fastpath.py): guidance at CFG 50 taking
    ``n`` views per step, ``n`` orbit cameras over the front half and a random image batch."""
    from idsculpt.core.camera import Cameras
    from idsculpt.nodes.engines.isd_guidance import build_isd_guidance

    g = build_isd_guidance(model, pos, neg, vae, control, hints, cfg=50.0, resolution=res, seed=0, cuda_graphs=cuda_graphs)
    g.predictor.max_views = n
    cams = Cameras.orbit([5.0] * n, [i * 140.0 / max(n, 1) - 60.0 for i in range(n)], 4.0, 30.0, res)
    image = torch.rand(n, res, res, 3, generator=torch.Generator().manual_seed(n)).to(device)
    return g, cams, image


def main() -> None:
    ap = _timing.parser(__doc__.split("\n\n")[0], "tiny models on CPU", comfy=True)
    ap.add_argument("--cuda-graphs", choices=["on", "off", "both"], default="both",
                    help="UNet/ControlNet replayed from CUDA graphs, eager, or both in turn (with an equality check)")
    ap.add_argument("--views", default="1,4",
                    help="comma-separated views per ISD step to time (the fast default takes 4; 8 shows what a longer batch buys)")
    ap.add_argument("--memory-format", default="contiguous",
                    help="comma-separated: contiguous (ComfyUI's NCHW), channels_last (UNet and ControlNet weights "
                    "converted in place, so convolutions run NHWC; keys get the suffix _cl)")
    ap.add_argument("--cudnn-benchmark", action="store_true",
                    help="torch.backends.cudnn.benchmark on (cuDNN times its algorithms per shape; ComfyUI leaves it off)")
    ap.add_argument("--host-profile", action="store_true",
                    help="also cProfile the predictor (1 view) to attribute its host-side time")
    args = ap.parse_args()
    _timing.find_comfyui(args.comfy, "bench_isd.py")
    torch.backends.cudnn.benchmark = bool(args.cudnn_benchmark)

    from tiny_models import import_comfy, tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae, write_tiny_faceid_adapter

    if args.smoke:
        dev, full, dtype = torch.device("cpu"), False, torch.float32
        res, iters, warmup, view_counts = 64, 2, 1, (1, 2)
    else:
        dev, full, dtype = _timing.require_cuda("bench_isd.py"), True, torch.float16
        res, iters, warmup = args.res, args.iters, args.warmup
        view_counts = tuple(int(v) for v in args.views.split(","))

    import_comfy(skip=False)

    from idsculpt.core.face.id_adapter import load_id_adapter
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    t0 = time.time()
    ctx = 768 if full else 64
    model = tiny_sd15_model(full=full, dtype=dtype)
    control = tiny_controlnet(full=full, dtype=dtype)
    vae = tiny_vae(full=full)
    with tempfile.TemporaryDirectory() as d:
        adapter = load_id_adapter(write_tiny_faceid_adapter(os.path.join(d, "faceid.bin"), "faceid-portrait",
                                                            cross_attention_dim=ctx, model_channels=320 if full else 32))
    emb = torch.nn.functional.normalize(torch.randn(512), dim=0)
    model = apply_id_adapter(model, adapter, emb, weight=1.0)
    pos, neg = tiny_conditioning(3, width=ctx), tiny_conditioning(4, width=ctx)
    build_s = time.time() - t0

    result: dict = {
        **_timing.comfy_header("isd", dev, dtype, vae),
        "resolution": res,
        "full_size": full,
        "smoke": bool(args.smoke),
        "build_s": round(build_s, 1),
        "unet_params_m": round(sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6, 1),
        "controlnet_params_m": round(sum(p.numel() for p in control.control_model.parameters()) / 1e6, 1),
        "cfg": 50.0,
        "cudnn_benchmark": bool(args.cudnn_benchmark),
        "memory_formats": args.memory_format,
        "isd_step": {},
        "predictor_only": {},
        "vae_encode_fwd_bwd": {},
    }
    print("built models in", result["build_s"], "s", flush=True)
    hints = FixedHints(max(view_counts), res, dev)
    modes = {"on": (True,), "off": (False,), "both": (False, True)}[args.cuda_graphs]
    from idsculpt.core.guidance import ViewBatch

    reference_eps: dict = {}
    formats = [f.strip() for f in args.memory_format.split(",") if f.strip()]
    configs = [(mf, n, graphs) for mf in formats for n in view_counts for graphs in modes]
    for mf, n, graphs in configs:
        if mf == "channels_last":  # in place: the networks' convolutions then run NHWC end to end
            model.model.diffusion_model.to(memory_format=torch.channels_last)
            control.control_model.to(memory_format=torch.channels_last)
        key = f"{n}view" + ("_graphs" if graphs else "") + ("_cl" if mf == "channels_last" else "")
        if dev.type == "cuda":  # each configuration's own peak, not the run's so far
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        try:
            g, cams, image = isd_setup(model, pos, neg, vae, control, hints, n, res, dev, cuda_graphs=graphs)
            with g:
                def step() -> None:
                    img = image.clone().requires_grad_(True)
                    loss = g(img, cams)
                    loss.backward()
                    assert torch.isfinite(img.grad).all()

                result["isd_step"][key] = _timing.timed(dev, step, warmup, iters)
                lat = g.predictor.encode(image).detach()
                sig = torch.full((n,), 2.0)
                views = ViewBatch(torch.zeros(n), torch.zeros(n), torch.ones(n, dtype=torch.bool), torch.full((n,), 300), sig, cams)
                noise = torch.randn(lat.shape, generator=torch.Generator().manual_seed(n)).to(lat)
                result["predictor_only"][key] = _timing.timed(dev, lambda: g.predictor.predict_noise(lat + 2.0 * noise, sig, views), warmup, iters)
                # the same inputs through eager and graphed predictors must give the same noise
                eps = g.predictor.predict_noise(lat + 2.0 * noise, sig, views)
                if graphs and (mf, n) in reference_eps:
                    ref = reference_eps[(mf, n)]
                    result["predictor_only"][key]["max_abs_diff_vs_eager"] = float(torch.maximum(
                        (eps.cond - ref.cond).abs().max(), (eps.uncond - ref.uncond).abs().max()))
                elif not graphs:
                    reference_eps[(mf, n)] = eps
                if graphs:
                    result["predictor_only"][key]["graph_stats"] = g.predictor._state["graphs"].stats()
                if args.host_profile and (graphs or args.cuda_graphs == "off") and n == view_counts[0]:
                    result["predictor_host_profile"] = host_profile(
                        dev, lambda: g.predictor.predict_noise(lat + 2.0 * noise, sig, views), iters)
                    print(result["predictor_host_profile"]["table"], flush=True)

                def enc() -> None:
                    img = image.clone().requires_grad_(True)
                    g.predictor.encode(img).float().square().sum().backward()

                result["vae_encode_fwd_bwd"][key] = _timing.timed(dev, enc, warmup, iters)
            result["isd_step"][key]["grad_norm_last"] = round(float(g.last_stats.grad_norm), 4)
            result["isd_step"][key]["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20) if dev.type == "cuda" else None
        except Exception as e:  # noqa: BLE001 - record and go on with the other view count
            result["isd_step"][key] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        print(key, result["isd_step"][key], result["predictor_only"].get(key), result["vae_encode_fwd_bwd"].get(key), flush=True)

    print(json.dumps(result, indent=2))
    _timing.write_json(result, args.out, indent=2)


if __name__ == "__main__":
    main()
