"""Timing, peak-memory, device and JSON helpers shared by the scripts in bench/.

One definition of how a benchmark measures, so every stage's numbers mean the same thing:
warm-up calls first (CUDA kernels compiled, caches filled, allocator settled), then on CUDA one pair
of CUDA events around each call with a synchronize after it (GPU time of that call, not the host's
launch time), on CPU ``time.perf_counter``; the median over the calls is reported because single
calls are disturbed by other processes. Peak memory is ``torch.cuda.max_memory_allocated`` since
the reset at the start of the timed calls.

    import _timing                      # bench/ is the script's directory, so this import works
    stats = _timing.timed(dev, step, warmup, iters)   # {"median_ms", "min_ms", "iters", "peak_mem_mib"}
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from typing import Any, Callable, Optional

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(device: torch.device, fn: Callable[[], Any], warmup: int, iters: int,
            reset_peak: bool = True) -> tuple[list[float], Optional[int]]:
    """Milliseconds of each of ``iters`` timed calls of ``fn()`` after ``warmup`` untimed ones, and
    (CUDA only, else None) ``torch.cuda.max_memory_allocated`` in bytes.

    ``reset_peak``: reset the peak-memory counter before the timed calls (False: the peak also
    covers whatever ran before, e.g. a whole configuration's set-up).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.synchronize()
        if reset_peak:
            torch.cuda.reset_peak_memory_stats(device)
        for _ in range(iters):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            torch.cuda.synchronize()
            times.append(a.elapsed_time(b))
        return times, torch.cuda.max_memory_allocated(device)
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000)
    return times, None


def timed(device: torch.device, fn: Callable[[], Any], warmup: int, iters: int) -> dict:
    """Median / min milliseconds of ``fn()`` over ``iters`` runs and peak memory in MiB (None on CPU)."""
    times, peak = measure(device, fn, warmup, iters)
    return {"median_ms": round(statistics.median(times), 3), "min_ms": round(min(times), 3), "iters": iters,
            "peak_mem_mib": mib(peak)}


def wall(device: torch.device, fn: Callable[[], Any]) -> tuple[float, Optional[float], Any]:
    """One call of ``fn()`` by the host clock (synchronised before and after): (seconds, peak MiB or
    None, fn's result). For long multi-part runs where per-call CUDA events say too little."""
    sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    out = fn()
    sync(device)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    return time.perf_counter() - t0, peak, out


def mib(nbytes: Optional[float], ndigits: int = 1) -> Optional[float]:
    """Bytes -> MiB rounded (None stays None)."""
    return None if nbytes is None else round(nbytes / 2**20, ndigits)


def device_name(device: torch.device) -> str:
    """The card's name on CUDA, else the CPU's (what the result files call ``device``)."""
    return torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"


def require_cuda(script: str) -> torch.device:
    """The CUDA device, or exit with the hint to use ``--smoke`` for a CPU check."""
    if not torch.cuda.is_available():
        sys.exit(f"{script} needs CUDA (use --smoke for a CPU check)")
    return torch.device("cuda")


def parser(description: Optional[str], smoke_help: str, *, res: Optional[int] = 512, iters: int = 20, warmup: int = 5,
           comfy: bool = False, out_help: str = "write the results JSON here", **kw: Any) -> argparse.ArgumentParser:
    """The options every stage benchmark takes: --out, --smoke, [--comfy], [--res], --iters, --warmup."""
    ap = argparse.ArgumentParser(description=description, **kw)
    ap.add_argument("--out", default=None, help=out_help)
    ap.add_argument("--smoke", action="store_true", help=smoke_help)
    if comfy:
        ap.add_argument("--comfy", default=None, help="ComfyUI checkout (default: $COMFYUI_PATH or .comfy/ComfyUI)")
    if res is not None:
        ap.add_argument("--res", type=int, default=res)
    ap.add_argument("--iters", type=int, default=iters)
    ap.add_argument("--warmup", type=int, default=warmup)
    return ap


def find_comfyui(arg: Optional[str], script: str) -> str:
    """Point $COMFYUI_PATH at the ComfyUI checkout: ``--comfy``, else $COMFYUI_PATH, else
    <repo>/.comfy/ComfyUI; exit with what to pass when none is there."""
    for cand in (arg, os.environ.get("COMFYUI_PATH"), os.path.join(ROOT, ".comfy", "ComfyUI")):
        if cand and os.path.isfile(os.path.join(cand, "comfy", "model_patcher.py")):
            os.environ["COMFYUI_PATH"] = os.path.abspath(cand)
            return os.environ["COMFYUI_PATH"]
    sys.exit(f"{script} needs ComfyUI: pass --comfy PATH or set COMFYUI_PATH")


def write_json(result: dict, out: Optional[str], indent: int = 2) -> None:
    """Write ``result`` to ``out`` (its folder created) when a path is given."""
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as fh:
            json.dump(result, fh, indent=indent)


def comfy_version(path: str) -> str:
    """ComfyUI's version (its comfyui_version.py), recorded instead of the checkout's path on this machine."""
    try:
        with open(os.path.join(path, "comfyui_version.py"), encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("__version__"):
                    return line.split("=", 1)[1].strip().strip("\"'")
    except OSError:
        pass
    return "unknown"


def comfy_header(stage: str, device: torch.device, unet_dtype: Any, vae: Any) -> dict:
    """The leading keys of the ComfyUI-backed benchmarks' JSON (ISD, texture): what ran, on what."""
    import comfy.ldm.modules.attention as attention  # the caller has ComfyUI on sys.path already

    return {
        "stage": stage,
        "device": device_name(device),
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "comfyui": comfy_version(os.environ["COMFYUI_PATH"]),
        "attention": getattr(attention.optimized_attention, "__name__", "?"),
        "unet_dtype": str(unet_dtype),
        "vae_dtype": str(vae.vae_dtype),
    }
