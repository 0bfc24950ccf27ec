"""The head frame the texture cameras assume, and a check of the head handed to the texture stage.

The authors' texture stage runs on the DMTet surface in threestudio's normalised frame (geometry
tetrahedra_sdf_grid: vertex mean at the origin, max |coordinate| = 0.9) with the reference camera
normalised the same way; every texture camera value (inpaint views at radius 3.8 / FoV 30°, refine
views at 2.5–3.5 / 30–45°) is chosen for a head of that size. A head in another frame (e.g. PanoHead's
world, ≈ 0.4 units) comes out a quarter of the frame in the refine views, with the inpaint erosion and
the SDEdit targets working on a small head. IDSculpt DMTet Sculpt outputs the head and its
reference_camera in the normalised frame.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..dmtet.sdf_init import NORMALISED_HEAD_EXTENT

#: the band in which the texture cameras frame the head as theirs do (outside it the head fills less than
#: ~45 % or more than ~180 % of the authors' frame area)
HEAD_EXTENT_RANGE = (0.6, 1.2)
#: largest distance of the vertex mean from the origin (the cameras look at the origin) before warning
HEAD_CENTRE_TOLERANCE = 0.25


def head_frame_warning(vertices: torch.Tensor) -> Optional[str]:
    """A warning when ``vertices`` [N,3] are not in the authors' normalised frame, else None."""
    v = vertices.detach().float().reshape(-1, 3)
    if v.numel() == 0:
        return None
    extent = float(v.abs().max())
    centre = float(v.mean(0).norm())
    problems = []
    lo, hi = HEAD_EXTENT_RANGE
    if not lo <= extent <= hi:
        problems.append(f"its max |coordinate| is {extent:.3g} (expected {NORMALISED_HEAD_EXTENT:g}; the head appears "
                        f"{extent / NORMALISED_HEAD_EXTENT:.2g}× the size the cameras expect)")
    if centre > HEAD_CENTRE_TOLERANCE:
        problems.append(f"its vertex mean is {centre:.3g} from the origin the cameras look at")
    if not problems:
        return None
    return ("the head is not in the authors' normalised frame: " + "; ".join(problems) + ". The texture cameras "
            "(inpaint views radius 3.8 / FoV 30°, refine views 2.5–3.5 / 30–45°) assume a head with vertex mean 0 and "
            "max |coordinate| 0.9: connect IDSculpt DMTet Sculpt's head and its reference_camera (both in that frame).")
