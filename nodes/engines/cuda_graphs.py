"""CUDA graphs for ComfyUI's UNet and ControlNet during the pack's many small diffusion calls.

ISD, progressive inpainting and texture refinement call an SD1.5 UNet (+ ControlNet) thousands of
times at CFG batch 2, where eager PyTorch is bound by Python's kernel launches (docs/PERFORMANCE.md).
``DiffusionGraphs`` replays those calls from CUDA graphs (core/speed/cuda_graph.py) without changing what
runs: the graph is recorded from ComfyUI's own forward, with every patch, LoRA and attention
replacement of the MODEL in it.

- UNet: a ``DIFFUSION_MODEL`` wrapper (ComfyUI's wrapper mechanism, what TorchCompileModel uses
  for APPLY_MODEL) added to a clone's options, so the user's MODEL is untouched.
- ControlNet: its ``control_model.forward`` is replaced on the instance while the run lasts (every
  ``copy()`` of a ControlNet shares that module) and restored afterwards.

Graphs are used only where replaying a recording is safe (``graphs_off_reason``; one log line says
why they are off):

- the MODEL runs on a CUDA device;
- the host was not started with ``--disable-cuda-graphs`` (newer ComfyUI);
- neither the MODEL nor the ControlNet is loaded dynamically (newer ComfyUI's Dynamic VRAM, the
  default on NVIDIA since early 2026: weights stay in host memory and are cast per call into
  buffers the host refills, so a graph would replay stale weights);
- the host's model compiler is not recording this device (``comfy.model_prefetch.malloc_graph_enabled``:
  it captures its own per-block graphs and tracks every allocation; a second recorder conflicts);
- per call: every parameter of the network is on the GPU and ComfyUI did not load it partly
  (low-VRAM loading streams weights from host memory inside the forward).

Newer hosts bring the graphs back with ``--highvram``, ``--gpu-only`` or ``--disable-dynamic-vram``
(docs/COMFYUI_TESTING.md). Every host switch is looked up with ``getattr``, so 0.3.64 works unchanged.
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import sys
from typing import Iterator, Optional

import torch
from comfy_api.latest import io

import comfy.patcher_extension

from ...core.speed.cuda_graph import GraphedCall

log = logging.getLogger("IDSculpt")

WRAPPER_KEY = "idsculpt_cuda_graphs"
#: the launch flags that give a newer ComfyUI static (fully loaded) models again
STATIC_LOADING_FLAGS = "--highvram, --gpu-only or --disable-dynamic-vram"


def _cuda_available() -> bool:
    return torch.cuda.is_available()


def _is_dynamic(patcher) -> bool:
    """ModelPatcher.is_dynamic() where the host has it (newer ComfyUI); False on 0.3.64."""
    fn = getattr(patcher, "is_dynamic", None)
    return bool(fn()) if callable(fn) else False


def _host_args():
    mod = sys.modules.get("comfy.cli_args")
    return getattr(mod, "args", None)


def _host_compiler_active(device) -> bool:
    """The host's model compiler records allocations on ``device`` (newer ComfyUI; absent on 0.3.64)."""
    mod = sys.modules.get("comfy.model_prefetch")
    if mod is None:
        try:
            mod = importlib.import_module("comfy.model_prefetch")
        except ImportError:
            return False
    fn = getattr(mod, "malloc_graph_enabled", None)
    try:
        return bool(fn(device)) if callable(fn) else False
    except Exception as exc:  # a host-side failure here must not stop the run: stay eager
        log.debug("IDSculpt: comfy.model_prefetch.malloc_graph_enabled failed (%s); treating the compiler as active", exc)
        return True


def graphs_off_reason(model, control_net=None) -> Optional[str]:
    """Why CUDA graphs must not be used for ``model`` (+ ``control_net``), or None when they may."""
    dev = getattr(model, "load_device", None)
    if not _cuda_available() or getattr(dev, "type", None) != "cuda":
        return f"the MODEL runs on {dev}, not a CUDA device"
    if getattr(_host_args(), "disable_cuda_graphs", False):
        return "ComfyUI was started with --disable-cuda-graphs"
    if _is_dynamic(model):
        return (f"ComfyUI loads the MODEL dynamically (Dynamic VRAM: weights stay in host memory and are cast per "
                f"call); start ComfyUI with {STATIC_LOADING_FLAGS} for graphs")
    cn_patcher = getattr(control_net, "control_model_wrapped", None)
    if _is_dynamic(cn_patcher):
        return (f"ComfyUI loads the ControlNet dynamically (Dynamic VRAM); start ComfyUI with {STATIC_LOADING_FLAGS} "
                "for graphs")
    if _host_compiler_active(dev):
        return ("ComfyUI's model compiler records this device's allocations and captures its own CUDA graphs; "
                f"start ComfyUI with {STATIC_LOADING_FLAGS} (or --disable-comfy-compiler with static loading) for the pack's")
    return None


def not_resident_reason(module: torch.nn.Module, root: Optional[torch.nn.Module] = None,
                        device_type: str = "cuda") -> Optional[str]:
    """Why ``module`` (a captured network) cannot be recorded now, or None when all of it lives on
    ``device_type``. ``root``: the module ComfyUI's patcher manages (the BaseModel around the UNet; the
    ControlNet's own module), which carries the load flags: a partial (low-VRAM) load, a dynamic load
    (newer ComfyUI marks the modules with a VBAR block or pinned-memory state), or any parameter of
    ``module`` elsewhere (parameters: what ComfyUI's loader places; buffers are the forward's business)."""
    root = module if root is None else root
    if getattr(root, "model_lowvram", False):
        return "ComfyUI loaded it partly (low VRAM)"
    if getattr(root, "dynamic_patchers", None):
        return "ComfyUI loads it dynamically (Dynamic VRAM)"
    n_params = n_off = 0
    for m in module.modules():
        if hasattr(m, "_v") or hasattr(m, "_pin_state"):
            return "ComfyUI loads it dynamically (Dynamic VRAM)"
        for p in m.parameters(recurse=False):
            n_params += 1
            n_off += p.device.type != device_type
    if n_params == 0:
        return "it has no parameters"
    if n_off:
        return f"{n_off} of its {n_params} parameters are not on the {device_type} device"
    return None


def _load_signature(root: torch.nn.Module) -> tuple:
    """Changes whenever ComfyUI loads, unloads or re-patches the module (keys the residency cache)."""
    return (getattr(root, "model_lowvram", None), getattr(root, "model_loaded_weight_memory", None),
            getattr(root, "lowvram_patch_counter", None), getattr(root, "current_weight_patches_uuid", None),
            str(getattr(root, "device", None)))


def cuda_graphs_input() -> io.Boolean.Input:
    """The ``cuda_graphs`` switch of the nodes that sample with a ComfyUI MODEL (ISD, texture)."""
    return io.Boolean.Input("cuda_graphs", default=True, optional=True,
                            tooltip="Replay the UNet and ControlNet calls from CUDA graphs (same results, several times "
                                    "faster per step on a GPU; a few hundred MB more VRAM). Off: plain eager calls. "
                                    "Ignored on CPU, when ComfyUI loads the model only partly (low VRAM) or dynamically "
                                    f"(newer ComfyUI's default; {STATIC_LOADING_FLAGS} bring graphs back), and with "
                                    "--disable-cuda-graphs. The log says why graphs are off.")


class DiffusionGraphs:
    """CUDA graphs for one run of a MODEL (+ optional CONTROL_NET); ``close()`` frees them.

    ``enabled`` is the user's switch; graphs are used only where ``graphs_off_reason`` finds nothing
    against them, and per call only while the network is wholly on the GPU. ``off_reason`` says why not."""

    def __init__(self, model, control_net=None, enabled: bool = True) -> None:
        self.off_reason: Optional[str] = None if enabled else "switched off on the node"
        if enabled:
            self.off_reason = graphs_off_reason(model, control_net)
            if self.off_reason is not None:
                log.info("IDSculpt CUDA graphs off: %s", self.off_reason)
        self.enabled = self.off_reason is None
        self.base_model = model.model
        self.diffusion_model = model.get_model_object("diffusion_model")
        # GraphedCall keeps one graph per batch shape (4 at most): the ISD sends one shape per step (with several
        # views every view carries the ID-off row, nodes/engines/noise_predictor.py), texture sampling one or two.
        self.unet = GraphedCall("UNet", [self.diffusion_model], enabled=self.enabled)
        cm = getattr(control_net, "control_model", None)
        self.control_model: Optional[torch.nn.Module] = cm if isinstance(cm, torch.nn.Module) else None
        self.control = GraphedCall("ControlNet", [cm] if self.control_model is not None else [], enabled=self.enabled)
        self._resident: dict[int, tuple[tuple, Optional[str]]] = {}
        self._logged: set[str] = set()

    def _may_record(self, name: str, module: torch.nn.Module, root: torch.nn.Module) -> bool:
        sig = _load_signature(root)
        cached = self._resident.get(id(module))
        if cached is None or cached[0] != sig:
            cached = (sig, not_resident_reason(module, root))
            self._resident[id(module)] = cached
        reason = cached[1]
        if reason is not None and name not in self._logged:
            self._logged.add(name)  # once per run and network
            log.info("IDSculpt CUDA graphs off for the %s: %s", name, reason)
        return reason is None

    # -- UNet ------------------------------------------------------------------------------------
    def _unet_wrapper(self, executor, *args, **kwargs):
        if not self._may_record("UNet", self.diffusion_model, self.base_model):
            return executor(*args, **kwargs)
        return self.unet.call(executor, args, kwargs)

    def add_to(self, model_options: dict) -> dict:
        """Register the UNet wrapper in ``model_options`` (a clone's, never the user's)."""
        if self.enabled:
            comfy.patcher_extension.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY,
                                                         self._unet_wrapper, model_options, is_model_options=True)
        return model_options

    def clone_model(self, model):
        """A clone of a ComfyUI MODEL whose UNet calls go through the graphs."""
        m = model.clone()
        if self.enabled:
            m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, WRAPPER_KEY, self._unet_wrapper)
        return m

    # -- ControlNet ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def control_patched(self) -> Iterator[None]:
        """Route the ControlNet's forward through the graphs while the block runs."""
        cm = self.control_model
        if not self.enabled or cm is None or "forward" in cm.__dict__:
            yield
            return
        original = cm.forward

        def forward(*args, **kwargs):
            if not self._may_record("ControlNet", cm, cm):
                return original(*args, **kwargs)
            return self.control.call(original, args, kwargs)

        cm.forward = forward
        try:
            yield
        finally:
            del cm.forward

    # -- lifecycle -------------------------------------------------------------------------------
    def stats(self) -> dict:
        out = {}
        for name, g in (("unet", self.unet), ("controlnet", self.control)):
            out[name] = {"captures": g.captures, "replays": g.replays, "eager": g.eager_calls}
            if g.verify:
                out[name]["max_replay_vs_eager_diff"] = g.max_verify_diff
        return out

    def close(self) -> None:
        if self.enabled and (self.unet.captures or self.control.captures):
            log.info("IDSculpt CUDA graphs: %s", self.stats())
        self.unet.reset()
        self.control.reset()
