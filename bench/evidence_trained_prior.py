"""Issue 22, evidence 2: a small TRAINED prior, driven through the pack's real ISD, sculpts a template head
toward a known head; the fast schedule's final Chamfer must be within 10 % of the paper schedule's.

    python bench/evidence_trained_prior.py --device cuda --out DIR        # the whole GPU procedure
    python bench/evidence_trained_prior.py --smoke --out DIR              # tiny, CPU, minutes (checks the plumbing)

What runs, in order:
1. Heads (bench/prior_data.py): the known head ("the person", ``TARGET`` factors) and the template the
   sculpt starts from (``GENERIC``: core's procedural head; or a sphere), both scaled into PanoHead's frame as
   the harness's targets are. The training renders of the person are made in the START head's sculpting
   frame (the frame the sculpt's ISD renders are in); a family of random heads is rendered each in its own.
2. Training (bench/prior_model.py): a ~3.8 M-parameter conditional eps-prediction UNet on 64x64 pixel-space
   latents (512 renders area-downsampled by 8, as the harness's oracle encodes), SD1.5's schedule, labels
   ID / head / null (15 % dropout to null), the ISD's random cameras. The weights go to --weights (default
   DIR/trained_prior.pt; never into the repository). Reported: the loss curve and a held-out denoising loss
   (fresh cameras and family heads, fixed t and eps) before and after.
3. Sculpts (bench/sculpt_schedule_harness.py: the real Sculptor, GAN views + reference rendered from the
   person, the shipped ISD settings -- CFG 50, t in [20, 500], the "authors" estimator, ID for |az| < 70 --
   around ``TrainedPriorPredictor``): PAPER and FAST (core/schedules.py) from the same start and SDF init.
4. Guidance alone (no GAN views, no reference): FAST's ISD steps (312 x 4 views, stage-B regularisers) with
   the trained prior, and the same run with the UNTRAINED prior (its output layer is zero: eps_c = eps_u, so
   the ISD gradient is zero and only the regularisers act) as the control. The trained run must end closer
   to the person than it started and than the control: the ISD moves geometry the right way.
5. Candidates (sculpt_schedule_harness.ISD_STEP_VARIANTS): FAST with 625 and 400 ISD steps (2,500 and 1,600 view
   samples), each with its Chamfer and ratio to PAPER's in the JSON ("candidates"). On 2026-12-06 FAST had 625
   steps and the candidates were 400 and 312; 312 passed both pieces and ships (bench/evidence_summary.py).

Result: bench/results/evidence_trained_prior.json (and DIR/evidence_trained_prior.json): Chamfer start /
paper / fast, fast/paper, verdict (fast <= 1.10 x paper), the guidance-only numbers, training seconds, card.

GPU time at full scale on one H100 (an estimate from the measured step costs of the real stage, grid 256,
512 px: stage A ~35 ms, reference ~40 ms, an ISD step ~25-40 ms; the JSON's "seconds" holds the measured
parts): heads + SDF init ~20 s, training renders ~10 s, training <= 120 s (--train-seconds caps it), then
the sculpts side by side as processes (--jobs; the steps are launch-bound): about the PAPER run's ~200 s
(alone: PAPER ~200 s, FAST ~40 s, the candidates ~50-60 s, each guidance-only run ~20 s). In all about 6 minutes
alone; on 2026-12-06, beside the oracle's jobs on one H100, 612 s (PAPER's sculpt 399 s). To scale down: --grid 128, --render-res 256 (latents 32x32; the training renders follow),
--train-seconds 90, --no-control, --skip-guidance-only, --skip-candidates. --load-weights reuses a saved prior.
"""
from __future__ import annotations

import argparse
import copy
import json
import math
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402

_pack.load()

import torch  # noqa: E402

import prior_data as D  # noqa: E402
import prior_model as M  # noqa: E402
import sculpt_schedule_harness as H  # noqa: E402

from idsculpt.core.dmtet import chamfer_distance  # noqa: E402
from idsculpt.core.guidance import ISDGuidance  # noqa: E402
from idsculpt.core.mesh import HeadMesh  # noqa: E402
from idsculpt.core.schedules import FAST, PAPER, Schedule  # noqa: E402
from idsculpt.core.sculpt import Sculptor  # noqa: E402
from idsculpt.core.sculpt.views import RandomViewRanges  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT = os.path.join(ROOT, "bench", "results", "evidence_trained_prior.json")
#: fast's final Chamfer may exceed paper's by at most this fraction (issue 22, evidence 2)
TOLERANCE = 0.10
#: the DMTet Sculpt stage's regulariser weights in stage B (SculptConfig's schedules after the switch)
STAGE_B_NORMAL_CONSISTENCY, STAGE_B_LAPLACIAN = 10000.0, 1.5e5


def scaled(schedule: Schedule, divisor: int) -> Schedule:
    """``schedule`` with its sculpt steps divided by ``divisor`` (smoke runs; 1 = unchanged)."""
    if divisor == 1:
        return schedule
    gan = max(1, round(schedule.gan_steps / divisor))
    b = max(2, round((schedule.sculpt_steps - schedule.gan_steps) / divisor))
    return H.variant(schedule, f"{schedule.name}_div{divisor}", gan_steps=gan, sculpt_steps=gan + b)


def make_heads(args, dev: torch.device) -> tuple[HeadMesh, HeadMesh]:
    """(person, start) in the input (PanoHead-like) frame."""
    s = H.PANOHEAD_HEAD_SCALE
    t = D.head_mesh(D.TARGET, args.mesh_grid, dev, normalise=False)  # marched on the device, kept on the CPU
    target = HeadMesh(t.vertices.cpu() * s, t.faces.cpu())
    if args.start == "generic":
        g = D.head_mesh(D.GENERIC, args.mesh_grid, dev, normalise=False)
        start = HeadMesh(g.vertices.cpu() * s, g.faces.cpu())
    else:
        start = H.start_head(target, "sphere")
    return target, start


def train(args, target_sculpt_frame: HeadMesh, dev: torch.device, log) -> tuple[M.PriorUNet, M.TrainResult, dict]:
    ranges = RandomViewRanges(resolution=args.render_res)
    t0 = time.perf_counter()
    data = D.build_dataset(target_sculpt_frame, args.target_views, args.family_heads, args.views_per_head, ranges,
                           args.factor, dev, seed=args.seed, mesh_grid=args.mesh_grid)
    held = D.build_dataset(target_sculpt_frame, args.eval_views, max(1, args.family_heads // 8), args.eval_views // 4 or 1,
                           ranges, args.factor, dev, seed=args.seed + 1000, mesh_grid=args.mesh_grid)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    data_s = time.perf_counter() - t0
    log(f"data: {len(data)} training renders, {len(held)} held-out, latents {tuple(data.latents.shape[1:])}, {data_s:.1f} s")
    torch.manual_seed(args.seed)
    model = M.PriorUNet(M.PriorConfig(channels=tuple(args.channels)))
    log(f"prior: {M.parameter_count(model) / 1e6:.2f} M parameters")
    cfg = M.TrainConfig(steps=args.train_steps, batch=args.batch, lr=args.lr, max_seconds=args.train_seconds,
                        log_every=args.log_every, seed=args.seed)
    ema, res = M.train_prior(data, model, cfg, dev, eval_data=held, log=log)
    info = {"data_seconds": round(data_s, 2), "train_renders": len(data), "held_out_renders": len(held),
            "latent_shape": list(data.latents.shape[1:]), "parameters": M.parameter_count(model),
            "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.__dict__.items()}}
    return ema, res, info


def guidance_only(args, target: HeadMesh, start: HeadMesh, prepared, model: M.PriorUNet, dev: torch.device) -> dict:
    """FAST's ISD steps with no GAN views and no reference (stage-B regularisers): Chamfer before/after."""
    norm, sdf = prepared
    sched = scaled(FAST, args.sculpt_divisor)
    cfg = H.sculpt_config(sched, args.grid, args.render_res, args.seed, steps=sched.isd_steps, gan_steps=0,
                          lambda_normal_consistency=STAGE_B_NORMAL_CONSISTENCY, lambda_laplacian=STAGE_B_LAPLACIAN)
    pred = M.TrainedPriorPredictor(model, args.factor, dev)
    guidance = ISDGuidance(pred, H.shipped_isd_config(), torch.Generator().manual_seed(args.seed + 1))
    s = Sculptor(start.to(dev), None, None, guidance, cfg, device=dev, initial_sdf=lambda p: sdf.clone(), normalization=norm)
    t0 = time.perf_counter()
    res = s.run()
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    out = H.shape_metrics(res.mesh, target, args.chamfer_samples)
    return {**out, "chamfer_start": chamfer_distance(start.vertices.cpu(), start.faces.cpu(), target.vertices.cpu(),
                                                     target.faces.cpu(), n=args.chamfer_samples), "seconds": round(time.perf_counter() - t0, 2), "steps": cfg.steps, "views_per_step": cfg.guidance_views,
            "predictor_calls": pred.calls, "unet_rows": pred.rows}


#: FAST with other ISD step counts (sculpt_schedule_harness.ISD_STEP_VARIANTS), sculpted beside PAPER and FAST
CANDIDATES = tuple(f"fast_isd{k}" for k in H.ISD_STEP_VARIANTS)
JOBS = ("paper", "fast", *CANDIDATES, "guidance_only", "guidance_only_control")


def job_schedule(name: str, divisor: int) -> Schedule:
    """The schedule of sculpt job ``name`` (paper, fast or a candidate ISD step count), its steps divided by ``divisor``."""
    if name == "paper":
        return scaled(PAPER, divisor)
    fast = scaled(FAST, divisor)
    if name == "fast":
        return fast
    k = int(name.removeprefix("fast_isd"))
    return H.with_isd_steps(fast, max(1, round(k / divisor)), name)


def run_job(name: str, args, target: HeadMesh, start: HeadMesh, prepared, model: M.PriorUNet, dev: torch.device, log) -> dict:
    """One sculpt of the evidence (``JOBS``)."""
    if name in ("paper", "fast", *CANDIDATES):
        sc = job_schedule(name, args.sculpt_divisor)
        pred = M.TrainedPriorPredictor(model, args.factor, dev)
        log(f"sculpt {sc.name}: {sc.sculpt_steps} steps ({sc.gan_steps} stage A), {sc.guidance_views} view(s) per ISD step")
        r = H.run_schedule(target, start, sc, pred, grid_resolution=args.grid, render_resolution=args.render_res,
                           device=dev, seed=args.seed, prepared=prepared, chamfer_samples=args.chamfer_samples)
        r.update(predictor_calls=pred.calls, unet_rows=pred.rows, schedule_fields=sc.as_dict())
        log(f"  {name}: chamfer {r['chamfer_start']:.5f} -> {r['chamfer']:.5f}, mask IoU {r['mask_iou']:.4f}, {r['seconds']} s")
        return r
    if name == "guidance_only_control":  # the same network untrained: zero output layer, eps_c = eps_u = 0
        model = M.PriorUNet(copy.deepcopy(model.config)).to(dev)
    r = guidance_only(args, target, start, prepared, model, dev)
    log(f"  {name} (no GAN views, no reference): chamfer -> {r['chamfer']:.5f}, {r['seconds']} s")
    return r


def _save_prepared(prepared, path: str) -> None:
    norm, sdf = prepared
    torch.save({"rotation": norm.rotation, "center": norm.center, "scale": norm.scale, "sdf": sdf.cpu()}, path)


def _load_prepared(path: str, dev: torch.device):
    from idsculpt.core.dmtet import MeshNormalization

    d = torch.load(path, weights_only=True)
    return MeshNormalization(d["rotation"], d["center"], d["scale"]), d["sdf"].to(dev)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", required=True, help="folder for the weights and a copy of the result JSON")
    ap.add_argument("--weights", default=None, help="where to save the trained prior (default OUT/trained_prior.pt)")
    ap.add_argument("--load-weights", default=None, help="skip training: load this prior (saved by an earlier run)")
    ap.add_argument("--result", default=None, help="result JSON (default bench/results/evidence_trained_prior.json; "
                                                   "a --smoke run writes only OUT's copy)")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU scale: checks the plumbing, proves nothing")
    ap.add_argument("--start", choices=("generic", "sphere"), default="generic", help="the template the sculpt starts from")
    ap.add_argument("--grid", type=int, default=256, help="tet grid resolution (256 ships)")
    ap.add_argument("--render-res", type=int, default=512, help="ISD render resolution (512 ships); latents are 1/8")
    ap.add_argument("--factor", type=int, default=8, help="encode: area-downsampling factor (8 = SD's latent size)")
    ap.add_argument("--mesh-grid", type=int, default=96, help="marching-tets grid of the procedural heads")
    ap.add_argument("--target-views", type=int, default=6144)
    ap.add_argument("--family-heads", type=int, default=96)
    ap.add_argument("--views-per-head", type=int, default=64)
    ap.add_argument("--eval-views", type=int, default=256)
    ap.add_argument("--channels", type=int, nargs="+", default=[32, 64, 128])
    ap.add_argument("--train-steps", type=int, default=8000)
    ap.add_argument("--train-seconds", type=float, default=120.0, help="stop training after this long (-1: no cap)")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--log-every", type=int, default=250)
    ap.add_argument("--sculpt-divisor", type=int, default=1, help="divide every schedule's sculpt steps (smoke runs)")
    ap.add_argument("--chamfer-samples", type=int, default=20000)
    ap.add_argument("--skip-guidance-only", action="store_true")
    ap.add_argument("--skip-candidates", action="store_true", help="skip the candidate ISD step counts")
    ap.add_argument("--no-control", action="store_true", help="skip the untrained-prior control of the guidance-only run")
    ap.add_argument("--jobs", type=int, default=None,
                    help="sculpts run side by side as processes on the one device (default: all on CUDA, 1 on CPU); "
                         "the steps are launch-bound, so they share an H100 at about the cost of the longest")
    ap.add_argument("--only", choices=JOBS, default=None, help=argparse.SUPPRESS)  # a --jobs child: one sculpt
    ap.add_argument("--prepared", default=None, help=argparse.SUPPRESS)  # a --jobs child: the shared SDF init
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    if args.smoke:
        args.grid, args.render_res, args.mesh_grid = 32, 64, 24
        args.target_views, args.family_heads, args.views_per_head, args.eval_views = 64, 4, 16, 32
        args.channels, args.train_steps, args.batch, args.lr, args.log_every = [16, 32], 60, 16, 2e-3, 20
        args.sculpt_divisor, args.chamfer_samples = 100, 3000
    dev = torch.device(args.device)
    if (args.smoke or args.only) and dev.type == "cpu":
        torch.set_num_threads(1)  # many small ops: one thread is faster than several on a shared machine
    if args.train_seconds is not None and args.train_seconds < 0:
        args.train_seconds = None
    jobs = args.jobs if args.jobs is not None else (len(JOBS) if dev.type == "cuda" else 1)
    os.makedirs(args.out, exist_ok=True)
    weights = args.weights or os.path.join(args.out, "trained_prior.pt")

    def log(msg: str) -> None:
        print(("" if args.only is None else f"[{args.only}] ") + msg, flush=True)

    t_all = time.perf_counter()
    target, start = make_heads(args, dev)
    if args.only is not None:  # a --jobs child: one sculpt, its record to OUT/job_<name>.json
        prepared = _load_prepared(args.prepared, dev)
        r = run_job(args.only, args, target, start, prepared, M.load_prior(args.load_weights, dev), dev, log)
        with open(os.path.join(args.out, f"job_{args.only}.json"), "w") as fh:
            json.dump(r, fh, default=float)
        return r

    t0 = time.perf_counter()
    prepared = H.prepare_start(start, args.grid, dev)
    sdf_s = time.perf_counter() - t0
    norm = prepared[0]
    # the person as the sculpt's ISD renders will see it: in the START head's sculpting frame
    target_sculpt = HeadMesh(norm.apply(target.vertices.float()), target.faces)
    log(f"heads: person {target.vertices.shape[0]} vertices, start ({args.start}) {start.vertices.shape[0]}; SDF init {sdf_s:.1f} s")

    if args.load_weights:
        model, tres, tinfo = M.load_prior(args.load_weights, dev), None, {"loaded": args.load_weights}
        weights = args.load_weights
    else:
        model, tres, tinfo = train(args, target_sculpt, dev, log)
        M.save_prior(model, weights, {"train_steps": tres.steps, "seconds": tres.seconds})
        log(f"trained {tres.steps} steps in {tres.seconds:.1f} s; held-out loss {tres.eval_start:.4f} -> {tres.eval_end:.4f}; saved {weights}")

    names = ["paper", "fast"] + ([] if args.skip_candidates else list(CANDIDATES))
    if not args.skip_guidance_only:
        names += ["guidance_only"] + ([] if args.no_control else ["guidance_only_control"])
    runs: dict = {}
    t0 = time.perf_counter()
    if jobs > 1:
        prep_path = os.path.join(args.out, "prepared_start.pt")
        _save_prepared(prepared, prep_path)
        base = [sys.executable, os.path.abspath(__file__), "--device", args.device, "--out", args.out, "--load-weights",
                weights, "--prepared", prep_path]
        base += ["--start", args.start, "--grid", str(args.grid), "--render-res", str(args.render_res), "--factor",
                 str(args.factor), "--mesh-grid", str(args.mesh_grid), "--sculpt-divisor", str(args.sculpt_divisor),
                 "--chamfer-samples", str(args.chamfer_samples), "--seed", str(args.seed)]
        for i in range(0, len(names), jobs):
            procs = {n: subprocess.Popen(base + ["--only", n]) for n in names[i:i + jobs]}
            for n, p in procs.items():
                if p.wait() != 0:
                    raise RuntimeError(f"the {n} sculpt failed (exit {p.returncode}); see its output above")
        for n in names:
            path = os.path.join(args.out, f"job_{n}.json")
            with open(path) as fh:
                runs[n] = json.load(fh)
            os.remove(path)
        os.remove(prep_path)
    else:
        for n in names:
            runs[n] = run_job(n, args, target, start, prepared, model, dev, log)
    sculpt_s = time.perf_counter() - t0

    paper, fast = runs["paper"]["chamfer"], runs["fast"]["chamfer"]
    ratio = fast / paper

    def verdict(chamfer: float) -> str:  # a schedule's Chamfer within TOLERANCE of PAPER's
        return "pass" if chamfer / paper <= 1 + TOLERANCE else "fail"
    chamfer_start = runs["paper"]["chamfer_start"]
    gonly = None
    if "guidance_only" in runs:
        tr = runs["guidance_only"]["chamfer"]
        ctl = runs.get("guidance_only_control", {}).get("chamfer", math.inf)
        gonly = {"chamfer_start": chamfer_start, "chamfer_trained": tr,
                 "chamfer_untrained_control": None if math.isinf(ctl) else ctl,
                 "moves_toward_person": bool(tr < chamfer_start and tr < ctl)}

    card = torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu"
    result = {
        "evidence": "issue 22 item 2: a small trained prior through the real ISD, paper vs fast schedule",
        "command": "python bench/evidence_trained_prior.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "smoke": bool(args.smoke), "card": card, "device": str(dev), "torch": torch.__version__,
        "isd": vars(H.shipped_isd_config()),
        "chamfer_start": chamfer_start, "chamfer_paper": paper, "chamfer_fast": fast, "fast_over_paper": ratio,
        "tolerance": TOLERANCE, "verdict": verdict(fast),
        "candidates": {n: {"chamfer": runs[n]["chamfer"], "over_paper": runs[n]["chamfer"] / paper,
                           "isd_view_samples": runs[n]["isd_view_samples"], "verdict": verdict(runs[n]["chamfer"])}
                       for n in CANDIDATES if n in runs},
        "sculpted_toward_person": bool(paper < chamfer_start and fast < chamfer_start),
        "guidance_only": gonly,
        "training": None if tres is None else {
            **tinfo, "steps": tres.steps, "seconds": round(tres.seconds, 2), "held_out_loss_start": tres.eval_start,
            "held_out_loss_end": tres.eval_end, "curve": tres.curve},
        "runs": runs,
        "seconds": {"total": round(time.perf_counter() - t_all, 1), "sdf_init": round(sdf_s, 2),
                    "training": None if tres is None else round(tres.seconds, 1),
                    "data": tinfo.get("data_seconds"), "sculpts_wall": round(sculpt_s, 1), "jobs": jobs,
                    **{k: v["seconds"] for k, v in runs.items()}},
        "args": vars(args), "weights": weights,
    }
    paths = {os.path.join(args.out, "evidence_trained_prior.json")}
    if args.result or not args.smoke:
        paths.add(args.result or RESULT)
    for path in paths:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w") as fh:
            json.dump(result, fh, indent=1, default=float)
    log(f"chamfer start {chamfer_start:.5f}, paper {paper:.5f}, fast {fast:.5f}: fast/paper {ratio:.3f} -> {result['verdict']}"
        + ("" if gonly is None else f"; guidance only {gonly['chamfer_trained']:.5f} (control {gonly['chamfer_untrained_control']})")
        + f" ({result['seconds']['total']} s, {card})")
    return result


if __name__ == "__main__":
    main()
