"""What the nodes' ``validate_inputs`` share: ComfyUI runs it when a prompt is queued, before any node executes,
so a contradiction between two widgets is refused with its cause instead of failing after minutes of loading.

How ComfyUI 0.3.64 calls it (``execution.validate_inputs``): the node's widget values by name; ``None`` for an
input fed by a link (its value is not known before the run); nothing for an optional input left unconnected, so a
default of :data:`UNCONNECTED` tells "linked" from "not connected". A string returned is the error shown on the
node; True passes.

ComfyUI skips its own min/max check for every input that ``validate_inputs`` names (and 0.3.64 never checks a V3
Combo's options): :func:`verdict` redoes both for the named inputs, so naming a widget here loses no check.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional, Union


class _Unconnected:
    """The default of an optional socket in ``validate_inputs``: ComfyUI passes nothing when it is unconnected."""

    def __repr__(self) -> str:
        return "UNCONNECTED"


UNCONNECTED = _Unconnected()


def connected(value: Any) -> bool:
    """True for a socket fed by a link (ComfyUI passes None) or given a value; False when left unconnected."""
    return value is not UNCONNECTED


def known(value: Any) -> bool:
    """True when validation sees the value itself: not from a link (None) and not unconnected."""
    return value is not None and value is not UNCONNECTED


def schema_problem(node_cls: type, values: Mapping[str, Any]) -> Optional[str]:
    """The first of ``values`` outside its widget's min/max or Combo options (the checks ComfyUI skips for the
    inputs ``validate_inputs`` names), as ComfyUI words them plus the widget's name; None when all fit."""
    spec = node_cls.INPUT_TYPES()
    for group in ("required", "optional"):
        for name, entry in spec.get(group, {}).items():
            value = values.get(name, UNCONNECTED)
            if not known(value):
                continue
            kind = entry[0]
            info = entry[1] if len(entry) > 1 and isinstance(entry[1], dict) else {}
            options = kind if isinstance(kind, list) else info.get("options") if kind == "COMBO" else None
            if options is not None and value not in options:
                return f"{name}: {value!r} is not one of its options"
            if "min" in info and info["min"] is not None and value < info["min"]:
                return f"{name}: value {value} smaller than min of {info['min']}"
            if "max" in info and info["max"] is not None and value > info["max"]:
                return f"{name}: value {value} bigger than max of {info['max']}"
    return None


def verdict(node_cls: type, values: Mapping[str, Any], *problems: Optional[str]) -> Union[bool, str]:
    """``validate_inputs``' answer: the bounds of ``values`` (see :func:`schema_problem`) and the node's own
    cross-field ``problems`` (None where a check passed). True when nothing is wrong, else every message, joined."""
    found = [p for p in (schema_problem(node_cls, values),) + problems if p]
    return "; ".join(found) if found else True


def both_or_neither(first: str, first_value: Any, second: str, second_value: Any, why: str) -> Optional[str]:
    """Two sockets that only work together: a message naming the one left unconnected."""
    if connected(first_value) == connected(second_value):
        return None
    have, missing = (first, second) if connected(first_value) else (second, first)
    return f"{have} is connected but {missing} is not: connect both, or neither ({why})"
