"""GPU memory between the pipeline's stages: offloading, the low-VRAM mode, and per-stage peaks.

ComfyUI keeps every model it loaded on the GPU until memory runs short. On a big card a whole
ID-Sculpt run therefore ends up holding the reference-geometry checkpoints, the ISD model, the
ControlNets and the texture checkpoint at once, and the run's peak is their sum plus the stage's
work. Each heavy IDSculpt node runs inside ``stage()``, which first asks ComfyUI's model management
to unload the models other nodes left loaded (``free_memory``; they go back to RAM and reload in
well under a second when needed), so the peak is one stage's worth. ``vram_mode``:

- ``offload`` (default): unload the other stages' models first; CUDA graphs allowed.
- ``keep_loaded``: leave ComfyUI's cache as it is (fastest re-runs on a big card).
- ``low_vram``: ``offload`` plus the stage's own memory-saving settings (one view per ISD step,
  no CUDA graph memory pools, ...), for cards with ~8 GB. Combine with ComfyUI's ``--lowvram``
  on smaller cards still, which loads models partly.

The pack's diagnostic switches are all read here, from ComfyUI's environment (core reads none):
``IDSCULPT_VRAM_CAP_GIB``, ``IDSCULPT_VRAM_LOG``, ``IDSCULPT_PROFILE_DIR`` (below), ``IDSCULPT_PROFILE_SCULPT``
(DMTet Sculpt profiles ten stage-B steps into that folder) and ``IDSCULPT_FUSED_WALK=0`` (the torch renderer's
silhouette walk without its Triton kernel).

``IDSCULPT_VRAM_CAP_GIB=8`` in ComfyUI's environment caps PyTorch's allocations in that process
(``torch.cuda.set_per_process_memory_fraction``) to check that a run fits a smaller card. The cap is set
when the host loads the pack (nodes/__init__.py's load hook), not at import.

Every stage logs its peak (``torch.cuda.max_memory_allocated`` from the stage's start) and, when
the ``IDSCULPT_VRAM_LOG`` environment variable names a file, appends a JSON line there (used by
bench/bench_pipeline.py). Peaks count PyTorch's allocations only (not onnxruntime's, e.g. InsightFace).

Newer ComfyUI (Dynamic VRAM, the default on NVIDIA since early 2026) keeps dynamically loaded
weights in its own device pool, outside PyTorch's allocator: the peaks and the cap above then leave
those weights out (the record's ``dynamic_vram`` says so), and ``offload`` leaves dynamic models to
ComfyUI, which streams them under pressure itself (unloading them would only cost reloads); static
models are still unloaded. Each record's ``not_counted`` names what its peaks leave out: the
dynamically loaded models (by class) and onnxruntime's own allocations when it is loaded.

Host memory accounting (``module_tensors``): newer ComfyUI sizes cached node outputs for its
RAM-pressure cache from their tensors and an optional ``_comfy_cache_tensors()`` hook, and pins the
models of an output's ``get_models()`` as in use by the running prompt; the pack's heavy outputs
(ISD guidance, PanoHead model, ID adapter) implement both with the helpers here.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import time
from typing import Iterator

import torch
from comfy_api.latest import io

import comfy.model_management as mm

log = logging.getLogger("IDSculpt")

VRAM_MODES = ["offload", "keep_loaded", "low_vram"]
LOG_ENV = "IDSCULPT_VRAM_LOG"
PROFILE_ENV = "IDSCULPT_PROFILE_DIR"
CAP_ENV = "IDSCULPT_VRAM_CAP_GIB"
SCULPT_PROFILE_ENV = "IDSCULPT_PROFILE_SCULPT"
FUSED_WALK_ENV = "IDSCULPT_FUSED_WALK"


def sculpt_profile_folder() -> str | None:
    """IDSCULPT_PROFILE_SCULPT=<folder>: DMTet Sculpt profiles ten stage-B steps into it (core/speed/profiling.py)."""
    return os.environ.get(SCULPT_PROFILE_ENV) or None


def apply_render_switches() -> None:
    """IDSCULPT_FUSED_WALK=0: the torch renderer's silhouette walk as torch ops instead of the Triton kernel (for
    before/after benchmarks in one process tree). Read at every stage, so a server's environment decides."""
    from ...core.render import torch_backend

    torch_backend.FUSED_WALK = os.environ.get(FUSED_WALK_ENV, "1") != "0"


def host_dynamic_vram() -> bool:
    """True when the host runs Dynamic VRAM (newer ComfyUI's ``comfy.memory_management.aimdo_enabled``;
    0.3.64 has no such flag)."""
    return bool(getattr(sys.modules.get("comfy.memory_management"), "aimdo_enabled", False))


def _is_dynamic(patcher) -> bool:
    fn = getattr(patcher, "is_dynamic", None)
    return bool(fn()) if callable(fn) else False


def _model_name(loaded) -> str:
    """A loaded model's class name (ComfyUI's LoadedModel -> patcher -> model), for the record."""
    patcher = getattr(loaded, "model", loaded)
    return type(getattr(patcher, "model", patcher)).__name__


def not_counted() -> list[str]:
    """What PyTorch's allocator statistics (the stage peaks, the cap) cannot see, named: the weights of
    dynamically loaded models (Dynamic VRAM keeps them in its own device pool) and onnxruntime's
    allocations (InsightFace) when onnxruntime is loaded. Empty when the peaks see everything."""
    out = []
    dynamic = [_model_name(lm) for lm in list(getattr(mm, "current_loaded_models", []))
               if _is_dynamic(getattr(lm, "model", None))]
    if dynamic or host_dynamic_vram():
        out.append("Dynamic VRAM weights" + (f" of {', '.join(dynamic)}" if dynamic else ""))
    if "onnxruntime" in sys.modules:
        out.append("onnxruntime allocations (InsightFace)")
    return out


def module_tensors(*modules) -> list[torch.Tensor]:
    """Every parameter and buffer of the given modules (None skipped), each once: the tensors an output
    holding them reports to ComfyUI's RAM-pressure cache through ``_comfy_cache_tensors()`` (the cache
    counts the CPU ones, once per storage)."""
    out, seen = [], set()
    for m in modules:
        if m is None:
            continue
        for t in (*m.parameters(), *m.buffers()):
            if id(t) not in seen:
                seen.add(id(t))
                out.append(t)
    return out


def unique_models(models) -> list:
    """``models`` without None and repeats (by identity), in order: a ``get_models()`` answer."""
    out, seen = [], set()
    for m in models:
        if m is not None and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def offload_other_models(dev) -> dict:
    """Unload the models other nodes left on ``dev``, except dynamically loaded ones (ComfyUI streams
    those under pressure itself; a full unload would only cost reloads). Returns the record's counts."""
    keep = [lm for lm in list(getattr(mm, "current_loaded_models", [])) if _is_dynamic(getattr(lm, "model", None))]
    unloaded = mm.free_memory(1e30, dev, keep_loaded=keep)
    out = {"unloaded_models": len(unloaded or [])}
    if keep:
        out["kept_dynamic_models"] = len(keep)
    return out


def apply_vram_cap() -> None:
    """Cap this process's PyTorch CUDA allocations at ``$IDSCULPT_VRAM_CAP_GIB`` (no-op when unset).
    Under Dynamic VRAM the dynamically loaded weights sit outside PyTorch's allocator: not capped."""
    cap = os.environ.get(CAP_ENV)
    if not cap or not torch.cuda.is_available():
        return
    try:
        gib = float(cap)
    except ValueError:
        log.warning("IDSculpt: %s=%r is not a number of GiB; no cap", CAP_ENV, cap)
        return
    dev = mm.get_torch_device()
    total = torch.cuda.get_device_properties(dev).total_memory
    torch.cuda.set_per_process_memory_fraction(min(1.0, gib * 2**30 / total), dev)
    log.info("IDSculpt: PyTorch allocations capped at %.1f GiB (%s)%s", gib, CAP_ENV,
             "; Dynamic VRAM is on: the weights it loads are outside PyTorch's allocator and this cap"
             if host_dynamic_vram() else "")


def vram_mode_input() -> io.Combo.Input:
    return io.Combo.Input("vram_mode", options=VRAM_MODES, default="offload", optional=True,
                          tooltip="offload: unload models other nodes left on the GPU before this stage, so the run's peak "
                                  "is one stage's worth (default). keep_loaded: leave them (fastest re-runs on big cards). "
                                  "low_vram: offload + this stage's memory-saving settings, for ~8 GB cards.")


def check_mode(mode: str) -> str:
    if mode not in VRAM_MODES:
        raise ValueError(f"vram_mode must be one of {VRAM_MODES}, got {mode!r}")
    return mode


def graphs_allowed(cuda_graphs: bool, mode: str) -> bool:
    """The node's ``cuda_graphs`` switch under ``vram_mode``: low_vram drops the graphs' memory pools."""
    return bool(cuda_graphs) and check_mode(mode) != "low_vram"


def _mib(n: int) -> float:
    return round(n / 2**20, 1)


def _start_profile():
    """With IDSCULPT_PROFILE_DIR set, a cProfile of the stage (host time: where a launch-bound GPU stage
    spends its Python time, which CUDA timings cannot attribute). A diagnostic for benchmarks."""
    if not os.environ.get(PROFILE_ENV):
        return None
    import cProfile

    prof = cProfile.Profile()
    prof.enable()
    return prof


def _write_profile(prof, name: str) -> None:
    import io
    import pstats

    prof.disable()
    folder = os.environ[PROFILE_ENV]
    try:
        os.makedirs(folder, exist_ok=True)
        base = os.path.join(folder, f"{name.replace(' ', '_')}_{time.strftime('%H%M%S')}")
        prof.dump_stats(base + ".prof")
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(70)
        with open(base + ".txt", "w", encoding="utf-8") as fh:
            fh.write(buf.getvalue())
    except OSError as e:
        log.warning("IDSculpt: cannot write the profile to %s=%s: %s", PROFILE_ENV, folder, e)


@contextlib.contextmanager
def stage(name: str, mode: str = "offload") -> Iterator[dict]:
    """Run a heavy stage: offload other models first (unless ``keep_loaded``), record the peak."""
    check_mode(mode)
    apply_render_switches()
    dev = mm.get_torch_device()
    cuda = getattr(dev, "type", "") == "cuda"
    record: dict = {"stage": name, "vram_mode": mode, "dynamic_vram": host_dynamic_vram()}
    if cuda:
        record["peak_before_mib"] = _mib(torch.cuda.max_memory_allocated(dev))  # since the previous stage (other nodes)
        if mode != "keep_loaded":
            record.update(offload_other_models(dev))
        torch.cuda.reset_peak_memory_stats(dev)
        record["start_mib"] = _mib(torch.cuda.memory_allocated(dev))
    prof = _start_profile()
    t0 = time.perf_counter()
    try:
        yield record
    finally:
        record["seconds"] = round(time.perf_counter() - t0, 2)
        if prof is not None:
            _write_profile(prof, name)
        if cuda:
            record["peak_mib"] = _mib(torch.cuda.max_memory_allocated(dev))
            record["end_mib"] = _mib(torch.cuda.memory_allocated(dev))
            unseen = not_counted()
            if unseen:
                record["not_counted"] = unseen
            log.info("IDSculpt %s: peak VRAM %.0f MiB (%s, %.1f s)%s", name, record["peak_mib"], mode, record["seconds"],
                     f"; PyTorch allocations only, not counted: {'; '.join(unseen)}" if unseen else "")
            torch.cuda.reset_peak_memory_stats(dev)  # the next window starts here
        path = os.environ.get(LOG_ENV)
        if path:
            try:
                with open(path, "a", encoding="utf-8") as fh:
                    fh.write(json.dumps(record) + "\n")
            except OSError as e:
                log.warning("IDSculpt: cannot append to %s=%s: %s", LOG_ENV, path, e)



@contextlib.contextmanager
def optimisation_stage(name: str, mode: str = "offload") -> Iterator[dict]:
    """``stage`` for a stage that optimises: outside ComfyUI's inference mode, with gradients on. The one
    context every training node runs in (its inputs enter through ``nodes.common.trainable``)."""
    with stage(name, mode) as record, torch.inference_mode(False), torch.enable_grad():
        yield record
