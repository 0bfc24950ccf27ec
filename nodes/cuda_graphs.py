"""CUDA graphs for ComfyUI's UNet and ControlNet during the pack's many small diffusion calls.

ISD, progressive inpainting and texture refinement call an SD1.5 UNet (+ ControlNet) thousands of
times at CFG batch 2, where eager PyTorch is bound by Python's kernel launches (docs/PERFORMANCE.md).
``DiffusionGraphs`` replays those calls from CUDA graphs (core/cuda_graph.py) without changing what
runs: the graph is recorded from ComfyUI's own forward, with every patch, LoRA and attention
replacement of the MODEL in it.

- UNet: a ``DIFFUSION_MODEL`` wrapper (ComfyUI's wrapper mechanism, what TorchCompileModel uses
  for APPLY_MODEL) added to a clone's options, so the user's MODEL is untouched.
- ControlNet: its ``control_model.forward`` is replaced on the instance while the run lasts (every
  ``copy()`` of a ControlNet shares that module) and restored afterwards.

Graphs are used only when the network is fully loaded on a CUDA device: with ComfyUI's partial
(low-VRAM) loading, weights stream from host memory inside the forward, which a graph must not freeze.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Iterator, Optional

import torch
from comfy_api.latest import io

import comfy.patcher_extension

from ..core.cuda_graph import GraphedCall

log = logging.getLogger("IDSculpt")

WRAPPER_KEY = "idsculpt_cuda_graphs"


def _fully_loaded(module: torch.nn.Module) -> bool:
    if getattr(module, "model_lowvram", False):
        return False
    p = next(module.parameters(), None)
    return p is not None and p.device.type == "cuda"


def cuda_graphs_input() -> io.Boolean.Input:
    """The ``cuda_graphs`` switch of the nodes that sample with a ComfyUI MODEL (ISD, texture)."""
    return io.Boolean.Input("cuda_graphs", default=True, optional=True,
                            tooltip="Replay the UNet and ControlNet calls from CUDA graphs (same results, several times "
                                    "faster per step on a GPU; a few hundred MB more VRAM). Off: plain eager calls. "
                                    "Ignored on CPU and when ComfyUI loads the model only partly (low VRAM).")


class DiffusionGraphs:
    """CUDA graphs for one run of a MODEL (+ optional CONTROL_NET); ``close()`` frees them.

    ``enabled`` is the user's switch; graphs are used only when the MODEL runs on a CUDA device."""

    def __init__(self, model, control_net=None, enabled: bool = True) -> None:
        self.enabled = bool(enabled) and torch.cuda.is_available() and model.load_device.type == "cuda"
        self.base_model = model.model
        self.unet = GraphedCall("UNet", [model.get_model_object("diffusion_model")], enabled=self.enabled)
        cm = getattr(control_net, "control_model", None)
        self.control_model: Optional[torch.nn.Module] = cm if isinstance(cm, torch.nn.Module) else None
        self.control = GraphedCall("ControlNet", [cm] if self.control_model is not None else [], enabled=self.enabled)

    # -- UNet ------------------------------------------------------------------------------------
    def _unet_wrapper(self, executor, *args, **kwargs):
        if not _fully_loaded(self.base_model):
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
            if not _fully_loaded(cm):
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
