"""Projection between views and the UV texture: texel geometry, back-projection, hole filling.

Back-projection works texel by texel (a "gather", not a splat): the mesh is rasterised in UV space
once, giving every texel its 3D position and normal (``rasterize_uv``). For a view, each texel is
projected into the camera, depth-tested against the view's depth render (visibility), weighted by the
cosine between its normal and the direction to the camera, and the view image is sampled bilinearly
where it lands. Gathering gives every covered texel exactly one sample per view, with no holes from
splatting at texture resolutions above the view's.

Overwrite-or-blend policy (documented in docs/TEXTURE.md):
  * ``"first"`` (default, the paper's Eq. 7 and the authors' code): a texel is written by the first view
    whose back-projection mask holds it and is never changed afterwards — the region to generate in a
    view is exactly the texels not painted yet, so what the reference portrait painted stays the
    portrait's.
  * ``"best_cosine"``: a texel already painted is overwritten when a later view sees it more head-on
    (larger view–normal cosine by ``best_cosine_margin``); texels the reference painted are never
    overwritten. Useful for oracles and view plans with redundant views.
The back-projection mask of a view is: covered texel ∧ in frame ∧ depth-visible ∧ cosine > threshold ∧
inside the view's eroded (visible ∧ cosine > threshold) pixel mask. The erosion (8× a 5×5 kernel, i.e.
16 px of the 512 crop the model sees; InpaintConfig.erosion_radius) drops grazing-angle and silhouette
pixels, whose colours are blurred by the renderer and the diffusion model; later views paint those
texels head-on.

While views are inpainted, texels no view has painted yet render grey 0.5 (TextureState.working, the
authors' initialisation); only the final texture fills them from painted neighbours (fill_holes).

Holes (texels no view painted) and the space between UV charts are filled by two rings of dilation
from each chart's own border, then push-pull (masked mip-map averaging, then coarse-to-fine fill):
every texel ends with a colour continued from its painted neighbourhood, so seams sample neither grey
nor the chart across the gutter under bilinear filtering.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from ..camera import Cameras
from ..mesh import HeadMesh
from .views import CropBox

POLICIES = ("first", "best_cosine")


@dataclass
class TexelGeometry:
    """Per-texel surface samples from rasterising the mesh in UV space (row 0 = v = 1)."""

    position: torch.Tensor  # [T,T,3] world position (0 where not covered)
    normal: torch.Tensor  # [T,T,3] unit world normal (interpolated vertex normals)
    covered: torch.Tensor  # [T,T] bool: the texel centre lies inside a UV triangle

    @property
    def size(self) -> int:
        return int(self.covered.shape[0])


def _backend(device: torch.device, backend: str | None):
    from ..render import get_backend

    return get_backend(backend, device)


def rasterize_uv(mesh: HeadMesh, texture_size: int, backend: str | None = None) -> TexelGeometry:
    """Rasterise ``mesh`` into its own UV atlas: each texel's 3D position, normal and coverage."""
    if not mesh.has_uv:
        raise ValueError("the mesh has no UVs: unwrap it first (core.texture.unwrap_uv)")
    dev = mesh.vertices.device
    be = _backend(dev, backend)
    m = mesh.faces.shape[0]
    uv = mesh.uvs[mesh.uv_faces].reshape(-1, 2)  # per corner [3M,2]
    pos = mesh.vertices[mesh.faces].reshape(-1, 3)
    nrm = mesh.vertex_normals()[mesh.faces].reshape(-1, 3)
    # UV → clip: x = 2u-1, y = 1-2v so that v = 1 lands on row 0 (clip y = -1 is the top row)
    clip = torch.stack([uv[:, 0] * 2 - 1, 1 - uv[:, 1] * 2, torch.zeros_like(uv[:, 0]), torch.ones_like(uv[:, 0])], dim=-1)
    tri = torch.arange(3 * m, device=dev, dtype=torch.int32).reshape(m, 3)
    rast = be.rasterize(clip[None].contiguous(), tri, (texture_size, texture_size))
    attr, _ = be.interpolate(torch.cat([pos, nrm], dim=-1)[None].contiguous(), rast, tri)
    covered = rast[0, ..., 3] > 0
    position = attr[0, ..., :3] * covered[..., None]
    normal = F.normalize(attr[0, ..., 3:6], dim=-1, eps=1e-12) * covered[..., None]
    return TexelGeometry(position.detach(), normal.detach(), covered)


def erode(mask: torch.Tensor, radius: int) -> torch.Tensor:
    """Binary erosion of [H,W] by a (2r+1)² square (= r/2 iterations of a 5×5 kernel)."""
    if radius <= 0:
        return mask.bool()
    # outside the frame counts as uncovered: content cut by the frame edge is eroded like a silhouette
    x = F.pad((~mask.bool()).float()[None, None], (radius, radius, radius, radius), value=1.0)
    return ~(F.max_pool2d(x, 2 * radius + 1, stride=1)[0, 0] > 0)


def depth_edges(depth: torch.Tensor, focal_px: float, max_slope: float = 8.0) -> torch.Tensor:
    """[H,W] bool: pixels whose 3×3 neighbourhood spans a depth jump steeper than ``max_slope``.

    Occlusion boundaries inside the silhouette (a nose in front of a cheek) are not mask edges, yet
    pixels there mix two surfaces; they join the mask boundary before erosion. A smooth surface with
    depth slope s changes depth by 2·s·d/f over a 3×3 window (f = focal length in pixels), so the test
    is resolution independent; slope 8 (view cosine ≈ 0.12) flags true jumps and grazing surfaces.
    """
    d = depth.reshape(1, 1, *depth.shape[-2:])
    covered = d > 0
    big = torch.where(covered, d, torch.full_like(d, float("inf")))
    hi = F.max_pool2d(torch.where(covered, d, torch.zeros_like(d)), 3, stride=1, padding=1)
    lo = -F.max_pool2d(-big, 3, stride=1, padding=1)
    return ((hi - lo) > max_slope * 2.0 * d / focal_px)[0, 0] & covered[0, 0]


def backprojection_mask(mask: torch.Tensor, cosine: torch.Tensor, depth: torch.Tensor, focal_px: float, cos_threshold: float, radius: int, max_slope: float = 8.0) -> torch.Tensor:
    """The view's pixel mask for back-projection: covered ∧ cos > threshold ∧ off occlusion edges, eroded."""
    ok = (mask > 0.5) & (cosine > cos_threshold) & ~depth_edges(depth, focal_px, max_slope)
    return erode(ok, radius)


def view_cosine(normal_world: torch.Tensor, camera: Cameras) -> torch.Tensor:
    """Per-pixel cosine [B,H,W] between the surface normal and the direction toward the camera."""
    _, d = camera.rays()
    return -(normal_world * d.to(normal_world)).sum(-1)


@dataclass
class TexelProjection:
    """Where the covered texels land in one view (flattened over ``index``)."""

    index: torch.Tensor  # [N] flat texel indices (covered texels)
    pixel: torch.Tensor  # [N,2] view pixel coordinates (x, y; centres at +0.5)
    visible: torch.Tensor  # [N] bool: in frame, in front of the camera and passing the depth test
    cosine: torch.Tensor  # [N] cosine between texel normal and the direction to the camera


def project_texels(texels: TexelGeometry, camera: Cameras, depth: torch.Tensor, depth_tolerance: float = 0.01) -> TexelProjection:
    """Project covered texels into ``camera`` (one camera) and depth-test them against ``depth`` [H,W].

    A texel is visible when the view's depth at its (nearest) pixel agrees with the texel's own camera
    depth within ``depth_tolerance`` × depth (relative, so the test scales with camera distance).
    """
    idx = torch.nonzero(texels.covered.reshape(-1)).flatten()
    p = texels.position.reshape(-1, 3)[idx]
    n = texels.normal.reshape(-1, 3)[idx]
    cam = camera.to(p.device)
    z = cam.to_camera(p[None])[0, :, 2]
    pix = cam.project(p[None])[0]
    h, w = depth.shape[-2:]
    j = pix[:, 0].floor().long()
    i = pix[:, 1].floor().long()
    in_frame = (z > 1e-6) & (j >= 0) & (j < w) & (i >= 0) & (i < h)
    d = depth.reshape(h, w)[i.clamp(0, h - 1), j.clamp(0, w - 1)]
    visible = in_frame & (d > 0) & ((z - d).abs() <= depth_tolerance * z)
    to_cam = F.normalize(cam.position[0][None] - p, dim=-1)
    cosine = (n * to_cam).sum(-1)
    return TexelProjection(idx, pix, visible, cosine)


def sample_at(image: torch.Tensor, pix: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Sample image [H,W,C] at pixel coordinates [N,2] (x, y; pixel centres at +0.5) → [N,C]."""
    h, w, _ = image.shape
    g = torch.stack([pix[:, 0] / w * 2 - 1, pix[:, 1] / h * 2 - 1], dim=-1)[None, None].to(image)
    out = F.grid_sample(image.permute(2, 0, 1)[None], g, mode=mode, padding_mode="border", align_corners=False)
    return out[0, :, 0].transpose(0, 1)


def sample_in_crop(crop: torch.Tensor, box: CropBox, pix: torch.Tensor) -> torch.Tensor:
    """Sample a crop image [S,S,C] (made with ``box``) at full-view pixel coordinates [N,2]."""
    return sample_at(crop, box.to_crop(pix, crop.shape[0]))


def fill_holes(texture: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Push-pull fill: texels where ``known`` [T,T] is False get a smooth continuation of the known ones.

    Known texels keep their value exactly. Texels next to known ones first take their known neighbours'
    mean (two rings: seam dilation from each chart's own border), then push-pull fills the rest
    (inside-chart holes, the far gutter), in O(T²).
    """
    if not bool(known.any()):
        return texture.clone()
    x = texture.permute(2, 0, 1)[None].float()
    wt = known.float()[None, None]
    # First grow each chart by two rings of texels from its own border (the mean of the known 8-neighbours):
    # a bilinear lookup inside a chart reaches one texel past its edge, and push-pull alone would fill that
    # texel from coarse levels that average in the next chart across the gutter (colour bleeding at seams).
    # Charts are packed at least 2 texels apart (unwrap_uv), so a ring never takes another chart's colour.
    levels = [_grow_known(x * wt, wt, rings=2)]
    while min(levels[-1][1].shape[-2:]) > 1 and bool((levels[-1][1] <= 0).any()):
        s, wl = levels[-1]
        levels.append((F.avg_pool2d(s, 2, ceil_mode=True), F.avg_pool2d(wl, 2, ceil_mode=True)))
    s, wl = levels[-1]
    colour = s / wl.clamp_min(1e-12)
    if bool((wl <= 0).any()):  # coarsest level still has gaps (tiny textures): use the global mean
        mean = levels[0][0].sum((-1, -2), keepdim=True) / levels[0][1].sum()
        colour = torch.where(wl > 0, colour, mean)
    for s, wl in reversed(levels[:-1]):
        up = F.interpolate(colour, size=s.shape[-2:], mode="bilinear", align_corners=False)
        own = s / wl.clamp_min(1e-12)
        a = wl.clamp(0, 1)
        colour = own * a + up * (1 - a)
    out = colour[0].permute(1, 2, 0).to(texture.dtype)
    return torch.where(known[..., None], texture, out)


def _grow_known(s: torch.Tensor, w: torch.Tensor, rings: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``rings`` rounds of: unknown texels (w = 0) next to known ones take their known 8-neighbours' mean.
    s [1,C,H,W] weighted sums, w [1,1,H,W] in {0, 1}; returns the grown pair (w stays 0/1)."""
    ones = torch.ones(1, 1, 3, 3, dtype=s.dtype, device=s.device)
    for _ in range(rings):
        ns = F.conv2d(s, ones.expand(s.shape[1], 1, 3, 3), padding=1, groups=s.shape[1])
        nw = F.conv2d(w, ones, padding=1)
        new = (w <= 0) & (nw > 0)
        if not bool(new.any()):
            break
        s = torch.where(new, ns / nw.clamp_min(1e-12), s)
        w = torch.where(new, torch.ones_like(w), w)
    return s, w


@dataclass
class TextureState:
    """The texture being painted: colours, which texels are painted, and by how head-on a view.

    Two textures, as the authors' texture system keeps them: ``texture``/``painted`` is what
    back-projection wrote (the eroded, head-on part of each view: the final texture), and
    ``shown``/``shown_mask`` is what the next views render where nothing is painted: the colour a texel
    had in the latest view whose generated (or portrait) region saw it, even where the erosion kept it
    from being painted. Texels neither painted nor shown render grey 0.5."""

    texture: torch.Tensor  # [T,T,3]
    painted: torch.Tensor  # [T,T] bool
    cosine: torch.Tensor  # [T,T] view–normal cosine of the view that painted the texel (-1 unpainted)
    locked: torch.Tensor  # [T,T] bool: painted from the reference portrait (never overwritten)
    shown: Optional[torch.Tensor] = None  # [T,T,3] latest generated colour of each texel (for rendering)
    shown_mask: Optional[torch.Tensor] = None  # [T,T] bool: ``shown`` holds a colour

    def __post_init__(self) -> None:
        if self.shown is None:
            self.shown = self.texture.clone()
        if self.shown_mask is None:
            self.shown_mask = torch.zeros_like(self.painted)

    @staticmethod
    def blank(size: int, device: torch.device | str = "cpu", grey: float = 0.5) -> "TextureState":
        return TextureState(
            torch.full((size, size, 3), grey, device=device),
            torch.zeros(size, size, dtype=torch.bool, device=device),
            torch.full((size, size), -1.0, device=device),
            torch.zeros(size, size, dtype=torch.bool, device=device),
        )

    def show(self, proj: "TexelProjection", sample: torch.Tensor, pixel_mask: torch.Tensor) -> None:
        """Record ``sample`` [N,3] as the shown colour of the visible texels landing in ``pixel_mask`` [H,W]
        (the view's generated region), in place."""
        h, w = pixel_mask.shape
        j = proj.pixel[:, 0].floor().long().clamp(0, w - 1)
        i = proj.pixel[:, 1].floor().long().clamp(0, h - 1)
        ok = proj.visible & pixel_mask[i, j]
        idx = proj.index[ok]
        self.shown.view(-1, 3)[idx] = sample[ok].to(self.shown).clamp(0, 1)
        self.shown_mask.view(-1)[idx] = True

    def working(self, covered: torch.Tensor, grey: float = 0.5) -> torch.Tensor:
        """The texture the inpainting views render: painted texels' colours, else the shown colour, else
        ``grey`` (the authors' 0.5 initialisation: no colour continued from painted texels), and the
        gutters between UV charts continued from each chart's own border (so a bilinear lookup at a seam
        reads no foreign colour: a region nothing has reached renders exactly ``grey``)."""
        base = torch.where(self.shown_mask[..., None], self.shown, torch.full_like(self.texture, float(grey)))
        tex = torch.where(self.painted[..., None], self.texture, base)
        return fill_holes(tex, covered)

    def filled(self) -> torch.Tensor:
        """The texture with holes and gutters filled (what gets rendered and saved)."""
        return fill_holes(self.texture, self.painted)


def backproject(
    state: TextureState,
    proj: TexelProjection,
    sample: torch.Tensor,
    pixel_mask: torch.Tensor,
    cos_threshold: float = 0.0,
    policy: str = "first",
    best_cosine_margin: float = 0.05,
    lock: bool = False,
) -> torch.Tensor:
    """Write ``sample`` [N,3] (the view's colour at each projected texel) into ``state`` in place.

    ``pixel_mask`` [H,W] bool is the view's eroded back-projection mask in view pixels. Returns the
    [T,T] bool mask of texels written.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown back-projection policy {policy!r}: use one of {POLICIES}")
    h, w = pixel_mask.shape
    j = proj.pixel[:, 0].floor().long().clamp(0, w - 1)
    i = proj.pixel[:, 1].floor().long().clamp(0, h - 1)
    ok = proj.visible & (proj.cosine > cos_threshold) & pixel_mask[i, j]
    flat_painted = state.painted.reshape(-1)[proj.index]
    if policy == "first":
        ok = ok & ~flat_painted
    else:
        better = proj.cosine > state.cosine.reshape(-1)[proj.index] + best_cosine_margin
        ok = ok & (~flat_painted | (better & ~state.locked.reshape(-1)[proj.index]))
    idx = proj.index[ok]
    t = state.texture.view(-1, 3)
    t[idx] = sample[ok].to(t).clamp(0, 1)
    state.painted.view(-1)[idx] = True
    state.cosine.view(-1)[idx] = proj.cosine[ok].to(state.cosine)
    if lock:
        state.locked.view(-1)[idx] = True
    written = torch.zeros_like(state.painted)
    written.view(-1)[idx] = True
    return written
