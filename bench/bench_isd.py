"""Benchmark one ISD step through ComfyUI: render -> VAE encode -> noise -> UNet + ControlNet (CFG) -> grad -> backward.

Full-size random-weight SD1.5 UNet + SD1.5 ControlNet (fp16, built with ComfyUI's own model classes at
the real config), a full-size IP-Adapter FaceID Portrait adapter (16 tokens on all 16 cross-attention
layers) and an SD VAE (AutoencoderKL, 512^2). Speed depends on shapes, not weights. Reports the median
ms per ISD step for 1 and 4 views per step, the predictor alone (UNet+ControlNet, CFG batch 2B), the VAE
encoder forward+backward alone, and peak VRAM (torch.cuda.max_memory_allocated).

    python bench/bench_isd.py --out bench/results/isd.json [--comfy PATH]   # CUDA
    python bench/bench_isd.py --smoke [--out x.json]                         # tiny models, CPU

ComfyUI is found from --comfy, else $COMFYUI_PATH, else <repo>/.comfy/ComfyUI, else /work/ComfyUI.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

import _pack  # noqa: E402

_pack.load()


def _timer(device: torch.device, fn, warmup: int, iters: int) -> dict:
    """Median / min milliseconds of ``fn()`` and peak memory (CUDA) over ``iters`` runs."""
    for _ in range(warmup):
        fn()
    times = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        peak = torch.cuda.max_memory_allocated(device) / 2**20
    else:
        for _ in range(iters):
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000)
        peak = None
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "iters": iters,
            "peak_mem_mib": None if peak is None else round(peak, 1)}


class FixedHints:
    """Landmark stand-in: ``draw(cameras)`` returns precomputed sparse line images (drawing is not timed here)."""

    def __init__(self, n: int, res: int, device: torch.device) -> None:
        g = torch.Generator().manual_seed(0)
        self.hints = (torch.rand(n, res, res, 3, generator=g) > 0.97).float().to(device)

    def draw(self, cameras):
        return self.hints[: len(cameras)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=None, help="write the results JSON here")
    ap.add_argument("--smoke", action="store_true", help="tiny models on CPU")
    ap.add_argument("--comfy", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH or .comfy/ComfyUI)")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--warmup", type=int, default=5)
    args = ap.parse_args()

    for cand in (args.comfy, os.environ.get("COMFYUI_PATH"), os.path.join(ROOT, ".comfy", "ComfyUI"), "/work/ComfyUI"):
        if cand and os.path.isfile(os.path.join(cand, "comfy", "model_patcher.py")):
            os.environ["COMFYUI_PATH"] = os.path.abspath(cand)
            break
    else:
        sys.exit("bench_isd.py needs ComfyUI: pass --comfy PATH or set COMFYUI_PATH")

    from tiny_models import import_comfy, tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae, write_tiny_faceid_adapter

    if args.smoke:
        dev, full, dtype = torch.device("cpu"), False, torch.float32
        res, iters, warmup, view_counts = 64, 2, 1, (1, 2)
    else:
        if not torch.cuda.is_available():
            sys.exit("bench_isd.py needs CUDA (use --smoke for a CPU check)")
        dev, full, dtype = torch.device("cuda"), True, torch.float16
        res, iters, warmup, view_counts = args.res, args.iters, args.warmup, (1, 4)

    import_comfy(skip=False)
    import comfy.ldm.modules.attention

    from idsculpt.core.camera import Cameras
    from idsculpt.core.face.id_adapter import load_id_adapter
    from idsculpt.nodes.guidance_nodes import build_isd_guidance
    from idsculpt.nodes.id_adapter_nodes import apply_id_adapter

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
        "stage": "isd",
        "device": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "comfyui": os.environ["COMFYUI_PATH"],
        "attention": getattr(comfy.ldm.modules.attention.optimized_attention, "__name__", "?"),
        "unet_dtype": str(dtype),
        "vae_dtype": str(vae.vae_dtype),
        "resolution": res,
        "full_size": full,
        "smoke": bool(args.smoke),
        "build_s": round(build_s, 1),
        "unet_params_m": round(sum(p.numel() for p in model.model.diffusion_model.parameters()) / 1e6, 1),
        "controlnet_params_m": round(sum(p.numel() for p in control.control_model.parameters()) / 1e6, 1),
        "cfg": 50.0,
        "isd_step": {},
        "predictor_only": {},
        "vae_encode_fwd_bwd": {},
    }
    print("built models in", result["build_s"], "s", flush=True)
    hints = FixedHints(max(view_counts), res, dev)
    for n in view_counts:
        key = f"{n}view"
        try:
            g = build_isd_guidance(model, pos, neg, vae, control, hints, cfg=50.0, resolution=res, seed=0)
            g.predictor.max_views = n
            cams = Cameras.orbit([5.0] * n, [i * 140.0 / max(n, 1) - 60.0 for i in range(n)], 4.0, 30.0, res)
            image = torch.rand(n, res, res, 3, device=dev)
            with g:
                def step() -> None:
                    img = image.clone().requires_grad_(True)
                    loss = g(img, cams)
                    loss.backward()
                    assert torch.isfinite(img.grad).all()

                result["isd_step"][key] = _timer(dev, step, warmup, iters)
                lat = g.predictor.encode(image).detach()
                from idsculpt.core.guidance import ViewBatch

                sig = torch.full((n,), 2.0)
                views = ViewBatch(torch.zeros(n), torch.zeros(n), torch.ones(n, dtype=torch.bool), torch.full((n,), 300), sig, cams)
                result["predictor_only"][key] = _timer(dev, lambda: g.predictor.predict_noise(lat + 2.0 * torch.randn_like(lat), sig, views), warmup, iters)

                def enc() -> None:
                    img = image.clone().requires_grad_(True)
                    g.predictor.encode(img).float().square().sum().backward()

                result["vae_encode_fwd_bwd"][key] = _timer(dev, enc, warmup, iters)
            result["isd_step"][key]["grad_norm_last"] = round(float(g.last_stats.grad_norm), 4)
        except Exception as e:  # noqa: BLE001 - record and go on with the other view count
            result["isd_step"][key] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        print(key, result["isd_step"][key], result["predictor_only"].get(key), result["vae_encode_fwd_bwd"].get(key), flush=True)

    print(json.dumps(result, indent=2))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as fh:
            json.dump(result, fh, indent=2)


if __name__ == "__main__":
    main()
