"""Per-direction prompts: the CONDITIONING inputs that ISD Guidance, Progressive Inpaint and Texture Refine share.

The authors' prompt processor (threestudio's view-dependent prompting) gives every view a direction
(front / side / back / overhead, ``core.guidance.view_direction``) and picks a positive AND a negative
prompt for it: "<caption>, back view" with the negative "face, nose, eyes, mouth, front face, facial"
for a view from behind, and so on. Users keep that in the graph: each node takes the plain
``positive``/``negative`` plus an optional pair per direction; an unconnected one falls back to the
plain prompt. The shipped workflows build all of them from the caption.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from comfy_api.latest import io

from ..core.guidance import VIEW_DIRECTIONS, view_direction

_WHERE = {
    "front": "views facing the face",
    "side": "side views",
    "back": "views from behind",
    "overhead": "views from above",
}


def view_conditioning_inputs(thresholds: dict[str, float]) -> list:
    """Optional ``positive_<d>`` / ``negative_<d>`` CONDITIONING inputs for the four directions."""
    rule = (f"front: |azimuth| < {thresholds['front']:g}°, back: |azimuth| > {180 - thresholds['back']:g}°, "
            f"overhead: elevation > {thresholds['overhead']:g}°, side: the rest")
    out = []
    for sign, fallback in (("positive", "positive"), ("negative", "negative")):
        for d in VIEW_DIRECTIONS:
            out.append(io.Conditioning.Input(
                f"{sign}_{d}", optional=True,
                tooltip=f"{sign.capitalize()} prompt for {_WHERE[d]} ({rule}). Unconnected: {fallback}."))
    return out


@dataclass
class ViewConditioning:
    """The positive and negative CONDITIONING of each direction, with the thresholds that choose it."""

    positive: dict[str, Any]
    negative: dict[str, Any]
    thresholds: dict[str, float]

    @property
    def view_dependent(self) -> bool:
        """False when every direction uses the same pair (one prompt for all views)."""
        return any(self.positive[d] is not self.positive["side"] or self.negative[d] is not self.negative["side"]
                   for d in VIEW_DIRECTIONS)

    def directions(self, azimuth, elevation) -> list[str]:
        return view_direction(azimuth, elevation, **self.thresholds)

    def pair(self, direction: str) -> tuple[Any, Any]:
        return self.positive[direction], self.negative[direction]


def view_conditioning(positive, negative, thresholds: dict[str, float], **per_direction) -> ViewConditioning:
    """Collect a node's ``positive_<d>`` / ``negative_<d>`` keyword inputs (None = unconnected)."""
    unknown = set(per_direction) - {f"{s}_{d}" for s in ("positive", "negative") for d in VIEW_DIRECTIONS}
    if unknown:
        raise ValueError(f"unknown per-direction prompt inputs: {sorted(unknown)}")
    def pick(name: str, plain):
        value = per_direction.get(name)
        return plain if value is None else value

    pos = {d: pick(f"positive_{d}", positive) for d in VIEW_DIRECTIONS}
    neg = {d: pick(f"negative_{d}", negative) for d in VIEW_DIRECTIONS}
    return ViewConditioning(pos, neg, dict(thresholds))
