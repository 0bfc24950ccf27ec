"""Stand-ins for newer ComfyUI's cache and model-tracking hooks, runnable on ComfyUI 0.3.64 / CPU.

Reproduced from how upstream calls them (docs/review/COMFYUI_CURRENT.md F6):

* ``comfy_execution/caching.py`` (Comfy-Org/ComfyUI@0c5058b9) ``RAMPressureCache.ram_release``: an
  entry's size starts at ``RAM_CACHE_DEFAULT_RAM_USAGE`` (0.05); its outputs are walked: lists, tuples
  and mappings recursively, a CPU tensor adds its storage's bytes once per (data_ptr, nbytes), a model
  patcher output (``is_model_patcher_output``: a ModelPatcher or an object whose ``.patcher`` is one) of
  an older prompt makes the entry "first to go" (1e30), and any other object with
  ``_comfy_cache_tensors`` is walked through what that returns. Everything else counts nothing.
* ``comfy/model_patcher.py`` (@08d0e510) ``PromptModelTracker.add(outputs)``: walks the outputs the
  same way; a ModelPatcher counts itself, its patches' models and nested additional models; another
  object its ``.patcher`` (when a ModelPatcher) plus ``get_models()``. Each dynamic ModelPatcher among
  them is marked ``set_in_use_by_current_prompt(True)`` until ``end()``.

Tests only: ModelPatcher comes from the ComfyUI under test.
"""
from __future__ import annotations

from collections.abc import Mapping

import torch

RAM_CACHE_DEFAULT_RAM_USAGE = 0.05
FIRST_TO_GO = 1e30


def _patcher_class():
    import comfy.model_patcher

    return comfy.model_patcher.ModelPatcher


def is_model_patcher_output(output) -> bool:
    mp = _patcher_class()
    return isinstance(output, mp) or isinstance(getattr(output, "patcher", None), mp)


def ram_usage(outputs, old_generation: bool = False) -> tuple[float, float]:
    """(ram_usage, oom_ram_usage) of one cache entry's outputs, as RAMPressureCache.ram_release sizes it."""
    usage = oom = RAM_CACHE_DEFAULT_RAM_USAGE
    seen: set = set()

    def scan(outs) -> None:
        nonlocal usage, oom
        if outs is None:
            return
        if isinstance(outs, Mapping):
            outs = outs.values()
        elif not isinstance(outs, (list, tuple)):
            outs = (outs,)
        for o in outs:
            if isinstance(o, (list, tuple, Mapping)):
                scan(o)
            elif isinstance(o, torch.Tensor) and o.device.type == "cpu":
                st = o.untyped_storage()
                key = (st.data_ptr(), st.nbytes())
                if key not in seen:
                    seen.add(key)
                    usage += st.nbytes()
                    oom += st.nbytes()
            elif old_generation and is_model_patcher_output(o):  # same test; upstream order reversed (pure)
                oom = FIRST_TO_GO
            elif hasattr(o, "_comfy_cache_tensors"):
                scan(o._comfy_cache_tensors())

    scan(outputs)
    return usage, oom


class PromptModelTracker:
    """PromptModelTracker's ``add`` / ``end`` as upstream runs them over node outputs."""

    def __init__(self) -> None:
        self.models: dict = {}

    def add(self, outputs) -> None:
        mp = _patcher_class()
        if isinstance(outputs, Mapping):
            outputs = outputs.values()
        elif not isinstance(outputs, (list, tuple)):
            outputs = (outputs,)
        for o in outputs:
            if isinstance(o, (Mapping, list, tuple)):
                self.add(o)
                continue
            models = []
            if isinstance(o, mp):
                models.append(o)
                models.extend(o.model_patches_models())
                models.extend(o.get_nested_additional_models())
            else:
                patcher = getattr(o, "patcher", None)
                if isinstance(patcher, mp):
                    models.append(patcher)
                get_models = getattr(o, "get_models", None)
                if callable(get_models):
                    models.extend(get_models())
            for m in models:
                # newer ModelPatcher.is_dynamic() is False unless dynamic; 0.3.64's has no such method
                if not isinstance(m, mp) or not getattr(m, "is_dynamic", lambda: False)():
                    continue
                self.models[(id(m.model), m.load_device)] = m
                m.set_in_use_by_current_prompt(True)

    def end(self) -> None:
        for m in self.models.values():
            m.set_in_use_by_current_prompt(False)
        self.models.clear()


def storage_bytes(tensors) -> int:
    """Bytes of the distinct CPU storages among ``tensors`` (the reference the tests compare with)."""
    seen, total = set(), 0
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu":
            st = t.untyped_storage()
            if (st.data_ptr(), st.nbytes()) not in seen:
                seen.add((st.data_ptr(), st.nbytes()))
                total += st.nbytes()
    return total
