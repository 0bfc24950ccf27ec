"""The tensors a value holds: what the pack's output types report to a host's RAM-pressure cache.

Newer ComfyUI sizes cached node outputs by walking tensors, containers and an optional
``_comfy_cache_tensors()`` method (docs/COMFYUI_TESTING.md, review finding F6); an object it cannot see
counts nothing, so a cache full of heads and GAN views looked empty and a 10-minute inversion could be
evicted first. The pack's dataclasses (HeadMesh, Cameras, GanViews, ReferenceGeometry) answer with
:func:`held_tensors`. Plain duck typing: core never imports ComfyUI.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch


def held_tensors(value: Any) -> list[torch.Tensor]:
    """Every tensor inside ``value`` (dataclass fields, dicts, lists and tuples, recursively), each once."""
    out: list[torch.Tensor] = []
    seen: set[int] = set()

    def walk(v: Any) -> None:
        if isinstance(v, torch.Tensor):
            if id(v) not in seen:
                seen.add(id(v))
                out.append(v)
        elif dataclasses.is_dataclass(v) and not isinstance(v, type):
            if id(v) in seen:
                return
            seen.add(id(v))
            for f in dataclasses.fields(v):
                walk(getattr(v, f.name, None))
        elif isinstance(v, dict):
            for x in v.values():
                walk(x)
        elif isinstance(v, (list, tuple)):
            for x in v:
                walk(x)

    walk(value)
    return out
