"""CUDA-graph replay of a no-grad network call, one graph per input signature.

Why: at the method's batch sizes (CFG batch 2 at a 64² latent) the SD1.5 UNet and ControlNet are
launch-bound on an H100: the GPU finishes each of the ~1,500 small kernels of a forward faster than
Python can launch the next one. A CUDA graph records the kernels of one call once and replays them
with a single launch, so the step costs the GPU's time instead of Python's. Weights do not move and
shapes repeat every step in ISD, inpainting and refinement, which is what graphs need.

How: ``GraphedCall.call(fn, args, kwargs)`` flattens the arguments (nested dicts/lists/tuples, as
ComfyUI passes ``transformer_options`` and ControlNet residuals). The signature of a call is the
tree structure, each tensor's shape/dtype/device, the value of each plain Python leaf
(int/float/bool/str/None), the identity of every other object leaf (patch objects, modules) and the
storage addresses of the watched modules' weights (a LoRA re-patch or an offload/reload replaces
them, and a graph must never read freed weights). The first ``warmup`` calls of a signature run
eagerly (lazy caches and cuBLAS/cuDNN initialise there), the next one captures: its tensor inputs
are copied into static buffers that the graph reads, and later calls copy their inputs in and replay.

What is not graphed (runs eagerly): calls with autograd on, CPU tensors, calls made while another
capture runs, and signatures whose capture failed (logged once). At most ``max_graphs`` graphs are
kept; a new signature past that drops the least recently replayed one.
Objects leaves whose *behaviour* changes between calls without changing identity would be frozen
in the graph: callers pass only networks whose non-tensor inputs are fixed per call site.

``uuid.UUID`` leaves (ComfyUI gives every conditioning a fresh uuid per sampling call; they only
match hooks to conds) are not part of the signature.
"""
from __future__ import annotations

import contextlib
import functools
import logging
import uuid
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

import torch
from torch.utils import _pytree as pytree

log = logging.getLogger("IDSculpt")

_PLAIN = (int, float, bool, str, type(None))

_WARMUP_STREAMS: dict = {}


def _cuda_index(device: Optional[torch.device]) -> int:
    """The ordinal of a CUDA device given as None (the current one), "cuda", "cuda:1" or a torch.device."""
    index = torch.device(device).index if device is not None else None
    return index if index is not None else torch.cuda.current_device()


def warmup_stream(device: Optional[torch.device] = None) -> "torch.cuda.Stream":
    """The one side stream per device on which every capture's eager warm-up runs.

    PyTorch keeps a cuBLAS workspace (tens of MiB, from the caching allocator, never freed) for each
    stream a matmul has run on. ``torch.cuda.Stream()`` hands out the next of a pool of 32 streams, so
    a fresh stream per capture added a workspace per capture: on the H100 the allocated memory grew
    by ~200 MiB per workflow run with no tensor alive (bench_pipeline's census), up to 32 workspaces.
    """
    index = _cuda_index(device)
    stream = _WARMUP_STREAMS.get(index)
    if stream is None:
        stream = _WARMUP_STREAMS[index] = torch.cuda.Stream(device=index)
    return stream


@contextlib.contextmanager
def no_host_syncs() -> Iterator[None]:
    """Make ops that wait for the GPU (``.item()``, ``.tolist()``, ``nonzero``, blocking copies) raise.

    Used around the eager warm-up that precedes every capture: such an op inside a capture does not
    fail cleanly under the cudaMallocAsync allocator (ComfyUI's default) — it aborts the whole process
    (measured on an H100: ``tests/test_cuda_graph.py::test_capture_failure_falls_back_to_eager`` died
    with SIGABRT). Found in the warm-up, the call just stays eager.
    """
    prev = torch.cuda.get_sync_debug_mode()
    torch.cuda.set_sync_debug_mode("error")
    try:
        yield
    finally:
        torch.cuda.set_sync_debug_mode(prev)


@functools.lru_cache(maxsize=None)
def _driver():
    """The CUDA driver library (ctypes) with the graph-memory trim, or None where there is none."""
    import ctypes
    import sys

    for name in (("nvcuda.dll",) if sys.platform == "win32" else ("libcuda.so.1", "libcuda.so")):
        try:
            lib = ctypes.CDLL(name)
        except OSError:
            continue
        if hasattr(lib, "cuDeviceGraphMemTrim") and hasattr(lib, "cuDeviceGet"):
            return lib
    return None


def release_graph_memory(device: Optional[torch.device] = None) -> bool:
    """Hand CUDA's graph memory pool back to the driver (``cuDeviceGraphMemTrim``); True when it ran.

    Under the cudaMallocAsync allocator (ComfyUI's default) the memory a captured graph allocates
    comes from CUDA's own per-device graph memory pool, which keeps it reserved after the graph and
    its tensors are gone: on an H100, ~3.1 GiB of device memory stayed in use after a run with
    captured stage-1 steps and ``/free``. PyTorch does not expose the trim, so it is called through
    the driver API. Call it after the graphs and the tensors they allocated are released; it waits
    for the device first (the trim frees only blocks no pending graph launch uses).
    """
    if not torch.cuda.is_available():
        return False
    lib = _driver()
    if lib is None:
        return False
    import ctypes

    index = _cuda_index(device)
    torch.cuda.synchronize(index)
    handle = ctypes.c_int()
    if lib.cuDeviceGet(ctypes.byref(handle), ctypes.c_int(index)) != 0:
        return False
    return lib.cuDeviceGraphMemTrim(handle) == 0


@dataclass
class _Graph:
    graph: torch.cuda.CUDAGraph
    static: list  # flattened inputs; tensors are the buffers the graph reads
    tensor_index: list[int]
    output: Any
    keep_alive: list = field(default_factory=list)  # object leaves whose id() is in the key


def _leaf_signature(leaf: Any) -> tuple:
    if isinstance(leaf, torch.Tensor):
        return ("T", tuple(leaf.shape), leaf.dtype, leaf.device, leaf.requires_grad)
    if isinstance(leaf, _PLAIN):
        return ("V", type(leaf), leaf)
    if isinstance(leaf, uuid.UUID):
        return ("U",)
    return ("O", id(leaf))


def _clone_output(out: Any) -> Any:
    return pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, out)


class GraphedCall:
    """Replays CUDA graphs of ``fn(*args, **kwargs)`` calls (see the module docstring).

    ``modules``: the networks whose weights the call reads (their storage addresses join the
    signature). ``name`` appears in log lines. ``enabled=False`` makes every call eager.
    """

    def __init__(self, name: str, modules: Iterable[torch.nn.Module] = (), warmup: int = 2, max_graphs: int = 4,
                 enabled: bool = True) -> None:
        self.name = name
        self.modules = list(modules)
        self.warmup = max(int(warmup), 1)
        self.max_graphs = int(max_graphs)
        self.enabled = bool(enabled)
        self._graphs: "OrderedDict[tuple, _Graph]" = OrderedDict()
        self._seen: dict[tuple, int] = {}
        self._failed: set = set()
        self.replays = 0
        self.captures = 0
        self.eager_calls = 0
        # diagnostics (benchmarks): also run every replayed call eagerly and keep the largest difference
        self.verify = False
        self.max_verify_diff = 0.0
        # the parameter/buffer dicts of every submodule, gathered once: walking a UNet's ~1,000 modules
        # with .parameters() at every call cost ~8 ms of host time per call (ISD predictor on an H100:
        # 37.6 -> 21.3 ms for its UNet + ControlNet pair, bench/probes/ab_weights_key.sh)
        self._weight_slots: Optional[list[dict]] = None

    # -- public ---------------------------------------------------------------------------------
    def call(self, fn: Callable, args: tuple = (), kwargs: Optional[dict] = None) -> Any:
        """``fn(*args, **kwargs)``, replayed from a CUDA graph when the signature allows."""
        kwargs = {} if kwargs is None else kwargs
        if not self.enabled or torch.is_grad_enabled():
            return self._eager(fn, args, kwargs)
        leaves, spec = pytree.tree_flatten((args, kwargs))
        tensor_index = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor)]
        if not tensor_index or any(leaves[i].device.type != "cuda" or leaves[i].requires_grad for i in tensor_index):
            return self._eager(fn, args, kwargs)
        if torch.cuda.is_current_stream_capturing():  # inside someone else's capture
            return self._eager(fn, args, kwargs)
        key = self._key(leaves, spec)
        entry = self._graphs.get(key)
        if entry is None:
            if key in self._failed:
                return self._eager(fn, args, kwargs)
            seen = self._seen[key] = self._seen.get(key, 0) + 1
            if seen <= self.warmup:
                return self._eager(fn, args, kwargs)
            if len(self._graphs) >= self.max_graphs:  # e.g. weights re-patched: the oldest graph is stale
                self._graphs.popitem(last=False)
            entry = self._capture(fn, key, leaves, spec, tensor_index)
            if entry is None:
                return self._eager(fn, args, kwargs)
        else:
            self._graphs.move_to_end(key)
        for i in entry.tensor_index:
            src, dst = leaves[i], entry.static[i]
            if src.data_ptr() != dst.data_ptr():
                dst.copy_(src)
        entry.graph.replay()
        self.replays += 1
        out = _clone_output(entry.output)
        if self.verify:
            ref_leaves = pytree.tree_leaves(fn(*args, **kwargs))
            for a, b in zip(pytree.tree_leaves(out), ref_leaves):
                if isinstance(a, torch.Tensor):
                    self.max_verify_diff = max(self.max_verify_diff, float((a.float() - b.float()).abs().max()))
        return out

    def reset(self) -> None:
        """Drop every graph and its memory pool (call when the networks' run is over)."""
        self._graphs.clear()
        self._seen.clear()
        self._failed.clear()

    # -- internals ------------------------------------------------------------------------------
    def _eager(self, fn: Callable, args: tuple, kwargs: dict) -> Any:
        self.eager_calls += 1
        return fn(*args, **kwargs)

    def _weights_key(self) -> tuple:
        # The dicts, not the tensors, are cached: ComfyUI's weight patching (LoRA) and offloading put
        # new tensors into these same dicts, so their addresses still reach the key.
        if self._weight_slots is None:
            self._weight_slots = [d for m in self.modules for sub in m.modules() for d in (sub._parameters, sub._buffers)]
        return tuple(t.data_ptr() for d in self._weight_slots for t in d.values() if t is not None)

    def _key(self, leaves: list, spec) -> tuple:
        try:
            hash(spec)
            spec_key = spec
        except TypeError:  # older pytree specs are unhashable: their text form is unique per structure
            spec_key = str(spec)
        return (spec_key, tuple(_leaf_signature(leaf) for leaf in leaves), self._weights_key())

    def _capture(self, fn: Callable, key: tuple, leaves: list, spec, tensor_index: list[int]) -> Optional[_Graph]:
        # ordinary tensors even inside inference mode, so later calls outside it may copy into them
        with torch.inference_mode(False):
            static = [leaf.clone() if isinstance(leaf, torch.Tensor) else leaf for leaf in leaves]
        s_args, s_kwargs = pytree.tree_unflatten(static, spec)
        graph = torch.cuda.CUDAGraph()
        try:
            # one eager run on a side stream first, as PyTorch's capture recipe asks
            side = warmup_stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), no_host_syncs():
                fn(*s_args, **s_kwargs)
            torch.cuda.current_stream().wait_stream(side)
            s_args, s_kwargs = pytree.tree_unflatten(static, spec)
            with torch.cuda.graph(graph):
                output = fn(*s_args, **s_kwargs)
        except Exception as e:  # an op that syncs with the host or allocates pageable copies: stay eager
            self._failed.add(key)
            log.warning("IDSculpt: %s runs without CUDA graphs for this input shape (capture failed: %s: %s)",
                        self.name, type(e).__name__, str(e).splitlines()[0] if str(e) else "")
            return None
        keep = [leaf for leaf in leaves if not isinstance(leaf, (torch.Tensor, uuid.UUID) + _PLAIN)]
        entry = _Graph(graph, static, tensor_index, output, keep)
        self._graphs[key] = entry
        self.captures += 1
        log.info("IDSculpt: %s captured a CUDA graph (%d tensor inputs)", self.name, len(tensor_index))
        return entry
