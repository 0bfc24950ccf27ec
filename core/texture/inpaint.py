"""Progressive texture inpainting (paper §3.3, Eq. 6–7), independent of any diffusion backend.

The loop: paint the reference portrait into the texture first (``project_reference``), then walk the
view plan; at each view render the current texture (painted texels, grey 0.5 where nothing is painted
yet, on a white background: the authors' renderer), crop the head (alpha box × 1.1 → 512), ask an
``Inpainter`` to generate the not-yet-painted region under the view's normal control image, and
back-project the result into the texels that are still unpainted (project.backproject). Finally fill
the holes and the gutters between UV charts (project.fill_holes).

The ``Inpainter`` is anything with ``inpaint(image, generate_mask, normal_control, context) -> image``;
``context`` (ViewContext) carries the view's camera and orbit angles, so an inpainter picks the prompt
pair of the view's direction (a back view gets the back prompt and the "face" negative).
nodes/engines/sampling.py implements it with ComfyUI sampling (blended latents + normalbae ControlNet),
tests implement it with an oracle that renders a ground-truth textured mesh.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Protocol, Sequence

import torch

from ..camera import Cameras
from ..mesh import HeadMesh
from ..stage_types import InterruptFn, ProgressFn
from .project import TexelGeometry, TextureState, backproject, backprojection_mask, project_texels, rasterize_uv, sample_at, sample_in_crop, view_cosine
from .views import CropBox, TextureView, alpha_crop_box, crop_image, default_view_plan, normalbae_control


@dataclass
class ViewContext:
    """Everything an inpainter may want to know about the view besides the three images."""

    index: int  # position in the view plan
    view: TextureView  # elevation / azimuth (degrees) choose the view-dependent prompt
    camera: Cameras  # the full (uncropped) view camera, one camera
    crop: CropBox  # where the crop sits in the full view (pixels)
    crop_size: int
    alpha: torch.Tensor  # [S,S] head coverage in the crop


class Inpainter(Protocol):
    def inpaint(self, image: torch.Tensor, generate_mask: torch.Tensor, normal_control: torch.Tensor, context: ViewContext) -> torch.Tensor:
        """image [S,S,3] 0..1 (current render), generate_mask [S,S] (1 = generate), normal_control [S,S,3]
        (normalbae hint) → the completed view [S,S,3] 0..1. Pixels outside the generate mask are kept by
        the caller whatever the inpainter returns there."""
        ...


@dataclass
class ReferenceView:
    """The input portrait as seen by its own camera (the stage-1 reference camera)."""

    image: torch.Tensor  # [H,W,3] 0..1
    camera: Cameras  # one camera at the image's resolution
    # [H,W] the portrait's whole-head mask (face parsing > 0: face, hair, ears, neck): restricts the
    # projection, and is the region of refinement's reference L1 (the authors' mask.png)
    mask: Optional[torch.Tensor] = None

    def __post_init__(self) -> None:
        img = self.image
        if img.dim() == 4 and img.shape[0] == 1:
            img = img[0]
        if img.dim() != 3 or img.shape[-1] != 3:
            raise ValueError(f"reference image must be [H,W,3] (one RGB image), got {tuple(self.image.shape)}")
        self.image = img.float()
        if len(self.camera) != 1:
            raise ValueError("the reference view needs exactly one camera")
        h, w = img.shape[:2]
        if (self.camera.height, self.camera.width) != (h, w):
            self.camera = self.camera.with_resolution(h, w)
        m = self.mask
        if m is not None:
            m = m.float().reshape(-1, *m.shape[-2:])[0] if m.dim() == 3 else m.float()
            if m.shape != (h, w):
                m = torch.nn.functional.interpolate(m[None, None], size=(h, w), mode="nearest")[0, 0]
            self.mask = m


@dataclass
class InpaintConfig:
    # A field set by one Progressive Inpaint widget has the widget's name (saved workflows match widgets by name).
    render_resolution: int = 512  # size of each full view render before cropping (the node: 2 × resolution)
    resolution: int = 512  # side of the crop handed to the inpainter (SD1.5's native size)
    crop_scale: float = 1.1  # alpha box enlargement
    cos_threshold: float = 0.0  # back-project only where cos(view, normal) exceeds this
    erode_iterations: int = 8  # erosion of the back-projection mask: iterations of a 5×5 kernel at 512 px (see erosion_radius)
    generate_threshold: float = 0.2  # a pixel is to be generated where its painted coverage is below this
    depth_tolerance: float = 0.01  # relative depth-test tolerance of the texel visibility test
    edge_slope: float = 8.0  # depth slope above which a pixel counts as an occlusion edge (eroded like the silhouette)
    policy: str = "first"  # overwrite-or-blend policy, see project.py
    background: float = 1.0  # render background: white, as the authors' texture renderer (nvdiff_rasterizer_inpaint)
    unpainted_grey: float = 0.5  # colour of texels no view has painted yet, as rendered to the next views
    backend: Optional[str] = None  # renderer backend, None = auto

    def erosion_radius(self, resolution: float) -> int:
        """Erosion radius in pixels of an image whose head region is ``resolution`` pixels across.

        n iterations of a 5×5 square = one (4n+1)² square: radius 2n at 512 px. The authors erode their
        512² render (cv2.erode, 8 iterations: 16 px), in which the normalised head's alpha box × 1.1
        spans about the whole frame; so it is 16 px of the 512 crop. The inpaint views pass the crop
        box's side in render pixels (the same 16 crop pixels whatever the render size or head size),
        the reference projection its image size (16 px of the 512 portrait, as theirs)."""
        return int(round(2 * self.erode_iterations * float(resolution) / 512.0))


@dataclass
class InpaintResult:
    mesh: HeadMesh  # with the filled texture
    state: TextureState  # unfilled texture, painted mask, cosines
    texels: TexelGeometry
    views: list[dict] = field(default_factory=list)  # per view: painted texels, generated pixel fraction

    @property
    def painted(self) -> torch.Tensor:
        return self.state.painted


def _check_image(x: torch.Tensor, size: int, what: str) -> torch.Tensor:
    if x.dim() == 4 and x.shape[0] == 1:
        x = x[0]
    if tuple(x.shape) != (size, size, 3):
        raise RuntimeError(f"{what} returned an image of shape {tuple(x.shape)}, expected ({size}, {size}, 3)")
    x = x.float()
    if not bool(torch.isfinite(x).all()):
        raise RuntimeError(f"{what} returned NaN/inf pixels: lower the CFG or check the model (fp16 overflow?)")
    return x.clamp(0, 1)


def render_textured(mesh: HeadMesh, texture: torch.Tensor, camera: Cameras, background: float = 0.0, backend: Optional[str] = None, extra: Optional[torch.Tensor] = None):
    """render_mesh with ``texture``; ``extra`` [T,T,C] is looked up at the same UVs (returned 2nd)."""
    from ..render import get_backend, render_mesh

    out = render_mesh(mesh.vertices, mesh.faces, camera, uvs=mesh.uvs, uv_faces=mesh.uv_faces, texture=texture, antialias=True, background=background, backend=backend)
    looked = None
    if extra is not None:
        be = get_backend(backend, mesh.vertices.device)
        looked = be.texture(extra[None].expand(len(camera), -1, -1, -1).contiguous(), out.uv.contiguous()) * (out.face_id[..., None] >= 0)
    return out, looked


def shade(geometry, texture: torch.Tensor, background: float = 0.0, backend: Optional[str] = None) -> torch.Tensor:
    """Re-texture a cached render (a RenderOutput with ``uv``): [B,H,W,3], differentiable in ``texture``.

    Used where the camera is fixed and only the texture changes (the reference view of refinement):
    one rasterisation, then a texture lookup per step. The silhouette uses the cached antialiased
    coverage as the blend weight.
    """
    from ..render import get_backend

    be = get_backend(backend, texture.device)
    b = geometry.uv.shape[0]
    hard = (geometry.face_id[..., None] >= 0).to(texture.dtype)
    col = be.texture(texture[None].expand(b, -1, -1, -1).contiguous(), geometry.uv.contiguous()) * hard
    m = geometry.mask.to(texture.dtype)
    return col * m + background * (1 - m)


def view_backprojection_mask(out, camera: Cameras, box: CropBox, config: InpaintConfig) -> torch.Tensor:
    """[H,W] bool: the pixels of an inpaint view (a one-camera render) that may be back-projected:
    covered ∧ cos(view, normal) > threshold ∧ off occlusion edges, eroded by 2n pixels of the crop the
    model sees (``box`` is the view's crop box; its side in render pixels maps to the crop)."""
    cos = view_cosine(out.normal_world, camera)[0]
    return backprojection_mask(out.mask[0, ..., 0], cos, out.depth[0, ..., 0], float(camera.focal_pixels()[0]), config.cos_threshold,
                               config.erosion_radius(box.size), config.edge_slope)


def project_reference(mesh: HeadMesh, state: TextureState, texels: TexelGeometry, reference: ReferenceView, config: InpaintConfig) -> torch.Tensor:
    """Paint the reference portrait into ``state`` (the first view of the plan). Returns written texels."""
    cam = reference.camera.to(mesh.vertices.device)
    out, _ = render_textured(mesh, state.texture, cam, config.background, config.backend)
    h, w = reference.image.shape[:2]
    cos = view_cosine(out.normal_world, cam)[0]
    pixmask = backprojection_mask(out.mask[0, ..., 0], cos, out.depth[0, ..., 0], float(cam.focal_pixels()[0]), config.cos_threshold, config.erosion_radius(max(h, w)), config.edge_slope)
    if reference.mask is not None:
        pixmask = pixmask & (reference.mask.to(pixmask.device) > 0.5)
    proj = project_texels(texels, cam, out.depth[0, ..., 0], config.depth_tolerance)
    sample = sample_at(reference.image.to(mesh.vertices.device), proj.pixel)
    seen = out.mask[0, ..., 0] > 0.5
    if reference.mask is not None:
        seen = seen & (reference.mask.to(seen.device) > 0.5)
    state.show(proj, sample, seen)  # the next views render the whole visible portrait, not only its eroded part
    return backproject(state, proj, sample, pixmask, config.cos_threshold, config.policy, lock=True)


def progressive_inpaint(
    mesh: HeadMesh,
    inpainter: Inpainter,
    plan: Optional[Sequence[TextureView]] = None,
    reference: Optional[ReferenceView] = None,
    config: Optional[InpaintConfig] = None,
    texture_size: Optional[int] = None,
    progress: Optional[ProgressFn] = None,
    interrupt: Optional[InterruptFn] = None,
) -> InpaintResult:
    """Texture ``mesh`` (which must have UVs) view by view; see the module docstring."""
    config = config or InpaintConfig()
    plan = list(plan) if plan is not None else default_view_plan()
    if not mesh.has_uv:
        raise ValueError("progressive_inpaint needs a mesh with UVs: run the UV unwrap first")
    if texture_size is None:
        texture_size = mesh.texture.shape[0] if mesh.texture is not None else 1024
    dev = mesh.vertices.device
    texels = rasterize_uv(mesh, texture_size, config.backend)
    if not bool(texels.covered.any()):
        raise RuntimeError("no texel is covered by the UV atlas: the mesh's UVs are degenerate")
    state = TextureState.blank(texture_size, dev)
    total = len(plan) + (1 if reference is not None else 0)
    done = 0
    stats: list[dict] = []
    if reference is not None:
        written = project_reference(mesh, state, texels, reference, config)
        done += 1
        stats.append({"view": "reference", "painted": int(written.sum())})
        if progress:
            progress(done, total, reference.image)
    r = config.render_resolution
    s = config.resolution
    for k, view in enumerate(plan):
        if interrupt:
            interrupt()
        cam = Cameras.orbit(view.elevation, view.azimuth, view.distance, view.fov, r).to(dev)
        # the authors render their inpainting texture: grey 0.5 where nothing is painted yet (not colours
        # continued from painted texels, which would leak skin tone into the back of the head)
        working = state.working(texels.covered, config.unpainted_grey)
        out, painted_px = render_textured(mesh, working, cam, config.background, config.backend, extra=state.painted.float()[..., None])
        alpha = out.mask[0, ..., 0]
        covered_px = alpha > 0.5
        generate = covered_px & (painted_px[0, ..., 0] < config.generate_threshold)
        if not bool(generate.any()):
            stats.append({"view": k, "painted": 0, "generated_fraction": 0.0})
            done += 1
            if progress:
                progress(done, total, None)
            continue
        box = alpha_crop_box(alpha, config.crop_scale)
        image = crop_image(out.color[0], box, s, background=config.background)
        gen_crop = crop_image(generate.float()[..., None], box, s, mode="nearest")[..., 0]
        alpha_crop = crop_image(alpha[..., None], box, s)[..., 0]
        normal_crop = crop_image(normalbae_control(out.normal_view[0], out.mask[0]), box, s, background=(0.5, 0.5, 1.0))
        ctx = ViewContext(k, view, cam, box, s, alpha_crop)
        result = _check_image(inpainter.inpaint(image, gen_crop, normal_crop, ctx), s, "the inpainter")
        composite = result * gen_crop[..., None] + image * (1 - gen_crop[..., None])
        pixmask = view_backprojection_mask(out, cam, box, config)
        proj = project_texels(texels, cam, out.depth[0, ..., 0], config.depth_tolerance)
        sample = sample_in_crop(composite, box, proj.pixel)
        state.show(proj, sample, generate)  # later views render the whole generated region (authors' albedo_inpaint)
        written = backproject(state, proj, sample, pixmask, config.cos_threshold, config.policy)
        stats.append({"view": k, "painted": int(written.sum()), "generated_fraction": float(generate.float().sum() / covered_px.float().sum().clamp_min(1))})
        done += 1
        if progress:
            progress(done, total, composite)
    textured = mesh.with_(texture=state.filled())
    return InpaintResult(textured, state, texels, stats)
