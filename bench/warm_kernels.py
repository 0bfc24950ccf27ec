"""Build the GPU kernels the pack compiles on first use, so a benchmark run measures steady use.

nvdiffrast (diffrp-nvdiffrast) JIT-compiles its CUDA plugin through torch.utils.cpp_extension the first
time it rasterises, and the walking antialiaser's Triton kernel compiles on its first launch: together
~20 s inside the first sculpt step of a fresh machine (an H100 server run, docs/PERFORMANCE.md). Both are
cached on disk (torch_extensions, ~/.triton), so a user pays them once per install, not per head; this
script is that once, run by bench/gpu_e2e_setup.sh before the timed runs. bench/bench_first_use.py
measures the first-use cost itself.

    python bench/warm_kernels.py
"""
from __future__ import annotations

import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _pack  # noqa: E402


def main() -> int:
    import torch

    if not torch.cuda.is_available():
        print("warm_kernels: no CUDA device, nothing to build")
        return 0
    _pack.load()
    from idsculpt.core import camera, dmtet, render

    head = dmtet.procedural_head_mesh(32)
    v = head.vertices.cuda().requires_grad_(True)
    f = head.faces.cuda()
    cams = camera.Cameras.orbit(0.0, [0.0, 90.0], 3.0, 30.0, 128).to("cuda")
    for backend in ("nvdiffrast", "nvdiffrast_walk"):
        t0 = time.time()
        out = render.render_mesh(v, f, cams, backend=backend)
        (out.mask.sum() + out.normal_view.sum()).backward()
        torch.cuda.synchronize()
        print(f"warm_kernels: {backend} ready in {time.time() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
