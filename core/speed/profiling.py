"""Optional torch.profiler capture of a few sculpt steps inside a real run (a diagnostic, off by default).

Give ``SculptConfig.profile_folder`` a folder (the DMTet Sculpt node takes it from the diagnostic switch
``IDSCULPT_PROFILE_SCULPT=<folder>``, read in nodes/engines/vram.py: core reads no environment) and the sculpt
profiles ``PROFILE_STEPS`` steps of stage B, starting ``PROFILE_AFTER`` steps into it (past the CUDA
graph captures and the allocator's warm-up), then writes ``<folder>/sculpt_steps_profile.txt``: for
each step kind, the wall time, the GPU kernel time, the number of kernel and graph launches and of host
syncs per step, torch.profiler's op tables, and the Python stacks of every host sync and host copy.
Benchmarks outside the server cannot show this: the
ISD step's cost in a server run includes ComfyUI's sampling code, the landmark hint and the render.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import torch

PROFILE_AFTER = 40  # stage-B steps before the profiled ones
PROFILE_STEPS = 10  # alternating reference / ISD steps

_LAUNCH = ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernelEx")
_SYNC = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpy")  # (cudaMemcpy: the blocking one)


def profile_steps(step: Callable[[], dict], n: int, folder: str, device: torch.device) -> list[dict]:
    """Run ``step`` ``n`` times, each under its own torch.profiler, write the report into ``folder``,
    return the step records."""
    from torch._C._profiler import _ExperimentalConfig
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    recs, per_kind = [], {}
    for _ in range(n):
        # verbose: without it recent torch versions record empty Python stacks
        with profile(activities=acts, with_stack=True, experimental_config=_ExperimentalConfig(verbose=True)) as prof:
            t0 = time.perf_counter()
            rec = step()
            wall = time.perf_counter() - t0
        recs.append(rec)
        per_kind.setdefault(rec["kind"], []).append((1000 * wall, prof.key_averages(), prof.key_averages(group_by_stack_n=8)))
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "sculpt_steps_profile.txt"), "w") as fh:
        fh.write(_report(per_kind))
    return recs


def _counts(ka) -> dict:
    gpu_us = sum(e.self_device_time_total for e in ka if e.device_type.name == "CUDA")
    return dict(gpu_ms=gpu_us / 1000, launches=sum(e.count for e in ka if e.key in _LAUNCH),
                graphs=sum(e.count for e in ka if e.key in ("cudaGraphLaunch", "cuGraphLaunch")),
                syncs=sum(e.count for e in ka if e.key in _SYNC))


def _report(per_kind: dict[str, list]) -> str:
    lines = ["# sculpt steps inside a real run (core/speed/profiling.py; each step under its own profiler)", ""]
    for kind, steps in per_kind.items():
        c = [_counts(ka) for _, ka, _ in steps]
        mean = {k: sum(x[k] for x in c) / len(c) for k in c[0]}
        lines.append(f"{kind}: {len(steps)} steps, wall ms {', '.join(f'{w:.1f}' for w, _, _ in steps)}; per step: "
                     f"GPU kernel time {mean['gpu_ms']:.1f} ms, kernel launches {mean['launches']:.0f}, "
                     f"graph launches {mean['graphs']:.1f}, host syncs {mean['syncs']:.1f}")
    for kind, steps in per_kind.items():
        _, ka, by_stack = steps[-1]
        on_gpu = _counts(ka)["gpu_ms"] > 0
        lines += ["", f"===== last {kind} step ====="]
        if on_gpu:
            lines.append(ka.table(sort_by="self_cuda_time_total", row_limit=30, max_name_column_width=70))
        lines.append(ka.table(sort_by="self_cpu_time_total", row_limit=30, max_name_column_width=70))
        lines += ["", f"----- who waits for the GPU or copies (last {kind} step; count, CPU ms, our/ComfyUI frames)"]
        lines += _stacks(by_stack)
    return "\n".join(lines)


_WATCH = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize", "cudaMemcpyAsync", "cudaMemcpy",
          "aten::_local_scalar_dense", "aten::nonzero", "aten::max", "aten::min", "aten::_upsample_nearest_exact2d")


def _stacks(by_stack, frames: int = 4) -> list[str]:
    """The watched calls grouped by where they come from (frames outside torch itself, innermost first)."""
    rows = sorted((e for e in by_stack if e.key in _WATCH), key=lambda e: -e.cpu_time_total)
    out = []
    for e in rows[:40]:
        ours = [f for f in (e.stack or []) if not (f.startswith("torch/") or "/torch/" in f or f.startswith("<built-in"))][:frames]
        out.append(f"{e.key} x{e.count} {e.cpu_time_total / 1000:.2f} ms  <- " + " <- ".join(ours))
    return out
