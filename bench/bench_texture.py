"""Benchmark the texture stage through ComfyUI: progressive inpainting and refinement.

Full-size random-weight SD1.5 UNet + SD1.5 ControlNet (normalbae-shaped) in fp16 and an SD VAE, built
with ComfyUI's own model classes at the real config (speed depends on shapes, not weights). The head
is an ~80k-face bumpy icosphere, UV-unwrapped with xatlas at 1024². Reports:
  * unwrap_s (xatlas, CPU) and the UV-space rasterisation (texel geometry);
  * seconds per inpainted view: one ``ComfyInpainter.inpaint`` call (VAE encode, 20 DDIM steps at CFG
    10 with the ControlNet, blended latents via noise_mask, VAE decode) at 512², median;
  * the whole 15-view progressive inpaint (renders, crops, back-projection, hole filling included);
  * ms per refine step: SDEdit random-view steps (20 steps from t ~ U[50, 200)) and reference steps
    (render + L1 + TV + AdamW), each median; and the mean over an alternating run;
  * peak VRAM (torch.cuda.max_memory_allocated) per part.
Timing: warm-up, CUDA events, median. JSON out.

    python bench/bench_texture.py --out bench/results/texture.json [--comfy PATH]   # CUDA
    python bench/bench_texture.py --smoke [--out x.json]                             # tiny models, CPU

ComfyUI is found from --comfy, else $COMFYUI_PATH, else <repo>/.comfy/ComfyUI.
"""
from __future__ import annotations

import json
import os
import sys
import time
import traceback

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402
import _timing  # noqa: E402

_pack.load(tests=True)


def main() -> None:
    ap = _timing.parser(__doc__.split("\n\n")[0], "tiny models on CPU", comfy=True, iters=5, warmup=1)
    ap.add_argument("--texture", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=20, help="sampling steps per view / per SDEdit")
    ap.add_argument("--skip-full-run", action="store_true", help="skip the whole 15-view inpaint")
    ap.add_argument("--cuda-graphs", choices=["on", "off", "both"], default="both",
                    help="UNet/ControlNet replayed from CUDA graphs, eager, or both in turn (with an equality check)")
    args = ap.parse_args()
    _timing.find_comfyui(args.comfy, "bench_texture.py")

    from tiny_models import import_comfy, tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae

    if args.smoke:
        dev, full, dtype = torch.device("cpu"), False, torch.float32
        res, tex, steps, iters, warmup, level, n_views = 64, 256, 2, 2, 1, 3, 3
    else:
        dev, full, dtype = _timing.require_cuda("bench_texture.py"), True, torch.float16
        res, tex, steps, iters, warmup, level, n_views = args.res, args.texture, args.steps, args.iters, args.warmup, 6, 15

    import_comfy(skip=False)

    from bench_render import icosphere
    from idsculpt.core.camera import Cameras
    from idsculpt.core.mesh import HeadMesh
    from idsculpt.core.texture import (InpaintConfig, ReferenceView, RefineConfig, default_view_plan, normalbae_control,
                                       progressive_inpaint, rasterize_uv, refine_texture, render_textured, unwrap_uv)
    from idsculpt.nodes.engines.sampling import ComfyDenoiser, ComfyInpainter, ComfySampling

    t0 = time.time()
    ctx = 768 if full else 64
    model = tiny_sd15_model(full=full, dtype=dtype)
    control = tiny_controlnet(full=full, dtype=dtype)
    vae = tiny_vae(full=full)
    pos, neg = tiny_conditioning(3, width=ctx), tiny_conditioning(4, width=ctx)
    build_s = time.time() - t0

    v, f = icosphere(level, torch.device("cpu"))
    head = HeadMesh(v * torch.tensor([0.8, 1.0, 0.9]), f)
    t1 = time.time()
    mesh, info = unwrap_uv(head, tex, max_faces=100_000)
    unwrap_s = time.time() - t1
    mesh = mesh.to(dev)

    result: dict = {
        **_timing.comfy_header("texture", dev, dtype, vae),
        "resolution": res,
        "texture_size": tex,
        "sampling_steps": steps,
        "cfg": 10.0,
        "full_size": full,
        "smoke": bool(args.smoke),
        "build_s": round(build_s, 1),
        "mesh_faces": int(mesh.faces.shape[0]),
        "unwrap": {"seconds": round(unwrap_s, 2), "charts": info.charts, "decimated": info.decimated},
    }
    print("built models in", result["build_s"], "s;", info.summary(), flush=True)

    def record(key: str, fn) -> None:
        try:
            result[key] = fn()
        except Exception as e:  # noqa: BLE001 - record and go on with the other parts
            result[key] = {"error": f"{type(e).__name__}: {e}"}
            traceback.print_exc()
        print(key, result[key], flush=True)

    record("rasterize_uv", lambda: _timing.timed(dev, lambda: rasterize_uv(mesh, tex), 1, 3))

    modes = {"on": (True,), "off": (False,), "both": (False, True)}[args.cuda_graphs]
    eager_image = [None]
    for graphs in modes:
        sfx = "_graphs" if graphs else ""
        sampling = ComfySampling(model, pos, neg, vae, control, 1.0, steps=steps, cfg=10.0, sampler_name="ddim", scheduler="ddim_uniform",
                                 cuda_graphs=graphs)
        cam = Cameras.orbit(-15.0, 45.0, 3.8, 30.0, res).to(dev)
        out, _ = render_textured(mesh, torch.full((tex, tex, 3), 0.5, device=dev), cam)
        image = out.color[0]
        normal = normalbae_control(out.normal_view[0], out.mask[0])
        gen_mask = (out.mask[0, ..., 0] > 0.5).float()
        gen_mask[:, : res // 3] = 0  # a third kept: blended latents on

        def one_view() -> dict:
            with torch.inference_mode():
                r = _timing.timed(dev, lambda: ComfyInpainter(sampling, 0.95).inpaint(image, gen_mask, normal, None), warmup, iters)
            r["seconds_per_view"] = round(r["median_ms"] / 1000, 3)
            return r

        record("inpaint_view" + sfx, one_view)

        def same_as_eager() -> dict:
            # a fresh sampler so the noise seed matches; graphed and eager sampling must agree
            fresh = ComfySampling(model, pos, neg, vae, control, 1.0, steps=steps, cfg=10.0, sampler_name="ddim",
                                  scheduler="ddim_uniform", cuda_graphs=graphs)
            imgs = []
            with torch.inference_mode():
                for _ in range(3):  # past the warm-up calls, so the last one replays
                    fresh.calls = 0
                    imgs.append(ComfyInpainter(fresh, 0.95).inpaint(image, gen_mask, normal, None))
                if graphs:  # every replayed UNet/ControlNet call checked against an eager call on the same inputs
                    fresh.graphs.unet.verify = fresh.graphs.control.verify = True
                    fresh.calls = 0
                    ComfyInpainter(fresh, 0.95).inpaint(image, gen_mask, normal, None)
            stats = fresh.graphs.stats()
            fresh.close()
            # eager sampling itself is not bit-reproducible on the GPU (atomics in some kernels): its run-to-run spread
            rerun = float((imgs[-1] - imgs[-2]).abs().max())
            if not graphs:
                eager_image[0] = imgs[-1]
                return {"graph_stats": stats, "max_abs_diff_rerun": rerun}
            return {"graph_stats": stats, "max_abs_diff_rerun": rerun,
                    "max_abs_diff_vs_eager": None if eager_image[0] is None else float((imgs[-1] - eager_image[0]).abs().max())}

        record("inpaint_equality" + sfx, same_as_eager)

        ref_cam = Cameras.orbit(0.0, 0.0, 2.7, 13.37, res).to(dev)
        ref_img = torch.rand(res, res, 3, device=dev)
        reference = ReferenceView(ref_img, ref_cam)

        if not args.skip_full_run:
            def full_run() -> dict:
                plan = default_view_plan()[:n_views]
                with torch.inference_mode():
                    s, peak, res_ = _timing.wall(dev, lambda: progressive_inpaint(mesh, ComfyInpainter(sampling, 0.95), plan, reference,
                                                                          InpaintConfig(render_resolution=2 * res, resolution=res), tex))
                painted = float(res_.state.painted.float().sum() / res_.texels.covered.float().sum())
                return {"views": len(plan), "seconds": round(s, 2), "seconds_per_view": round(s / len(plan), 3), "peak_mem_mib": None if peak is None else round(peak, 1),
                        "painted_fraction": round(painted, 4)}

            record("inpaint_full" + sfx, full_run)

        textured = mesh.with_(texture=torch.rand(tex, tex, 3, device=dev))
        denoiser = ComfyDenoiser(sampling)

        def refine_parts() -> dict:
            cfg_r = dict(resolution=res, seed=0, preview_every=0)
            with torch.inference_mode():
                rnd = _timing.timed(dev, lambda: refine_texture(textured, denoiser, None, RefineConfig(refine_steps=1, **cfg_r)), warmup, iters)
                ref = _timing.timed(dev, lambda: refine_texture(textured, None, reference, RefineConfig(refine_steps=1, **cfg_r)), warmup, iters)
                n = 2 * max(2, iters)
                s, peak, _ = _timing.wall(dev, lambda: refine_texture(textured, denoiser, reference, RefineConfig(refine_steps=n, **cfg_r)))
            return {"random_step": rnd, "reference_step": ref,
                    "alternating_mean_ms": round(1000 * s / n, 2), "alternating_steps": n, "peak_mem_mib": None if peak is None else round(peak, 1),
                    "note": "random step = render + SDEdit (VAE enc, steps x UNet+ControlNet at CFG 10, VAE dec) + MSE backward; "
                            "the step timings include the per-call optimizer setup of a 1-step run"}

        record("refine" + sfx, refine_parts)
        sampling.close()

    print(json.dumps(result, indent=2))
    _timing.write_json(result, args.out, indent=2)


if __name__ == "__main__":
    main()
