"""A stand-in for ComfyUI's Dynamic VRAM loader (``ModelPatcherDynamic``), runnable on ComfyUI 0.3.64 / CPU.

Newer ComfyUI (default on NVIDIA since early 2026) loads models through ``ModelPatcherDynamic``; its
``load()`` (comfy/model_patcher.py@08d0e510, docs/review/COMFYUI_CURRENT.md F1/F2) changes every
comfy-ops module in place:

* ``m.comfy_cast_weights = True``, ``m.seed_key = name``, ``m._pin_state = pin_state`` (a dict of
  ``comfy_aimdo.host_buffer.HostBuffer``: native pinned-memory handles that cannot be copied);
* modules over 16 KB keep their weights on the CPU, get ``weight_lowvram_function`` / ``weight_function``
  and a VBAR block ``m._v``; each forward casts the weight into shared per-stream cast buffers
  (``model_management.get_cast_buffer``), so consecutive layers' weights live in the same memory;
* modules of 16 KB or less are force-loaded: their weights are replaced by copies on the load device
  (the originals kept in ``patcher.backup``);
* ``is_dynamic()`` is True.

0.3.64's ops have no VBAR path, but they do run ``weight_function`` on every cast (ops.cast_bias_weight),
so the stand-in puts the shared cast buffer there: one flat buffer, sized for the largest weight, that
every layer's cast overwrites. The write goes through ``.data`` like a raw device copy, so autograd's
version counters never see it: a backward pass through the live modules silently uses whatever weight
was cast last (the "silently wrong gradients" of F1). The handles refuse ``copy.deepcopy`` as the
native objects do (F1's "deepcopy ... raises").

Tests only: it imports ComfyUI.
"""
from __future__ import annotations

import collections

import torch

import comfy.model_patcher
import comfy.utils

FORCE_LOAD_BYTES = 16 * 1024  # ModelPatcherDynamic.load: modules of 16 KB or less are force-loaded


class NativeHandle:
    """Like ``comfy_aimdo.host_buffer.HostBuffer`` / a VBAR: a native object Python cannot copy."""

    def __init__(self, kind: str) -> None:
        self.kind = kind

    def __deepcopy__(self, memo):
        raise TypeError(f"cannot pickle '{self.kind}' object")

    def __reduce_ex__(self, protocol):
        raise TypeError(f"cannot pickle '{self.kind}' object")


class SharedCastBuffer:
    """Per-forward weight casts into one reused buffer (model_management's shared cast buffers)."""

    def __init__(self, numel: int, dtype: torch.dtype, device: torch.device) -> None:
        self.buf = torch.zeros(numel, dtype=dtype, device=device)
        self.casts = 0

    def __call__(self, weight: torch.Tensor) -> torch.Tensor:
        view = self.buf[: weight.numel()].view(weight.shape)
        view.data.copy_(weight.detach().to(self.buf.dtype))  # raw copy: no version-counter bump
        self.casts += 1
        return view


def _module_bytes(m: torch.nn.Module) -> int:
    return sum(p.numel() * p.element_size() for p in m.parameters(recurse=False))


class DynamicVRAMStandIn(comfy.model_patcher.ModelPatcher):
    """ModelPatcher whose ``load`` changes the modules in place as ModelPatcherDynamic.load does."""

    def is_dynamic(self) -> bool:
        return True

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        device_to = device_to or self.load_device
        pin_state = {"weights": NativeHandle("HostBuffer"), "patches": NativeHandle("HostBuffer")}
        vbar = NativeHandle("ModelVBAR")
        cast_modules = [(n, m) for n, m in self.model.named_modules() if hasattr(m, "comfy_cast_weights")]
        largest = max((m.weight.numel() for _, m in cast_modules if getattr(m, "weight", None) is not None), default=1)
        self.cast_buffer = SharedCastBuffer(largest, torch.float32, device_to)
        self.force_loaded: list[str] = []
        offset = 0
        for n, m in cast_modules:
            m.comfy_cast_weights = True
            m.seed_key = n
            m._pin_state = pin_state
            size = _module_bytes(m)
            if size > FORCE_LOAD_BYTES:
                m.weight_lowvram_function = None
                m.bias_lowvram_function = None
                m.weight_function = [self.cast_buffer] if getattr(m, "weight", None) is not None else []
                m.bias_function = []
                m._v = (vbar, offset, size)
                offset += size
            else:
                for p_name, p in list(m.named_parameters(recurse=False)):
                    key = f"{n}.{p_name}" if n else p_name
                    if key not in self.backup:
                        self.backup[key] = collections.namedtuple("Dimension", ["weight", "inplace_update"])(p, False)
                    comfy.utils.set_attr_param(self.model, key, p.detach().to(device_to, copy=True))
                self.force_loaded.append(n)
        self.model.device = device_to
        self.model.model_loaded_weight_memory = 0
        self.model.model_lowvram = False  # what the old "fully loaded" heuristic reads: it is not a signal here
        self.model.current_weight_patches_uuid = self.patches_uuid
        self.dynamic_loaded = True
        return self

    def unload(self) -> None:
        """Undo ``load`` (the tests call it; ComfyUI's model management never sees this patcher)."""
        for n, m in self.model.named_modules():
            if hasattr(m, "_pin_state"):
                for a in ("_pin_state", "_v", "seed_key", "weight_lowvram_function", "bias_lowvram_function"):
                    m.__dict__.pop(a, None)
                m.comfy_cast_weights = False
                m.weight_function, m.bias_function = [], []
        for key, bk in list(self.backup.items()):
            comfy.utils.set_attr_param(self.model, key, bk.weight)
        self.backup.clear()
        self.dynamic_loaded = False


def make_vae_dynamic(vae) -> DynamicVRAMStandIn:
    """Swap a ComfyUI VAE's patcher for the stand-in and load it (what VAE Decode does first on a new host)."""
    p = DynamicVRAMStandIn(vae.first_stage_model, load_device=vae.patcher.load_device, offload_device=vae.patcher.offload_device)
    vae.patcher = p
    p.load(vae.patcher.load_device)
    return p
