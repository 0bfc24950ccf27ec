"""The ISD landmark hint on the GPU (issue "Speed and memory"): ray-cast vs depth-buffer occlusion test,
and how much of it the sculpt step still waits for once it is started before the render.

    python bench/bench_landmarks.py --out results.json [--smoke] [--iters N]

Scene: the procedural head (marching tets at 128 cubes/side) as the landmarks' surface, decimated to
the landmarks' 50k-face occluder; 478 landmarks sampled on its front; one random ISD camera per step
(core.sculpt.views defaults, 512²). Wall-clock milliseconds (perf_counter, synchronised), median of
``--iters``:
  draw_ray / draw_zbuffer: FaceLandmarks3D.draw with each occlusion method (host waits for everything);
  gpu_load: a stand-in for the render + VAE encode the hint used to wait on (matmuls, ~20 ms);
  step_before: gpu_load, then draw (ray) — the order before this change;
  step_after: draw_async (zbuffer), gpu_load, result() — the sculpt step now.
Also the agreement of the two methods over random cameras.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import _pack  # noqa: E402
import _timing  # noqa: E402

_pack.load(tests=False)

import torch  # noqa: E402


def wall(fn, iters: int, warmup: int) -> float:
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for _ in range(warmup):
        fn()
    _timing.sync(dev)
    ts = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        _timing.sync(dev)
        ts.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(ts), 2)


def main() -> None:
    ap = _timing.parser(__doc__.split("\n\n")[0], "a coarser head, 5 timed calls, 20 cameras for the agreement",
                        res=None, iters=50)
    args = ap.parse_args()
    if args.smoke:
        args.iters = min(args.iters, 5)
    from idsculpt.core.dmtet.procedural import procedural_head_mesh
    from idsculpt.core.face import align
    from idsculpt.core.face.landmarks import mediapipe_connections
    from idsculpt.core.mesh import decimate
    from idsculpt.core.sculpt.views import RandomViewRanges, random_views

    dev = torch.device("cpu") if args.smoke and not torch.cuda.is_available() else _timing.require_cuda("bench_landmarks.py")
    head = procedural_head_mesh(64 if args.smoke else 128)
    occ = decimate(head, align.OCCLUDER_MAX_FACES)
    g = torch.Generator().manual_seed(0)
    front = (head.vertices[head.faces].mean(1)[:, 2] > 0.25).nonzero()[:, 0]
    fi = front[torch.randint(0, len(front), (478,), generator=g)]
    pts = head.vertices[head.faces[fi]].mean(1)
    lm = align.FaceLandmarks3D(points=pts.to(dev), connections=mediapipe_connections(), normals=head.face_normals()[fi].to(dev),
                               mesh_vertices=occ.vertices, mesh_faces=occ.faces)
    ranges = RandomViewRanges()
    if args.smoke:
        ranges.resolution = 128
    cams = [random_views(1, ranges, g)[0].to(dev) for _ in range(max(args.iters + args.warmup, 20 if args.smoke else 200))]
    it = iter(range(10**9))

    def cam():
        return cams[next(it) % len(cams)]

    a = torch.randn(4096, 4096, device=dev, dtype=torch.float16) if dev.type == "cuda" else torch.randn(256, 256)

    def gpu_load():
        x = a
        for _ in range(24):
            x = (x @ a).clamp_(-1, 1)
        return x

    def draw_ray():
        return lm.draw(cam(), method="ray")

    def step_before():
        gpu_load()
        draw_ray()

    def step_after():
        p = lm.draw_async(cam())
        gpu_load()
        p.result()

    res = {"device": _timing.device_name(dev), "torch": torch.__version__}
    res.update(occluder_faces=int(occ.faces.shape[0]), iters=args.iters,
               draw_ray_ms=wall(draw_ray, args.iters, args.warmup), draw_zbuffer_ms=wall(lambda: lm.draw(cam(), method="zbuffer"), args.iters, args.warmup),
               gpu_load_ms=wall(gpu_load, args.iters, args.warmup), step_before_ms=wall(step_before, args.iters, args.warmup),
               step_after_ms=wall(step_after, args.iters, args.warmup), smoke=bool(args.smoke))
    agree, hidden, hidden_both = 0.0, 0, 0
    n_agree = 20 if args.smoke else 200
    for c in cams[:n_agree]:
        ray = lm.visibility(c, method="ray")
        zb = lm.visibility(c, method="zbuffer")
        facing = lm.visibility(c, occlusion=False)
        agree += float((ray == zb).float().mean())
        hidden += int((facing & ~ray).sum())
        hidden_both += int((facing & ~ray & ~zb).sum())
    res.update(agreement=round(agree / min(len(cams), n_agree), 4), ray_hidden=hidden, zbuffer_also_hidden=hidden_both)
    print(res)
    _timing.write_json(res, args.out)


if __name__ == "__main__":
    main()
