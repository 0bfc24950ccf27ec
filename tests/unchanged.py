"""``snapshot(value)`` / ``assert_unchanged(snap, value)``: a node must not change the values other nodes gave it
(ComfyUI caches node outputs and hands the same objects to every later run and branch).

The snapshot copies every tensor it reaches (through dataclasses, dicts, lists, tuples and objects' attributes) and
records every plain attribute value, so an in-place edit, an attribute swapped or an entry added shows as a
difference, named by its path.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import torch

_SCALARS = (int, float, str, bool, bytes, type(None))


def snapshot(value: Any, depth: int = 6, _seen: set | None = None) -> Any:
    seen = set() if _seen is None else _seen
    if isinstance(value, torch.Tensor):
        return ("tensor", value.detach().clone(), value.dtype, tuple(value.shape))
    if isinstance(value, _SCALARS):
        return ("scalar", value)
    if depth <= 0 or id(value) in seen or isinstance(value, (torch.nn.Module, type)) or callable(value) and not hasattr(value, "__dict__"):
        return ("ref", id(value))
    seen.add(id(value))
    if isinstance(value, dict):
        return ("dict", {k: snapshot(v, depth - 1, seen) for k, v in value.items()})
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [snapshot(v, depth - 1, seen) for v in value])
    if dataclasses.is_dataclass(value):
        return ("dataclass", type(value), {f.name: snapshot(getattr(value, f.name), depth - 1, seen) for f in dataclasses.fields(value)})
    attrs = getattr(value, "__dict__", None)
    if isinstance(attrs, dict):
        return ("object", type(value), {k: snapshot(v, depth - 1, seen) for k, v in attrs.items()})
    return ("ref", id(value))


def differences(snap: Any, value: Any, path: str = "value") -> list[str]:
    kind = snap[0]
    if kind == "tensor":
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != snap[3] or value.dtype != snap[2]:
            return [f"{path}: tensor replaced or reshaped"]
        same = torch.equal(value.detach().cpu(), snap[1].cpu()) if value.dtype != torch.bool else bool((value.cpu() == snap[1].cpu()).all())
        return [] if same else [f"{path}: tensor edited in place"]
    if kind == "scalar":
        return [] if (value == snap[1] or (value != value and snap[1] != snap[1])) else [f"{path}: {snap[1]!r} -> {value!r}"]
    if kind == "ref":
        return []
    if kind == "dict":
        if not isinstance(value, dict):
            return [f"{path}: no longer a dict"]
        out = [f"{path}[{k!r}]: added" for k in value if k not in snap[1]]
        out += [f"{path}[{k!r}]: removed" for k in snap[1] if k not in value]
        for k, s in snap[1].items():
            if k in value:
                out += differences(s, value[k], f"{path}[{k!r}]")
        return out
    if kind in ("list", "tuple"):
        if len(value) != len(snap[1]):
            return [f"{path}: length {len(snap[1])} -> {len(value)}"]
        return [d for i, (s, v) in enumerate(zip(snap[1], value)) for d in differences(s, v, f"{path}[{i}]")]
    fields = snap[2]
    attrs = {f: getattr(value, f, None) for f in fields} if kind == "dataclass" else dict(getattr(value, "__dict__", {}))
    out = [f"{path}.{k}: added" for k in attrs if k not in fields]
    for k, s in fields.items():
        if k not in attrs:
            out.append(f"{path}.{k}: removed")
        else:
            out += differences(s, attrs[k], f"{path}.{k}")
    return out


def assert_unchanged(snap: Any, value: Any, name: str = "input") -> None:
    diff = differences(snap, value, name)
    assert not diff, f"a node changed another node's output: {diff[:8]}"
