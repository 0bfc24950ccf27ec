"""How much does the ISD's VAE encoder keep for its backward, plain autograd vs the lean backward? (diagnostic)

    python bench/probes/vae_saved_memory.py --out bench/probes/output/vae_saved_memory.json

The SD1.x/2.x encoder (ch 128, mult 1,2,4,4, two blocks a level, mid attention; random weights, bf16,
frozen) at 512², input requiring grad as the ISD's render does. Prints and records:
- saved-for-backward bytes per view, counted on the meta device (any machine, instant), old vs new;
- on CUDA: for 1 and 4 views, old vs new (and old_cl: plain autograd, weights and input channels_last): peak memory of forward + backward above the weights
  (``max_memory_allocated``), median fwd+bwd time (CUDA events), and the new input gradient's largest
  difference from the old one relative to its largest value (0 or bf16 rounding).
Runs in well under a minute on an H100.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import _pack  # noqa: E402

_pack.load()
from idsculpt.core.sd_vae_encoder import EncoderConfig, SDVAEEncoder  # noqa: E402

SD_CONFIG = EncoderConfig(in_channels=3, ch=128, level_channels=(128, 256, 512, 512), num_res_blocks=2,
                          attn_levels=(), out_channels=8, quant_channels=8)
MIB = 2 ** 20


def build(lean: bool, device: str, dtype: torch.dtype, seed: int = 0) -> SDVAEEncoder:
    with torch.device(device):
        enc = SDVAEEncoder(SD_CONFIG, lean_backward=lean)
    if device != "meta":
        g = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for p in enc.parameters():
                fan_in = p[0].numel() if p.ndim > 1 else 1
                p.copy_((torch.randn(p.shape, generator=g) * (0.5 / fan_in ** 0.5) if p.ndim > 1
                         else 1.0 + 0.1 * torch.randn(p.shape, generator=g)).to(device))
    return enc.to(dtype).requires_grad_(False).eval()


def saved_bytes(enc: torch.nn.Module, x: torch.Tensor) -> int:
    params = {id(p) for p in enc.parameters()}
    seen: dict[int, torch.Tensor] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        base = t if t._base is None else t._base
        if id(base) not in params:
            seen[id(base)] = base
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        enc(x)
    return sum(t.numel() * t.element_size() for t in seen.values())


def _conv2d_input_materialised(input_size, weight, grad_output, stride=1, padding=0, dilation=1, groups=1):
    """torch.nn.grad.conv2d_input with a real (uninitialised) input tensor instead of an expanded scalar:
    tells whether the expanded stand-in changes cuDNN's backward-data algorithm (the ``new_empty`` rows)."""
    x = torch.empty(input_size, dtype=grad_output.dtype, device=grad_output.device)
    return torch.ops.aten.convolution_backward(grad_output, x, weight, None, torch.nn.modules.utils._pair(stride),
                                               torch.nn.modules.utils._pair(padding), torch.nn.modules.utils._pair(dilation),
                                               False, [0, 0], groups, (True, False, False))[0]


def profile_table(enc: torch.nn.Module, x0: torch.Tensor, probe: torch.Tensor, rows: int = 25) -> str:
    """Top CUDA kernels of 5 forward + backward passes (torch.profiler), as text."""
    from torch.profiler import ProfilerActivity, profile

    def step() -> None:
        x = x0.detach().requires_grad_(True)
        enc(x).backward(probe)

    step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=rows, max_name_column_width=70)


def cuda_rows(res: int, views: tuple[int, ...], iters: int, profile_views: int = 0) -> dict:
    dev, dtype = "cuda", torch.bfloat16
    encs = {"old": build(False, dev, dtype), "new": build(True, dev, dtype),
            # plain autograd with NHWC weights and input: what channels_last alone buys the convolutions
            "old_cl": build(False, dev, dtype).to(memory_format=torch.channels_last),
            # the lean backward with its convolutions' input gradients taken with a real input tensor
            "new_empty": build(True, dev, dtype)}
    out: dict = {}
    for v in views:
        g = torch.Generator(device=dev).manual_seed(v)
        x0 = torch.rand(v, 3, res, res, device=dev, generator=g, dtype=dtype) * 2 - 1
        probe = torch.randn(v, 8, res // 8, res // 8, device=dev, generator=g, dtype=dtype)
        grads = {}
        for name, enc in encs.items():
            def step() -> torch.Tensor:
                x = x0.detach()
                if name.endswith("_cl"):
                    x = x.contiguous(memory_format=torch.channels_last)
                x = x.requires_grad_(True)
                z = enc(x)
                z.backward(probe)
                return x.grad

            orig = torch.nn.grad.conv2d_input
            if name.endswith("_empty"):
                torch.nn.grad.conv2d_input = _conv2d_input_materialised
            for _ in range(3):
                step()
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            grads[name] = step()
            torch.cuda.synchronize()
            peak = torch.cuda.max_memory_allocated() - base
            times = []
            for _ in range(iters):
                a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                a.record()
                step()
                b.record()
                b.synchronize()
                times.append(a.elapsed_time(b))
            if v == profile_views and name in ("old", "new"):
                print(f"== profile, {v} views, {name}\n" + profile_table(enc, x0, probe), flush=True)
            torch.nn.grad.conv2d_input = orig
            out[f"{v}view_{name}"] = {"peak_mib": round(peak / MIB, 1), "median_ms": round(statistics.median(times), 3),
                                      "min_ms": round(min(times), 3), "iters": iters}
        ref = grads["old"].float()
        out[f"{v}view_grad_rel_diff"] = float((grads["new"].float() - ref).abs().max() / ref.abs().max())
        out[f"{v}view_empty_grad_rel_diff"] = float((grads["new_empty"].float() - ref).abs().max() / ref.abs().max())
        out[f"{v}view_cl_grad_rel_diff"] = float((grads["old_cl"].float() - ref).abs().max() / ref.abs().max())
        del grads, x0, probe
        torch.cuda.empty_cache()
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", required=True, help="JSON file to write")
    ap.add_argument("--res", type=int, default=512)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--profile-views", type=int, default=0, help="print the top CUDA kernels of old and new at this many views")
    args = ap.parse_args()
    t0 = time.time()
    x = torch.empty(1, 3, args.res, args.res, device="meta", dtype=torch.bfloat16, requires_grad=True)
    result: dict = {"resolution": args.res, "dtype": "bfloat16", "torch": torch.__version__,
                    "saved_mib_per_view": {name: round(saved_bytes(build(lean, "meta", torch.bfloat16), x) / MIB, 1)
                                           for name, lean in (("old", False), ("new", True))}}
    print("saved for backward per view (MiB):", result["saved_mib_per_view"])
    if torch.cuda.is_available():
        result["device"] = torch.cuda.get_device_name()
        result["cuda"] = cuda_rows(args.res, (1, 4), args.iters, args.profile_views)
        for k, v in result["cuda"].items():
            print(k, v)
    else:
        print("no CUDA: peak memory and timings skipped")
    result["wall_s"] = round(time.time() - t0, 1)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(result, f, indent=2)
    print("wrote", args.out)


if __name__ == "__main__":
    main()
