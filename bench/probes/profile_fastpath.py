"""Fast-path profiling (issue "Speed and memory"): where the time of a sculpt / ISD / refine step goes.

    python bench/probes/profile_fastpath.py --out DIR [--parts sculpt,isd,refine,panohead] [--tag base]

sculpt: one stage-A and one reference step at 512² on the 256-equivalent grid (procedural head,
        analytic SDF init so no 16 s mesh-SDF init), their sub-parts, and torch.profiler tables
        (top ops by CUDA and by CPU time) written to DIR/sculpt_prof_<tag>.txt;
isd:    the ISD step (1, 2, 4 views) through ComfyUI with full-size random-weight models, its parts
        (ControlNet copy + hint, process_conds, calc_cond_batch, VAE fwd+bwd) and a profiler table;
refine: one SDEdit denoise of the texture refine step at 20 / 10 / 5 sampler steps;
panohead: one W+ and one PTI step of the inversion (release-size generator, random weights, neural
        128², eager) and their profiler tables in DIR/panohead_prof_<tag>.txt: the step runs ~40× its
        arithmetic floor (docs/PERFORMANCE.md), the largest ratio of any stage.
Timings: warm-up, CUDA events, median. Results as JSON in DIR/fastpath_<tag>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))  # bench/: the shared timing code and pack loader
import _pack  # noqa: E402
import _timing  # noqa: E402

_pack.load(tests=True)

import torch  # noqa: E402


def timer(fn, warmup: int = 3, iters: int = 10) -> float:
    """Median CUDA-event milliseconds of ``fn()`` (the shared measurement in bench/_timing.py)."""
    ts, _ = _timing.measure(torch.device("cuda"), fn, warmup, iters, reset_peak=False)
    return round(statistics.median(ts), 2)


def prof_table(fn, n: int, title: str, rows: int = 30) -> str:
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
        for _ in range(n):
            fn()
        torch.cuda.synchronize()
    ka = p.key_averages()
    out = [f"===== {title} ({n} steps) ====="]
    out.append(ka.table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=60))
    out.append(ka.table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))
    return "\n".join(out)


def _load_base():
    """The pre-fast-path torch backend and Sculptor (copies in bench/probes/_fastpath_base), or None."""
    import importlib.util
    d = os.path.join(HERE, "_fastpath_base")
    if not os.path.isdir(d):
        return None
    out = {}
    for name, pkg, cls in (("torch_backend_orig", "idsculpt.core.render", "TorchBackend"), ("stages_orig", "idsculpt.core.sculpt", "Sculptor")):
        spec = importlib.util.spec_from_file_location(f"{pkg}.{name}", os.path.join(d, name + ".py"))
        m = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = m
        spec.loader.exec_module(m)
        out[cls] = getattr(m, cls)
    return out


def part_sculpt(res: dict, out_dir: str, tag: str) -> None:
    from bench_sculpt import make_inputs

    from idsculpt.core.dmtet import laplacian_loss, mesh_edges, normal_consistency_loss, procedural_head_mesh
    from idsculpt.core.dmtet.procedural import head_sdf
    from idsculpt.core.render import render_mesh
    from idsculpt.core.sculpt import SculptConfig, Sculptor
    from idsculpt.core.sculpt.views import RandomViewRanges

    dev = torch.device("cuda")
    target = procedural_head_mesh(128)
    views, ref = make_inputs(target, 512, dev)
    cfg = SculptConfig(steps=10**6, gan_steps=10**6, grid_resolution=256, views=RandomViewRanges(resolution=512), preview_every=0)
    s = Sculptor(target.to(dev), views, ref, None, cfg, device=dev, initial_sdf=head_sdf)
    v, f = s.current()
    r: dict = {"surface_faces": int(f.shape[0]), "surface_vertices": int(v.shape[0])}
    base = _load_base()
    if base is not None:  # the code before the fast path, same process, same machine
        import types

        from idsculpt.core.render import get_backend
        be = get_backend("nvdiffrast_walk", dev)
        new_walker, new_step = be._walker, s.step
        be._walker, s.step = base["TorchBackend"](dev), types.MethodType(base["Sculptor"].step, s)
        r["before_stage_a_step_ms"] = timer(s.step)
        s.gan_steps, s.step_index, s.total = 0, 0, 10**6
        r["before_reference_step_ms"] = timer(s.step)
        vv0, ff0 = s.current()
        vv0 = vv0.detach().requires_grad_(True)
        def rb0():
            o = render_mesh(vv0, ff0, s.ref["camera"], backend="nvdiffrast_walk")
            (o.mask.sum() + o.normal_view.sum()).backward()
        r["before_render_fwd_bwd_nvdiffrast_walk_ms"] = timer(rb0)
        # gradient agreement on a GAN view (silhouettes present), clean gradients for each
        gcam = s.gan[0][[0]]
        wts = torch.linspace(0, 1, 512, device=dev)[:, None, None]
        vv0.grad = None
        o_old = render_mesh(vv0, ff0, gcam, backend="nvdiffrast_walk")
        ((o_old.mask + o_old.normal_view.sum(-1, keepdim=True)) * wts).sum().backward()
        g_old, m_old = vv0.grad.clone(), o_old.mask.detach()
        be._walker, s.step = new_walker, new_step
        vv0.grad = None
        o_new = render_mesh(vv0, ff0, gcam, backend="nvdiffrast_walk")
        ((o_new.mask + o_new.normal_view.sum(-1, keepdim=True)) * wts).sum().backward()
        r["walk_new_vs_old_mask_maxdiff"] = float((o_new.mask.detach() - m_old).abs().max())
        r["walk_new_vs_old_grad_maxrel"] = float((vv0.grad - g_old).abs().max() / g_old.abs().max().clamp_min(1e-30))
        r["walk_grad_maxabs"] = float(g_old.abs().max())
        s.gan_steps, s.step_index, s.total = 10**6, 0, 10**6
    r["stage_a_step_ms"] = timer(s.step)
    tables = [prof_table(s.step, 5, "stage-A step")]
    s.gan_steps, s.step_index, s.total = 0, 0, 10**6
    r["reference_step_ms"] = timer(s.step)
    tables.append(prof_table(s.step, 5, "reference step"))
    r["extract_fwd_ms"] = timer(lambda: s.geometry.extract())
    vv, ff = s.current()
    vv = vv.detach().requires_grad_(True)
    cam = s.ref["camera"]
    for be in ("nvdiffrast", "nvdiffrast_walk"):
        def rb(be=be):
            o = render_mesh(vv, ff, cam, backend=be)
            (o.mask.sum() + o.normal_view.sum()).backward()
        r[f"render_fwd_bwd_{be}_ms"] = timer(rb)

    def regs():  # as in Sculptor.step: the surface's edges found once for both regularisers
        edges = mesh_edges(ff, vv.shape[0])
        (normal_consistency_loss(vv, ff, edges) + laplacian_loss(vv, ff, edges)).backward()
    r["regularisers_fwd_bwd_ms"] = timer(regs)
    from idsculpt.core.render.torch_backend import TopologyHash
    r["topology_hash_ms"] = timer(lambda: TopologyHash(ff.int()))
    tables.append(prof_table(lambda: render_mesh(vv, ff, cam, backend="nvdiffrast_walk").mask.sum().backward(), 5, "walk render fwd+bwd"))
    res["sculpt"] = r
    with open(os.path.join(out_dir, f"sculpt_prof_{tag}.txt"), "w") as fh:
        fh.write("\n\n".join(tables))
    print("sculpt", json.dumps(r), flush=True)


def _models():
    from tiny_models import import_comfy, tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae
    import_comfy(skip=False)
    model = tiny_sd15_model(full=True, dtype=torch.float16)
    control = tiny_controlnet(full=True, dtype=torch.float16)
    vae = tiny_vae(full=True)
    pos, neg = tiny_conditioning(3, width=768), tiny_conditioning(4, width=768)
    return model, control, vae, pos, neg


def _with_comfy_vae_attention(p, fn):
    """Run fn with the predictor's encoder copy on ComfyUI's own VAE attention (the pre-fast-path code)."""
    from comfy.ldm.modules.diffusionmodules.model import vae_attention
    mods = [m for m in p._encoder.encoder.modules() if hasattr(m, "optimized_attention")]
    saved = [m.optimized_attention for m in mods]
    for m in mods:
        m.optimized_attention = vae_attention()
    try:
        return fn()
    finally:
        for m, f in zip(mods, saved):
            m.optimized_attention = f


def part_isd(res: dict, out_dir: str, tag: str, models) -> None:
    import tempfile

    import comfy.samplers
    from bench_isd import FixedHints, isd_setup
    from tiny_models import write_tiny_faceid_adapter

    from idsculpt.core.face.id_adapter import load_id_adapter
    from idsculpt.core.guidance import ViewBatch
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    model, control, vae, pos, neg = models
    dev = torch.device("cuda")
    with tempfile.TemporaryDirectory() as d:
        adapter = load_id_adapter(write_tiny_faceid_adapter(os.path.join(d, "faceid.bin"), "faceid-portrait", cross_attention_dim=768, model_channels=320))
    model = apply_id_adapter(model, adapter, torch.nn.functional.normalize(torch.randn(512), dim=0), weight=1.0)
    r: dict = {}
    hints = FixedHints(4, 512, dev)
    tables = []
    for n in (1, 2, 4):
        g, cams, image = isd_setup(model, pos, neg, vae, control, hints, n, 512, dev)
        with g:
            def step():
                img = image.clone().requires_grad_(True)
                g(img, cams).backward()
            r[f"isd_step_{n}view_ms"] = timer(step)
            if n == 4:
                r["before_isd_step_4view_ms"] = _with_comfy_vae_attention(g.predictor, lambda: timer(step))
            if n == 1:
                tables.append(prof_table(step, 5, "ISD step 1 view"))
                p = g.predictor
                lat = p.encode(image).detach()
                sig = torch.full((n,), 2.0, device=dev)
                views = ViewBatch(torch.zeros(n), torch.zeros(n), torch.ones(n, dtype=torch.bool), torch.full((n,), 300), sig, cams)
                r["predict_noise_ms"] = timer(lambda: p.predict_noise(lat + 2.0 * torch.randn_like(lat), sig, views))
                def enc():
                    img = image.clone().requires_grad_(True)
                    p.encode(img).float().square().sum().backward()
                r["vae_fwd_bwd_ms"] = timer(enc)
                # parts of one predictor call, host wall time (sync before/after)
                st = p._state
                def ctl_copy():
                    hint = p.landmark_hints(views)
                    return p.control_net.copy().set_cond_hint(hint, p.control_strength, p.control_range, vae=p.vae)
                def wall(fn, k=10):
                    torch.cuda.synchronize(); t0 = time.perf_counter()
                    for _ in range(k):
                        fn()
                    torch.cuda.synchronize(); return round((time.perf_counter() - t0) * 1000 / k, 2)
                r["control_copy_wall_ms"] = wall(ctl_copy)
                x = lat + 2.0 * torch.randn_like(lat)
                def pc():
                    conds = {"positive": [c.copy() for c in st["conds"]["positive"]], "negative": [c.copy() for c in st["conds"]["negative"]]}
                    return comfy.samplers.process_conds(st["real_model"], x, conds, dev)
                r["process_conds_wall_ms"] = wall(pc)
                tables.append(prof_table(lambda: p.predict_noise(x, sig, views), 5, "predict_noise 1 view"))
                # A/B: the encoder copy's attention back to ComfyUI's (SDPA, memory-efficient kernel)
                r["before_vae_fwd_bwd_ms"] = _with_comfy_vae_attention(p, lambda: timer(enc))
                r["before_isd_step_1view_ms"] = _with_comfy_vae_attention(p, lambda: timer(step))
                with torch.no_grad():
                    a = p.encode(image); b_ = _with_comfy_vae_attention(p, lambda: p.encode(image))
                r["math_vs_sdpa_latent_maxdiff"] = float((a.float() - b_.float()).abs().max())
                r["latent_maxabs"] = float(b_.float().abs().max())
    r["isd_per_view_ms"] = {k: round(v / int(k.split("_")[2][0]), 2) for k, v in r.items() if k.startswith("isd_step_")}
    res["isd"] = r
    if os.environ.get("FASTPATH_COMPILE") == "1":  # ComfyUI's own TorchCompileModel wrapper on the UNet
        try:
            from comfy_api.torch_helpers import set_torch_compile_wrapper
            cm = model.clone()
            set_torch_compile_wrapper(cm, backend="inductor")
            for n in (1, 4):
                g, cams, image = isd_setup(cm, pos, neg, vae, control, hints, n, 512, dev)
                with g:
                    def step():
                        img = image.clone().requires_grad_(True)
                        g(img, cams).backward()
                    t0 = time.time(); step(); torch.cuda.synchronize()
                    r[f"compiled_first_step_{n}view_s"] = round(time.time() - t0, 1)
                    r[f"compiled_isd_step_{n}view_ms"] = timer(step)
                print("compiled", n, r, flush=True)
        except Exception as e:  # noqa: BLE001
            r["compile_error"] = f"{type(e).__name__}: {e}"
            traceback.print_exc()
    res["isd"] = r
    with open(os.path.join(out_dir, f"isd_prof_{tag}.txt"), "w") as fh:
        fh.write("\n\n".join(tables))
    print("isd", json.dumps(r), flush=True)


def part_refine(res: dict, models) -> None:
    from idsculpt.core.camera import Cameras
    from idsculpt.nodes.engines.sampling import ComfyDenoiser, ComfySampling

    model, control, vae, pos, neg = models
    dev = torch.device("cuda")
    cam = Cameras.orbit(-15.0, 45.0, 3.8, 30.0, 512).to(dev)
    img = torch.rand(512, 512, 3, device=dev)
    ctl = torch.rand(512, 512, 3, device=dev)
    r: dict = {}
    for steps in (20, 10, 5):
        den = ComfyDenoiser(ComfySampling(model, pos, neg, vae, control, 1.0, steps=steps, cfg=10.0, sampler_name="ddim", scheduler="ddim_uniform"))
        with torch.inference_mode():
            r[f"denoise_{steps}steps_ms"] = timer(lambda: den.denoise(img, ctl, cam, 150), 1, 5)
    res["refine"] = r
    print("refine", json.dumps(r), flush=True)


def panohead_steps(device: torch.device, full: bool = True, neural: int = 128) -> dict:
    """The inversion's eager W+ and PTI steps (core.panohead.invert's own render and loss functions,
    plain Adam as in its eager loop) on a random generator: {"w_step": fn, "pti_step": fn}."""
    import copy
    import importlib

    from bench_panohead import _random_generator
    from idsculpt.core.camera import eg3d_frontal_label
    from idsculpt.core.panohead.perceptual import VGG16Perceptual
    from idsculpt.core.panohead.triplane import release_config, tiny_config

    inv = importlib.import_module("idsculpt.core.panohead.invert")
    g = _random_generator(release_config() if full else tiny_config(), device).requires_grad_(False)
    vgg = VGG16Perceptual().to(device)
    cfg = inv.InversionConfig(neural_rendering_resolution=neural)
    lab = eg3d_frontal_label().to(device)
    target = torch.rand(1, 3, g.img_resolution, g.img_resolution, device=device) * 2 - 1
    with torch.no_grad():
        taps = vgg.taps(target, cfg.perceptual_size)
        w_avg = g.mapping(torch.randn(1, g.z_dim, device=device), lab).detach()
    w_opt = w_avg.clone().requires_grad_(True)
    w_adam = torch.optim.Adam([w_opt], betas=(0.9, 0.999), lr=cfg.w_lr)
    gt = copy.deepcopy(g).train().requires_grad_(True)
    p_adam = torch.optim.Adam(gt.parameters(), betas=(0.9, 0.999), lr=cfg.pti_lr)

    def w_step() -> None:
        with torch.enable_grad():
            synth = inv._render(g, w_opt, lab, neural, cfg.seed, 0)
            loss = inv._w_loss(vgg, target, taps, synth, w_opt, w_avg, cfg)
            w_adam.zero_grad(set_to_none=True)
            loss.backward()
            w_adam.step()

    def pti_step() -> None:
        with torch.enable_grad():
            synth = inv._render(gt, w_avg, lab, neural, cfg.seed + 1, 0)
            loss = inv._pti_loss(vgg, target, taps, synth, cfg)
            p_adam.zero_grad(set_to_none=True)
            loss.backward()
            p_adam.step()

    return {"w_step": w_step, "pti_step": pti_step}


def part_panohead(res: dict, out_dir: str, tag: str, neural: int = 128) -> None:
    steps = panohead_steps(torch.device("cuda"), neural=neural)
    out: dict = {"neural_rendering_resolution": neural}
    tables = []
    for name, fn in steps.items():
        out[f"{name}_ms"] = timer(fn)
        tables.append(prof_table(fn, 3, f"PanoHead {name} at neural {neural}²", rows=40))
        print(f"PanoHead {name}: {out[f'{name}_ms']} ms a step", flush=True)
        print("\n".join(tables[-1].splitlines()[:16]), flush=True)  # the table file may not come back
    res["panohead"] = out
    with open(os.path.join(out_dir, f"panohead_prof_{tag}.txt"), "w") as fh:
        fh.write("\n\n".join(tables))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True)
    ap.add_argument("--parts", default="sculpt,isd,refine")
    ap.add_argument("--tag", default="run")
    ap.add_argument("--fir-grad", default="own", choices=["own", "autograd"],
                    help="PanoHead's FIR filters: their own input gradient (shipped) or autograd's cuDNN data-gradient "
                         "(the before of core/panohead/ops.py _FirCorrelation)")
    ap.add_argument("--trigrid-grad", default="kernel", choices=["native", "kernel"],
                    help="PanoHead's tri-grid lookup: the Triton feature gradient (shipped: core/panohead/triplane.py "
                         "TRIGRID_GRAD_KERNEL) or PyTorch's grid_sampler_3d_backward (the before)")
    a = ap.parse_args()
    from idsculpt.core.panohead import triplane

    triplane.TRIGRID_GRAD_KERNEL = a.trigrid_grad == "kernel"  # either way, whatever the shipped setting
    if a.fir_grad == "autograd":
        import torch.nn.functional as F

        from idsculpt.core.panohead import ops as panohead_ops
        panohead_ops._fir = lambda x, k: F.conv2d(x, k)
    os.makedirs(a.out, exist_ok=True)
    res: dict = {"device": _timing.device_name(torch.device("cuda")), "torch": torch.__version__, "tag": a.tag,
                 "fir_grad": a.fir_grad, "trigrid_grad": a.trigrid_grad}
    parts = a.parts.split(",")
    models = None
    for name in parts:
        t0 = time.time()
        try:
            if name == "sculpt":
                part_sculpt(res, a.out, a.tag)
            elif name == "panohead":
                part_panohead(res, a.out, a.tag)
            else:
                if models is None:
                    models = _models()
                if name == "isd":
                    part_isd(res, a.out, a.tag, models)
                elif name == "refine":
                    part_refine(res, models)
        except Exception as e:  # noqa: BLE001
            res[name] = {"error": f"{type(e).__name__}: {e}", "trace": traceback.format_exc()[-3000:]}
            traceback.print_exc()
        print(name, "took", round(time.time() - t0, 1), "s", flush=True)
    _timing.write_json(res, os.path.join(a.out, f"fastpath_{a.tag}.json"), indent=1)


if __name__ == "__main__":
    main()
