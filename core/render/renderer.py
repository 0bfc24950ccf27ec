"""``render_mesh``: every image the pipeline needs from a mesh and a batch of cameras, in one call.

All images are [B,H,W,C] with row 0 at the top (ComfyUI's IMAGE layout); no flips are needed
because ``Cameras.full_projection`` puts clip y = -1 at the top row. Everything is differentiable
w.r.t. the vertex positions (including through the silhouette when ``antialias=True``), the vertex
colours and the texture.

Background values are 0 in every field. With antialiasing, silhouette pixels of ``mask``,
``normal_world``, ``normal_view`` and ``color`` are blended with the background (coverage-
premultiplied), so composites are linear: the diffusion normal image is
``0.5 * (normal_view + mask) + (1 - mask) * background`` (see ``RenderOutput.normal_image``).
``depth``, ``disparity``, ``uv`` and ``face_id`` are point samples at the pixel centre (blending a
depth or a UV with the background would invent values that exist nowhere on the surface).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from ..camera import Cameras
from ..mesh import vertex_normals
from .backend import RenderBackend, get_backend


@dataclass
class RenderOutput:
    mask: torch.Tensor  # [B,H,W,1] coverage 0..1 (antialiased when requested)
    depth: torch.Tensor  # [B,H,W,1] camera-space z, 0 on background
    disparity: torch.Tensor  # [B,H,W,1] inverse depth normalised to 0..1 per image over covered pixels
    normal_world: torch.Tensor  # [B,H,W,3] unit world normals (premultiplied by coverage at silhouettes)
    normal_view: torch.Tensor  # [B,H,W,3] unit camera normals, x right, y up, z toward the camera
    color: Optional[torch.Tensor]  # [B,H,W,3] vertex colours or texture, ``background`` outside
    uv: Optional[torch.Tensor]  # [B,H,W,2]
    face_id: torch.Tensor  # [B,H,W] int64, -1 on background
    rast: torch.Tensor  # [B,H,W,4] (u, v, z/w, triangle_id + 1)

    @property
    def coverage(self) -> torch.Tensor:
        """[B,H,W,1] hard (not antialiased) coverage of pixel centres, as float."""
        return (self.face_id >= 0).unsqueeze(-1).to(self.depth.dtype)

    def normal_image(self, background: Sequence[float] = (0.5, 0.5, 1.0)) -> torch.Tensor:
        """The normal map as an image for diffusion: (normal_view + 1) / 2 over ``background``.

        Uses the premultiplied form so antialiased silhouettes blend correctly with the background.
        """
        bg = torch.as_tensor(background, dtype=self.normal_view.dtype, device=self.normal_view.device)
        return (0.5 * (self.normal_view + self.mask) + (1 - self.mask) * bg).clamp(0, 1)


def _as_batched(x: torch.Tensor, bsz: int, what: str, n: Optional[int] = None) -> torch.Tensor:
    """[N,C] -> [1,N,C]; check a [B,N,C] batch is 1 or ``bsz``."""
    if x.dim() == 2:
        x = x[None]
    if x.dim() != 3 or x.shape[0] not in (1, bsz):
        raise ValueError(f"render_mesh: {what} must be [N,C] or [B,N,C] with B = 1 or {bsz} cameras, got {tuple(x.shape)}")
    if n is not None and x.shape[1] != n:
        raise ValueError(f"render_mesh: {what} has {x.shape[1]} rows but the mesh has {n} vertices")
    return x


def render_mesh(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    cameras: Cameras,
    vertex_colors: Optional[torch.Tensor] = None,
    uvs: Optional[torch.Tensor] = None,
    uv_faces: Optional[torch.Tensor] = None,
    texture: Optional[torch.Tensor] = None,
    antialias: bool = True,
    background: float | Sequence[float] | torch.Tensor = 0.0,
    backend: Optional[str | RenderBackend] = None,
    check_inputs: bool = True,
) -> RenderOutput:
    """Render a triangle mesh from B cameras (see the module docstring for the conventions).

    vertices [N,3] or [B,N,3] world positions; faces [M,3]; cameras: B cameras sharing H, W;
    vertex_colors [N,3] / [B,N,3]; uvs [K,2] with uv_faces [M,3] and texture [Ht,Wt,3] or
    [B,Ht,Wt,3] (v up, row 0 = top). The texture wins over vertex colours when both are given.
    backend: "torch" | "nvdiffrast" | None (nvdiffrast on CUDA when available, else torch).
    check_inputs: the face-index range and finite-vertex checks read values back from the GPU (three
    host syncs); callers that render their own valid meshes every step (the sculpt loop, which checks
    its loss and gradients once per step) turn them off so the CPU keeps queueing work.
    """
    if not isinstance(cameras, Cameras):
        raise TypeError(f"render_mesh: cameras must be core.camera.Cameras, got {type(cameras).__name__}")
    bsz, h, w = len(cameras), cameras.height, cameras.width
    if not isinstance(vertices, torch.Tensor) or vertices.shape[-1] != 3 or vertices.dim() not in (2, 3):
        raise ValueError(f"render_mesh: vertices must be [N,3] or [B,N,3], got {getattr(vertices, 'shape', type(vertices))}")
    if vertices.dim() == 3 and vertices.shape[0] not in (1, bsz):
        raise ValueError(f"render_mesh: vertices batch {vertices.shape[0]} must be 1 or the {bsz} cameras")
    faces = torch.as_tensor(faces)
    if faces.dim() != 2 or faces.shape[-1] != 3 or faces.dtype.is_floating_point:
        raise ValueError(f"render_mesh: faces must be an integer [M,3] tensor, got {tuple(faces.shape)} {faces.dtype}")
    n = vertices.shape[-2]
    if check_inputs:
        if faces.numel() and (int(faces.min()) < 0 or int(faces.max()) >= n):
            raise ValueError(f"render_mesh: faces index vertex {int(faces.max())} but there are only {n} vertices")
        if not bool(torch.isfinite(vertices).all()):
            raise ValueError("render_mesh: vertices contain NaN or Inf (the optimisation diverged?)")
    dev = vertices.device
    if vertices.dtype != torch.float32:
        vertices = vertices.float()
    cameras = cameras.to(dev) if cameras.device != dev else cameras
    be = get_backend(backend, dev)
    tri = faces.to(device=dev, dtype=torch.int32).contiguous()

    # Clip positions [B,N,4]: w is the camera z (projection row 3 = (0,0,1,0)).
    verts_b = _as_batched(vertices, bsz, "vertices").expand(bsz, -1, -1)
    homo = torch.cat([verts_b, torch.ones_like(verts_b[..., :1])], dim=-1)
    clip = (homo @ cameras.full_projection().to(homo).transpose(1, 2)).contiguous()
    rast = be.rasterize(clip, tri, (h, w), check_values=False)  # the face range was checked above (if asked)
    face_id = rast[..., 3].detach().round().long() - 1
    hard = (face_id >= 0).unsqueeze(-1)
    cover = hard.to(clip.dtype)

    depth, _ = be.interpolate(clip[..., 3:4].contiguous(), rast, tri)
    depth = depth * cover
    disparity = _normalised_disparity(depth, hard)

    vn = vertex_normals(vertices if vertices.dim() == 3 else vertices[None], tri)  # [1|B,N,3]
    n_world, _ = be.interpolate(vn.contiguous(), rast, tri)
    n_world = torch.nn.functional.normalize(n_world, dim=-1, eps=1e-12) * cover
    r_w2c = cameras.world2cam()[:, :3, :3].to(n_world)  # OpenCV camera: x right, y down, z forward
    n_cam = torch.einsum("bij,bhwj->bhwi", r_w2c, n_world)
    n_view = n_cam * torch.tensor([1.0, -1.0, -1.0], device=dev, dtype=n_cam.dtype)  # -> x right, y up, z back

    uv_img = None
    color = None
    if texture is not None and (uvs is None or uv_faces is None):
        raise ValueError("render_mesh: a texture needs uvs and uv_faces")
    if uvs is not None:
        if uv_faces is None:
            raise ValueError("render_mesh: uvs need uv_faces ([M,3] indices into uvs, one row per face)")
        uv_faces = torch.as_tensor(uv_faces)
        if uv_faces.shape != faces.shape:
            raise ValueError(f"render_mesh: uv_faces must have the shape of faces {tuple(faces.shape)}, got {tuple(uv_faces.shape)}")
        uv_tri = uv_faces.to(device=dev, dtype=torch.int32).contiguous()
        uv_img, _ = be.interpolate(_as_batched(uvs.to(dev).float(), bsz, "uvs").contiguous(), rast, uv_tri)
    if texture is not None:
        tex = texture.to(dev).float()
        if tex.dim() == 3:
            tex = tex[None]
        if tex.dim() != 4 or tex.shape[0] not in (1, bsz):
            raise ValueError(f"render_mesh: texture must be [Ht,Wt,C] or [B,Ht,Wt,C], got {tuple(texture.shape)}")
        color = be.texture(tex.contiguous(), uv_img.contiguous())
    elif vertex_colors is not None:
        vc = _as_batched(vertex_colors.to(dev).float(), bsz, "vertex_colors", n)
        color, _ = be.interpolate(vc.contiguous(), rast, tri)
    if color is not None:
        bg = torch.as_tensor(background, dtype=color.dtype, device=dev)
        if bg.dim() > 1 or (bg.dim() == 1 and bg.shape[0] not in (1, color.shape[-1])):
            raise ValueError(f"render_mesh: background must be a float or {color.shape[-1]} floats, got {tuple(bg.shape)}")
        color = torch.where(hard, color, bg.expand_as(color))

    mask = cover
    if antialias:
        # One antialias pass over all blended channels: the blend weights are shared, so the
        # premultiplied composites stay exact.
        chans = [cover, n_world, n_view] + ([color] if color is not None else [])
        aa = be.antialias(torch.cat(chans, dim=-1).contiguous(), rast, clip, tri)
        mask, n_world, n_view = aa[..., 0:1], aa[..., 1:4], aa[..., 4:7]
        if color is not None:
            color = aa[..., 7:]
    return RenderOutput(
        mask=mask,
        depth=depth,
        disparity=disparity,
        normal_world=n_world,
        normal_view=n_view,
        color=color,
        uv=uv_img,
        face_id=face_id,
        rast=rast,
    )


def _normalised_disparity(depth: torch.Tensor, hard: torch.Tensor) -> torch.Tensor:
    """1/depth mapped to 0..1 per image over the covered pixels (near = 1), 0 on background."""
    inv = torch.where(hard, 1.0 / depth.clamp_min(1e-6), torch.zeros_like(depth))
    big = torch.finfo(inv.dtype).max
    lo = torch.where(hard, inv, torch.full_like(inv, big)).flatten(1).min(dim=1).values
    hi = torch.where(hard, inv, torch.full_like(inv, -big)).flatten(1).max(dim=1).values
    empty = ~hard.flatten(1).any(dim=1)
    lo = torch.where(empty, torch.zeros_like(lo), lo).view(-1, 1, 1, 1)
    hi = torch.where(empty, torch.ones_like(hi), hi).view(-1, 1, 1, 1)
    return torch.where(hard, (inv - lo) / (hi - lo).clamp_min(1e-8), torch.zeros_like(inv))


def compare_backends(
    vertices: torch.Tensor, faces: torch.Tensor, cameras: Cameras, a: str = "torch", b: str = "nvdiffrast"
) -> dict[str, float]:
    """Agreement of two backends on one mesh/cameras: mask IoU, normal cosine, face-id match.

    Used by tests and bench/bench_render.py to check that the pure-torch backend reproduces
    nvdiffrast (the backend the real runs use).
    """
    with torch.no_grad():
        ra = render_mesh(vertices, faces, cameras, backend=a)
        rb = render_mesh(vertices, faces, cameras, backend=b)
    ma, mb = ra.face_id >= 0, rb.face_id >= 0
    both = ma & mb
    inter, union = float(both.sum()), float((ma | mb).sum())
    cos = (ra.normal_view * rb.normal_view).sum(-1)[both]
    aa_diff = (ra.mask - rb.mask).abs()
    return {
        "mask_iou": inter / max(union, 1.0),
        "normal_cos_mean": float(cos.mean()) if cos.numel() else 0.0,
        "face_id_match": float((ra.face_id == rb.face_id)[both].float().mean()) if both.any() else 0.0,
        "depth_max_abs_diff": float((ra.depth - rb.depth).abs()[both.unsqueeze(-1)].max()) if both.any() else 0.0,
        "aa_mask_mean_abs_diff": float(aa_diff.mean()),
        "aa_mask_max_abs_diff": float(aa_diff.max()),
    }
