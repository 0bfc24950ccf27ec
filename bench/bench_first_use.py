"""One-off costs on a fresh install: what the first sculpt steps pay before they run at speed (GPU).

    python bench/bench_first_use.py --out bench/results/first_use.json [--keep-caches]

In a fresh process with empty kernel caches (unless --keep-caches): the nvdiffrast plugin's JIT build
(``load_nvdiffrast``), then the wall time of each of the first stage-A and reference steps of a sculpt
at full size (procedural head, 256-equivalent grid, 512² views; the fused silhouette walk compiles its
Triton kernel for each new specialisation there), against the steady steps after them, and the number
of Triton kernels compiled. These costs are paid once per machine (the caches persist on disk), but a
first run pays them inside the DMTet Sculpt stage.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import tempfile
import time

ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
ap.add_argument("--out", required=True)
ap.add_argument("--keep-caches", action="store_true", help="use the existing Triton / torch-extension caches")
ap.add_argument("--steps", type=int, default=8, help="steps of each kind")
args = ap.parse_args()
if not args.keep_caches:  # before torch / triton are imported: both read these at import or first use
    os.environ["TRITON_CACHE_DIR"] = tempfile.mkdtemp(prefix="triton_cache_")
    os.environ["TORCH_EXTENSIONS_DIR"] = tempfile.mkdtemp(prefix="torch_ext_")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402

_pack.load()
import torch  # noqa: E402

from bench_sculpt import make_inputs  # noqa: E402
from idsculpt.core.dmtet import procedural_head_mesh  # noqa: E402
from idsculpt.core.render.nvdiffrast_backend import load_nvdiffrast  # noqa: E402
from idsculpt.core.sculpt import RandomViewRanges, SculptConfig, Sculptor  # noqa: E402


def timed(fn) -> float:
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    return round(1000 * (time.perf_counter() - t0), 1)


def main() -> None:
    dev = torch.device("cuda")
    res: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "fresh_caches": not args.keep_caches}
    res["load_nvdiffrast_ms"] = timed(load_nvdiffrast)
    target = procedural_head_mesh(192)
    views, ref = make_inputs(target, 512, dev)
    cfg = SculptConfig(steps=10**6, gan_steps=10**6, grid_resolution=256, views=RandomViewRanges(resolution=512), preview_every=0)
    s = Sculptor(target.to(dev), views, ref, None, cfg, device=dev)
    res["stage_a_steps_ms"] = [timed(s.step) for _ in range(args.steps)]
    s.gan_steps, s.step_index = 0, 0  # stage B, reference steps only
    res["reference_steps_ms"] = [timed(s.step) for _ in range(args.steps)]
    for k in ("stage_a", "reference"):
        t = res[f"{k}_steps_ms"]
        res[f"{k}_first_minus_steady_ms"] = round(t[0] - statistics.median(t[2:]), 1)
    cache = os.environ.get("TRITON_CACHE_DIR")
    res["triton_kernels_compiled"] = len(glob.glob(os.path.join(cache, "*", "*.cubin"))) if cache else None
    print(json.dumps(res, indent=1))
    with open(args.out, "w", encoding="utf-8") as fh:
        json.dump(res, fh, indent=1)


if __name__ == "__main__":
    main()
