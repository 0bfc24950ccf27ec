"""The card's dense matrix-product rate (TFLOP/s): the rate behind the arithmetic floor in docs/PERFORMANCE.md.

One square product per precision (default 8192³; 2·n³ FLOPs), warm-up then CUDA events, median:
  * bf16 and fp16 (the diffusion networks run in these);
  * tf32: fp32 tensors with TF32 tensor-core math (cuDNN uses it for fp32 convolutions by default,
    which is how PanoHead's generator runs);
  * fp32: TF32 off (plain fp32 matrix products, PyTorch's default for ``matmul``).
Random data: on zeros some cards run faster (less switching power), which is not the rate a model sees.

    python bench/bench_card.py --out bench/results/card.json     # CUDA
    python bench/bench_card.py --smoke                           # 512³ on the CPU (plumbing check)
"""
from __future__ import annotations

import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _timing  # noqa: E402

PRECISIONS = {"bf16": (torch.bfloat16, False), "fp16": (torch.float16, False), "tf32": (torch.float32, True),
              "fp32": (torch.float32, False)}


def matmul_tflops(device: torch.device, n: int, dtype: torch.dtype, tf32: bool, warmup: int, iters: int) -> dict:
    """Median TFLOP/s of an n×n by n×n product in ``dtype`` (``tf32``: TF32 math for fp32)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = tf32
    try:
        stats = _timing.timed(device, lambda: a @ b, warmup, iters)
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
    stats["tflops"] = round(2 * n ** 3 / (stats["median_ms"] / 1000) / 1e12, 1)
    return stats


def main() -> None:
    ap = _timing.parser(__doc__.split("\n\n")[0], "512³ products on the CPU", res=None, iters=20, warmup=5)
    ap.add_argument("--n", type=int, default=8192)
    args = ap.parse_args()
    if args.smoke:
        dev, n, iters, warmup, precisions = torch.device("cpu"), 512, 2, 1, ("bf16", "fp32")
    else:
        dev, n, iters, warmup, precisions = _timing.require_cuda("bench_card.py"), args.n, args.iters, args.warmup, tuple(PRECISIONS)
    runs = {p: matmul_tflops(dev, n, *PRECISIONS[p], warmup, iters) for p in precisions}
    result = {
        "stage": "card",
        "device": _timing.device_name(dev),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "smoke": bool(args.smoke),
        "n": n,
        "matmul_tflops": {p: r["tflops"] for p, r in runs.items()},
        "runs": runs,
    }
    print(json.dumps(result, indent=2))
    _timing.write_json(result, args.out)


if __name__ == "__main__":
    main()
