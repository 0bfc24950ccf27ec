"""Loss-weight schedules in threestudio's notation (``threestudio.utils.misc.C``).

A weight is a number, or ``[start_step, start_value, end_value, end_step]`` (a 3-element list means
start_step 0): ``start_value`` up to and including ``start_step``, ``end_value`` from ``end_step``
on, linear in between. The authors' geometry config uses ``[1000, 500, 10000, 1001]`` for normal
consistency and ``[1000, 1e5, 1.5e5, 1001]`` for the Laplacian: a STEP, the first value in steps
0 … 1000 (the GAN-normal fit and the first reference step) and the second from step 1001 on.
Steps are threestudio's ``true_global_step``: 0 for the first optimiser step.

(threestudio's ≥ 6-element piecewise form and its float ``end_step`` = epoch form are not used by
the authors and are not supported.)
"""
from __future__ import annotations

from typing import Sequence, Union

Weight = Union[float, int, Sequence[float]]


def check_weight(spec: Weight, name: str = "weight") -> None:
    """Raise a ValueError naming ``name`` unless ``spec`` is a number or a 3/4-element schedule."""
    if isinstance(spec, (int, float)):
        return
    try:
        n = len(spec)  # type: ignore[arg-type]
    except TypeError:
        raise ValueError(f"{name} must be a number or [start_step, start_value, end_value, end_step], got {spec!r}") from None
    if n not in (3, 4):
        raise ValueError(f"{name} must be a number or [start_step, start_value, end_value, end_step] "
                         f"(threestudio's C()), got {n} values: {list(spec)!r}")
    s = [0, *spec] if n == 3 else list(spec)
    if not s[3] > s[0]:
        raise ValueError(f"{name}: end_step ({s[3]}) must be after start_step ({s[0]})")


def scheduled_weight(spec: Weight, step: int) -> float:
    """The value of a weight ``spec`` at optimiser step ``step`` (threestudio's C with an integer step)."""
    if isinstance(spec, (int, float)):
        return float(spec)
    check_weight(spec)
    start_step, start_value, end_value, end_step = [0, *spec] if len(spec) == 3 else list(spec)
    r = min(max((step - start_step) / (end_step - start_step), 0.0), 1.0)
    return float(start_value + (end_value - start_value) * r)


def step_schedule(before: float, after: float, last_step_before: int) -> tuple[int, float, float, int]:
    """``before`` in steps 0 … ``last_step_before`` and ``after`` from the next step on: the authors'
    ``[1000, a, b, 1001]`` for ``last_step_before`` = 1000."""
    return (int(last_step_before), float(before), float(after), int(last_step_before) + 1)
