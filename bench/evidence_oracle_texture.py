"""Issue 22, evidence 3: texture refinement under the fast schedule vs the paper's, with an oracle denoiser.

A known textured head (tests/texture_oracle.py: an ellipsoid with a nose in the authors' normalised
frame, a detailed analytic colour baked into its xatlas UVs) stands in for the diffusion model:

* start texture: the truth degraded as Progressive Inpaint leaves one (blurred, colour-shifted by a
  smooth field, ~3 % of the atlas in wrong-coloured squares; ``--start inpaint``: the real progressive
  inpaint with an oracle inpainter that returns the true views instead);
* the ORACLE denoiser returns the true render of each random view (a perfect denoiser of this head);
  ``--prior-std S`` > 0 makes it an SDEdit posterior mean that keeps a fraction
  a(t) = ᾱ_t·S²/(ᾱ_t·S² + 1 − ᾱ_t) of the render's error (SD1.5 schedule, t ~ U[50, 200) as drawn);
* the reference view: the truth rendered by a frontal portrait camera (EG3D FoV), its silhouette as
  the head mask;
* the perceptual term: none by default (LPIPS-VGG needs the pretrained VGG16 and LPIPS weights, which
  this machine lacks: the squared-error term alone pulls toward the denoised views); ``--perceptual
  lpips --vgg16 FILE [--lpips-weights FILE]`` uses the pack's LPIPS-VGG as Texture Refine does,
  ``--perceptual random-vgg`` a fixed random-weight VGG16 with unit channel weights (NOT LPIPS);

then runs ``refine_texture`` with ``RefineConfig(refine_steps=PAPER.refine_steps, denoise_batch=PAPER.denoise_batch)``
and the same with FAST's (core/schedules.py), every other setting the shipped RefineConfig
(lr 0.02, AdamW, t range, camera ranges, loss weights, white background) except the render size, and
measures the novel-view PSNR (8 azimuths 22.5° + k·45° x elevations 0° and 30°, distance 3, FoV 37.5°,
over the head's pixels) against the true renders. Verdict: FAST within 0.5 dB of PAPER, for every oracle
asked (``--prior-std 0 0.5``: the perfect oracle and the SDEdit posterior mean; only the latter sees how
old a render its target came from, which is what FAST's ``denoise_batch`` changes).

    python bench/evidence_oracle_texture.py                    # CPU scale: texture 256, render 128
    python bench/evidence_oracle_texture.py --device cuda      # full scale: texture 1024, render 512
    python bench/evidence_oracle_texture.py --prior-std 0 0.5          # both oracles
    python bench/evidence_oracle_texture.py --extra 100:0.04 400:0.02:8   # more (steps:lr[:denoise_batch]) runs

On CPU the pure-torch rasteriser runs with nvdiffrast's antialiasing rule (walk_steps=0,
background_silhouettes=False: the same rule as the CUDA path; the silhouette walk only matters for
vertex gradients, and this stage optimises the texture only).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from typing import Callable, Iterator

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402
import _stamp  # noqa: E402
import _timing  # noqa: E402

_pack.load(tests=True)

from idsculpt.core.schedules import FAST, PAPER  # noqa: E402
from idsculpt.core.texture import (  # noqa: E402
    InpaintConfig, ReferenceView, RefineConfig, progressive_inpaint, refine_texture, render_textured,
)
from texture_oracle import (  # noqa: E402
    NOVEL_AZIMUTHS, NOVEL_ELEVATIONS, OracleDenoiser, OracleInpainter, degraded_texture, detailed_color, known_head,
    masked_psnr, novel_cameras, novel_view_psnr, portrait_camera,
)

TOLERANCE_DB = 0.5  # issue 22, evidence 3
SCALES = {"cpu": {"texture": 256, "render": 128, "subdiv": 4}, "cuda": {"texture": 1024, "render": 512, "subdiv": 6}}


def _backend(dev: torch.device):
    if dev.type == "cpu":
        from idsculpt.core.render.torch_backend import TorchBackend

        return TorchBackend(dev, walk_steps=0, background_silhouettes=False)
    return None  # auto: nvdiffrast where it builds


def _perceptual(kind: str, args, dev: torch.device):
    if kind == "none":
        return None, "none: LPIPS-VGG term skipped (weight 0); no pretrained VGG16/LPIPS weights here"
    from idsculpt.core.panohead.perceptual import VGG16Perceptual, load_vgg16

    if kind == "lpips":
        if not args.vgg16:
            sys.exit("--perceptual lpips needs --vgg16 FILE (torchvision vgg16-397923af.pth) [--lpips-weights lpips/vgg.pth]")
        net = load_vgg16(args.vgg16, args.lpips_weights)
    else:
        torch.manual_seed(1234)
        net = VGG16Perceptual()  # random init, unit channel weights
    net = net.to(dev).eval()
    # as Texture Refine passes it: 0..1 images unchanged, at their own size (nodes/perceptual.texture_perceptual)
    return (lambda a, b: net(a, b, max_size=None)), f"{kind}: {net.weights_note}"


@contextlib.contextmanager
def texture_snapshots(at: set[int], take: Callable[[int, torch.Tensor], None]) -> Iterator[Callable]:
    """Watch a ``refine_texture`` run: ``take(k, texture)`` after its k-th step for every k in ``at``.

    refine_texture keeps its texture as the logits its AdamW optimises; this swaps ``torch.optim.AdamW``
    for a subclass that remembers them, and the returned progress callback (progress(k, total, preview),
    called right after step k's update) reads sigmoid(logits) there. That texture is exactly what
    ``refine_texture`` with ``steps=k`` returns, the rest of the config equal: the step count only
    bounds the loop (same cameras and t drawn in the same order, constant lr), which the evidence test
    checks. One PAPER run thus also gives the FAST texture and the curve in between."""
    seen: list[torch.optim.Optimizer] = []
    base = torch.optim.AdamW

    class Watched(base):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw):
            super().__init__(*a, **kw)
            seen.append(self)

    def progress(k: int, total: int, preview) -> None:
        if k in at and seen:
            take(k, torch.sigmoid(seen[-1].param_groups[0]["params"][0].detach()).clone())

    torch.optim.AdamW = Watched
    try:
        yield progress
    finally:
        torch.optim.AdamW = base


def evidence_device(args) -> torch.device:
    """The device of ``--device`` (exits when CUDA is asked for and missing), after ``--threads``."""
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: no CUDA device")
    return dev


def oracle_name(prior_std: float) -> str:
    return "perfect" if prior_std <= 0 else f"prior_std_{prior_std:g}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    ap.add_argument("--texture", type=int, default=None, help="texture size (cpu 256, cuda 1024)")
    ap.add_argument("--render", type=int, default=None, help="random-view, reference and evaluation render size (cpu 128, cuda 512)")
    ap.add_argument("--subdiv", type=int, default=None, help="icosphere subdivisions of the head (cpu 4: 5k faces, cuda 6: 82k)")
    ap.add_argument("--start", default="degraded", choices=["degraded", "inpaint"])
    ap.add_argument("--prior-std", type=float, nargs="+", default=[0.0],
                    help="one run set per value: 0 = perfect oracle; >0 = SDEdit posterior-mean oracle (a stale render changes its target)")
    ap.add_argument("--perceptual", default="none", choices=["none", "lpips", "random-vgg"])
    ap.add_argument("--vgg16", default=None)
    ap.add_argument("--lpips-weights", default=None)
    ap.add_argument("--seed", type=int, default=0, help="RefineConfig.seed (random views and t)")
    ap.add_argument("--extra", nargs="*", default=[], help="further runs as steps:lr[:denoise_batch] (e.g. 150:0.02 or 400:0.02:8)")
    ap.add_argument("--skip-paper", action="store_true", help="no PAPER run")
    ap.add_argument("--skip-fast", action="store_true", help="no FAST run (with --skip-paper: only the --extra runs)")
    ap.add_argument("--checkpoints", type=int, nargs="*", default=[50, 150, 200, 300],
                    help="also evaluate the PAPER run after these steps (the steps-only variants, free)")
    ap.add_argument("--fast-from-paper", action="store_true",
                    help="take FAST as the PAPER run after FAST.refine_steps instead of a separate run (identical only while "
                    "the two differ in steps alone, see texture_snapshots; halves the CPU time)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--note", default="", help="the note of the result's 'measured' stamp")
    ap.add_argument("--out", default=os.path.join(_timing.ROOT, "bench", "results", "evidence_oracle_texture.json"))
    args = ap.parse_args()
    if args.fast_from_paper and FAST.denoise_batch != PAPER.denoise_batch:
        sys.exit(f"--fast-from-paper: FAST batches {FAST.denoise_batch} denoised views per sampler run, PAPER "
                 f"{PAPER.denoise_batch}: FAST is not a prefix of the PAPER run, so it needs its own run")
    dev = evidence_device(args)
    scale = SCALES[dev.type]
    tex, res, subdiv = args.texture or scale["texture"], args.render or scale["render"], args.subdiv or scale["subdiv"]
    be = _backend(dev)
    t0 = time.perf_counter()
    mesh, gt = known_head(tex, subdiv=subdiv, normalised=True, color=detailed_color, device=dev)
    ref_cam = portrait_camera(res).to(dev)
    ref_out, _ = render_textured(gt, gt.texture, ref_cam, 1.0, be)
    reference = ReferenceView(ref_out.color[0], ref_cam, (ref_out.mask[0, ..., 0] > 0.5).float())
    cams = novel_cameras(res).to(dev)
    truth, _ = render_textured(gt, gt.texture, cams, 1.0, be)
    if args.start == "inpaint":
        ipc = InpaintConfig(render_resolution=res, resolution=res, backend=be)
        start = progressive_inpaint(mesh, OracleInpainter(gt), reference=reference, config=ipc, texture_size=tex).mesh.texture
    else:
        start = degraded_texture(gt.texture, seed=0)
    setup_s = time.perf_counter() - t0
    perceptual, perceptual_note = _perceptual(args.perceptual, args, dev)

    def evaluate(texture: torch.Tensor) -> dict:
        pooled, per = novel_view_psnr(mesh, texture, truth, cams, be)
        ref_pred, _ = render_textured(mesh, texture, ref_cam, 1.0, be)
        ref_psnr = masked_psnr(reference.image, ref_pred.color[0], reference.mask > 0.5)
        return {"novel_psnr_db": round(pooled, 3), "novel_psnr_per_view_db": [round(p, 2) for p in per],
                "reference_psnr_db": round(ref_psnr, 3)}

    start_eval = evaluate(start)
    print(f"start: novel {start_eval['novel_psnr_db']} dB, reference {start_eval['reference_psnr_db']} dB (setup {setup_s:.1f} s)", flush=True)
    lr0 = RefineConfig().learning_rate
    plan = [] if args.skip_paper else [("paper", PAPER.refine_steps, lr0, PAPER.denoise_batch)]
    if not args.skip_fast and (not args.fast_from_paper or args.skip_paper):
        plan.append(("fast", FAST.refine_steps, lr0, FAST.denoise_batch))
    for e in args.extra:
        parts = e.split(":")
        steps, lr, k = int(parts[0]), float(parts[1]), int(parts[2]) if len(parts) > 2 else 1
        plan.append((f"steps{steps}_lr{lr:g}" + (f"_batch{k}" if k > 1 else ""), steps, lr, k))
    oracles: dict[str, dict] = {}
    for prior_std in args.prior_std:
        oname = oracle_name(prior_std)
        runs: dict[str, dict] = {"start": start_eval}
        for name, steps, lr, k in plan:
            cfg = RefineConfig(refine_steps=steps, learning_rate=lr, resolution=res, seed=args.seed, backend=be, denoise_batch=k)
            den = OracleDenoiser(gt, background=cfg.background, prior_std=prior_std, backend=be)
            t1 = time.perf_counter()
            snaps: dict[int, torch.Tensor] = {}
            at = set()
            if name == "paper":
                at = {c for c in args.checkpoints if 0 < c < steps} | ({FAST.refine_steps} if args.fast_from_paper else set())
            with texture_snapshots(at, snaps.__setitem__) as progress:
                result = refine_texture(mesh.with_(texture=start), den, reference, cfg, perceptual, progress=progress)
            _timing.sync(dev)
            runs[name] = {"steps": steps, "lr": lr, "denoise_batch": k, "denoiser_calls": den.calls, **evaluate(result.mesh.texture),
                          "seconds": round(time.perf_counter() - t1, 1)}
            for c in sorted(snaps):
                key = "fast" if (args.fast_from_paper and c == FAST.refine_steps) else f"paper_after_{c}"
                runs[key] = {"steps": c, "lr": lr, "denoise_batch": k, **evaluate(snaps[c]), "from": f"the paper run after step {c}"}
                print(f"{oname} {key}: novel {runs[key]['novel_psnr_db']} dB", flush=True)
            print(f"{oname} {name}: steps {steps} lr {lr} denoise_batch {k}: novel {runs[name]['novel_psnr_db']} dB, reference "
                  f"{runs[name]['reference_psnr_db']} dB, {den.calls} denoiser calls ({runs[name]['seconds']} s)", flush=True)
        entry: dict = {"oracle": "perfect (true render)" if prior_std <= 0 else
                       f"SDEdit posterior mean, prior std {prior_std} ([-1,1] units): keeps a(t) of the render's error", "runs": runs}
        if "paper" in runs and "fast" in runs:
            diff = runs["paper"]["novel_psnr_db"] - runs["fast"]["novel_psnr_db"]
            entry["paper_minus_fast_db"] = round(diff, 3)
            entry["verdict"] = "pass" if diff <= TOLERANCE_DB else "fail"
            entry["gain_over_start_db"] = {r: round(runs[r]["novel_psnr_db"] - runs["start"]["novel_psnr_db"], 3) for r in ("paper", "fast")}
            print(f"{oname}: PAPER − FAST = {diff:.3f} dB (tolerance {TOLERANCE_DB}): {entry['verdict']}", flush=True)
        oracles[oname] = entry

    out = {
        "evidence": "issue 22 item 3: texture refinement, FAST vs PAPER schedule, oracle denoiser, novel-view PSNR",
        "device": _timing.device_name(dev), "torch": torch.__version__,
        "schedules": {s.name: {"refine_steps": s.refine_steps, "denoise_batch": s.denoise_batch} for s in (PAPER, FAST)},
        "scale": {"texture": tex, "render": res, "head_faces": int(mesh.faces.shape[0]), "subdiv": subdiv},
        "start": args.start, "perceptual": perceptual_note, "seed": args.seed,
        "novel_views": {"elevations": list(NOVEL_ELEVATIONS), "azimuths": list(NOVEL_AZIMUTHS), "distance": 3.0, "fov": 37.5},
        "oracles": oracles, "tolerance_db": TOLERANCE_DB,
    }
    verdicts = [o["verdict"] for o in oracles.values() if "verdict" in o]
    if verdicts:
        out["verdict"] = "pass" if all(v == "pass" for v in verdicts) else "fail"
    out["measured"] = _stamp.measured(args.note)
    _timing.write_json(out, args.out)
    print(json.dumps({"scale": out["scale"], "verdict": out.get("verdict"),
                      "paper_minus_fast_db": {k: o.get("paper_minus_fast_db") for k, o in oracles.items()}}))


if __name__ == "__main__":
    main()
