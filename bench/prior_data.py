"""Training data of the small trained prior (issue 22, evidence 2): a family of procedural heads, the
known target head ("the person") and their normal renders at the sculpt's random ISD cameras.

The heads are smooth unions of ellipsoids (as ``core.dmtet.procedural.head_sdf``) whose centres and
radii are scaled by a few shape factors. ``GENERIC`` (every factor 1) is core's procedural head: the
template the evidence sculpts FROM. ``TARGET`` is one fixed, distinct set of factors (long nose, wide
jaw, long chin, narrow skull...): the person the prior is trained to know under label "ID". The family
(label "head", the ID-off prompt) draws every factor uniformly within ``FAMILY_SPREAD`` of 1, so the
target's own factors (some outside that range) are not a family member.

Every head is rendered in a sculpting frame, as the Sculptor's ISD views see a head (cameras around the
origin, a head of largest |coordinate| about 0.9): the family heads each in their own
(``normalize_mesh``), the target in the frame of the run it will guide (the START head's normalisation,
which the evidence script applies), so "the person" looks to the prior as the sculpt's renders of it would.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _pack  # noqa: E402

_pack.load()

from idsculpt.core.dmtet import TetGrid, marching_tets  # noqa: E402
from idsculpt.core.dmtet.procedural import ellipsoid_sdf, smax, smin  # noqa: E402
from idsculpt.core.dmtet.sdf_init import normalize_mesh  # noqa: E402
from idsculpt.core.mesh import HeadMesh  # noqa: E402
from idsculpt.core.render import render_mesh  # noqa: E402
from idsculpt.core.sculpt.views import RandomViewRanges, random_views  # noqa: E402

#: Shape factors of a head (1 = core's procedural head).
FACTORS = ("skull_w", "skull_h", "skull_d", "jaw_w", "jaw_h", "chin", "brow", "nose_len", "nose_size", "cheeks",
           "eyes")
GENERIC = {k: 1.0 for k in FACTORS}
#: The known head: a person clearly apart from the generic head and from the family's range.
TARGET = dict(GENERIC, skull_w=0.88, skull_h=1.08, jaw_w=1.3, jaw_h=1.15, chin=1.6, brow=1.35, nose_len=1.7,
              nose_size=1.4, cheeks=1.35, eyes=1.3)
#: The family: each factor uniform in [1 - spread, 1 + spread].
FAMILY_SPREAD = 0.2

#: Class labels of the prior (the prompts of the real predictor).
NULL, HEAD, ID = 0, 1, 2
LABELS = {"null": NULL, "head": HEAD, "ID": ID}


def family_head_sdf(p: torch.Tensor, f: dict) -> torch.Tensor:
    """Approximate SDF (negative inside) of the head with shape factors ``f`` at points p [...,3]
    (core.dmtet.procedural.head_sdf for ``GENERIC``)."""
    sw, sh, sd = f["skull_w"], f["skull_h"], f["skull_d"]
    d = ellipsoid_sdf(p, (0.0, 0.05, -0.02), (0.52 * sw, 0.62 * sh, 0.6 * sd))  # skull
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.3 * f["jaw_h"], 0.12), (0.34 * f["jaw_w"], 0.3 * f["jaw_h"], 0.4)), 0.08)  # jaw
    c = f["chin"]
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.52 * f["jaw_h"] - 0.03 * (c - 1), 0.3 + 0.05 * (c - 1)), (0.13 * c, 0.1 * c, 0.12 * c)), 0.06)
    d = smin(d, ellipsoid_sdf(p, (0.0, 0.2, 0.5 * sd), (0.36 * sw, 0.07 * f["brow"], 0.1 * f["brow"])), 0.05)  # brow
    nl, ns = f["nose_len"], f["nose_size"]
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.03, 0.6 * sd + 0.06 * (nl - 1)), (0.07 * ns, 0.17 * ns, 0.12 * nl)), 0.04)  # nose
    ch = f["cheeks"]
    for sx in (0.24, -0.24):
        d = smin(d, ellipsoid_sdf(p, (sx * f["jaw_w"], -0.1, 0.4 * sd), (0.12 * ch, 0.1 * ch, 0.1 * ch)), 0.05)
    d = smin(d, ellipsoid_sdf(p, (0.0, -0.62 * f["jaw_h"], -0.1), (0.2, 0.22, 0.2)), 0.08)  # neck
    e = f["eyes"]
    for sx in (0.17, -0.17):  # eye sockets (concave)
        d = smax(d, -ellipsoid_sdf(p, (sx, 0.08, 0.58 * sd), (0.1 * e, 0.06 * e, 0.09 * e)), 0.03)
    return d


def random_factors(generator: torch.Generator, spread: float = FAMILY_SPREAD) -> dict:
    u = torch.rand(len(FACTORS), generator=generator, dtype=torch.float64)
    return {k: float(1.0 + spread * (2.0 * x - 1.0)) for k, x in zip(FACTORS, u.tolist())}


def head_mesh(factors: dict, n: int = 64, device: torch.device | str = "cpu", normalise: bool = True) -> HeadMesh:
    """The head with ``factors`` extracted by marching tets on an n-cube grid over [-1, 1]^3 (the frame of
    core.dmtet.procedural, largest |coordinate| about 0.9); ``normalise``: put in its own sculpting
    frame (vertex mean at the origin, largest |coordinate| 0.9), as the Sculptor would see it."""
    g = TetGrid(n, 1.0, device)
    pos = g.vertices()
    v, f = marching_tets(g, pos, family_head_sdf(pos, factors))
    if f.shape[0] == 0:
        raise RuntimeError(f"head with factors {factors} has no surface on a {n}-grid")
    v = v.detach()
    if normalise:
        v = normalize_mesh(v).apply(v.cpu()).to(device)
    return HeadMesh(v, f)


def encode_images(images: torch.Tensor, factor: int) -> torch.Tensor:
    """The pixel-space "latents" of the prior: normal images [B,H,W,3] in 0..1 -> [B,3,H/f,W/f] in
    [-1, 1], area-downsampled by ``factor`` (8: a 512 render to 64x64, SD's latent size). Differentiable."""
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected images [B,H,W,3] in 0..1, got shape {tuple(images.shape)}")
    if images.shape[1] % factor or images.shape[2] % factor:
        raise ValueError(f"image size {tuple(images.shape[1:3])} is not a multiple of the encode factor {factor}")
    x = images.permute(0, 3, 1, 2).float() * 2.0 - 1.0
    return torch.nn.functional.avg_pool2d(x, factor) if factor > 1 else x


@dataclass
class PriorDataset:
    """Encoded renders [N,3,h,w], their labels [N] (ID or HEAD) and cameras (azimuth, elevation) [N]."""

    latents: torch.Tensor
    labels: torch.Tensor
    azimuth: torch.Tensor
    elevation: torch.Tensor

    def __len__(self) -> int:
        return self.latents.shape[0]

    def to(self, device: torch.device | str) -> "PriorDataset":
        return PriorDataset(self.latents.to(device), self.labels.to(device), self.azimuth.to(device), self.elevation.to(device))


def render_views(mesh: HeadMesh, n: int, ranges: RandomViewRanges, factor: int, generator: torch.Generator,
                 device: torch.device | str, batch: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``n`` encoded normal renders of ``mesh`` at random ISD cameras: (latents, azimuth, elevation)."""
    v, f = mesh.vertices.to(device), mesh.faces.to(device)
    lat, azs, els = [], [], []
    with torch.no_grad():
        for i in range(0, n, batch):
            cams, az, el = random_views(min(batch, n - i), ranges, generator)
            img = render_mesh(v, f, cams.to(device)).normal_image()
            lat.append(encode_images(img, factor))
            azs.append(az)
            els.append(el)
    return torch.cat(lat), torch.cat(azs).to(device), torch.cat(els).to(device)


def build_dataset(target: HeadMesh, n_target_views: int, n_family_heads: int, views_per_family_head: int,
                  ranges: RandomViewRanges, factor: int, device: torch.device | str, seed: int = 0,
                  mesh_grid: int = 64) -> PriorDataset:
    """Renders of the target (label ID; given in the frame the sculpt will render it in) and of
    ``n_family_heads`` random family heads (label HEAD; each in its own sculpting frame)."""
    g = torch.Generator().manual_seed(seed)
    lat, az, el = render_views(target, n_target_views, ranges, factor, g, device)
    parts = [(lat, torch.full((len(lat),), ID, dtype=torch.long, device=device), az, el)]
    for _ in range(n_family_heads):
        head = head_mesh(random_factors(g), mesh_grid, device)
        lat, az, el = render_views(head, views_per_family_head, ranges, factor, g, device)
        parts.append((lat, torch.full((len(lat),), HEAD, dtype=torch.long, device=device), az, el))
    return PriorDataset(*(torch.cat([p[i] for p in parts]) for i in range(4)))
