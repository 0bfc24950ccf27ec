"""The bridge between the pack's head mesh (core.mesh.HeadMesh) and ComfyUI's core ``MESH`` type.

Core ``MESH`` is batched: vertices [B,N,3], faces [B,M,3]. ComfyUI 0.3.64 has nothing more
(comfy_extras/nodes_hunyuan3d.MESH). Newer ComfyUI (``comfy_api.latest.Types.MESH``, May 2026) adds
per-vertex ``uvs`` [B,N,2] in glTF's convention (v down: v = 0 is the texture's top row),
``texture`` [B,H,W,3] in 0..1 (row 0 at the top, as ours), ``normals`` [B,N,3], linear
``vertex_colors`` [B,N,3|4], and ``vertex_counts`` / ``face_counts`` [B] for zero-padded batches of
meshes of different sizes. Both sides use the glTF frame (+y up, the face along +z): no axis change.

HeadMesh keeps UVs per corner (``uv_faces``) with OpenGL's v up and sRGB vertex colours, so:

- head -> MESH: split the vertices at UV seams (one vertex per distinct (position, UV) pair, as the
  GLB writer does), v -> 1 - v, colours sRGB -> linear, normals of the welded surface;
- MESH -> head: take one item (sliced to its counts; a list of per-item tensors works too), weld
  equal positions back into one surface with per-corner UVs, v -> 1 - v, colours linear -> sRGB.

What the host's class carries is feature-detected (its constructor's parameters), so on 0.3.64 the
MESH stays geometry only, as before.
"""
from __future__ import annotations

import importlib
import inspect
import sys
from typing import Any, Optional

import numpy as np
import torch

from ..core.mesh import HeadMesh


class _FallbackMesh:
    """Same shape as 0.3.64's core MESH class, used only if the host has none."""

    def __init__(self, vertices: torch.Tensor, faces: torch.Tensor) -> None:
        self.vertices = vertices
        self.faces = faces


def core_mesh_class() -> type:
    """The class core nodes use for ``MESH``.

    Newer ComfyUI exports it as ``comfy_api.latest.Types.MESH``. On 0.3.64 it lives in
    comfy_extras/nodes_hunyuan3d.py, which ComfyUI loads by file path (sys.modules key = the path
    without ``.py``): take that already loaded class, and import the module only when ComfyUI has not
    (in-process tests), since an import under another name would make a second class.
    """
    try:
        from comfy_api.latest import Types

        cls = getattr(Types, "MESH", None)
        if cls is not None:
            return cls
    except ImportError:
        pass
    for name, module in list(sys.modules.items()):
        if name.replace("\\", "/").endswith("comfy_extras/nodes_hunyuan3d") and hasattr(module, "MESH"):
            return module.MESH
    try:
        return importlib.import_module("comfy_extras.nodes_hunyuan3d").MESH
    except Exception:  # a ComfyUI without the 3D nodes: keep working with the same attributes
        return _FallbackMesh


def core_mesh_fields(cls: Optional[type] = None) -> set[str]:
    """The optional fields the host's MESH constructor takes (empty on 0.3.64)."""
    cls = cls or core_mesh_class()
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):
        return set()
    return {p for p in params if p not in ("self", "vertices", "faces")}


def core_mesh_textured(cls: Optional[type] = None) -> bool:
    """True when the host's MESH carries UVs and a texture (newer ComfyUI)."""
    return {"uvs", "texture"} <= core_mesh_fields(cls)


# --------------------------------------------------------------------------- colour
def srgb_to_linear(c: torch.Tensor) -> torch.Tensor:
    """The sRGB transfer function's inverse (glTF vertex colours are linear)."""
    c = c.clamp(0, 1)
    return torch.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(c: torch.Tensor) -> torch.Tensor:
    c = c.clamp(0, 1)
    return torch.where(c <= 0.0031308, c * 12.92, 1.055 * c ** (1 / 2.4) - 0.055)


# --------------------------------------------------------------------------- head -> MESH
def head_to_core_mesh(head: HeadMesh) -> Any:
    """HeadMesh -> core MESH with a batch of one (float32, int64 faces, CPU); textured where the host
    can carry it (UVs, texture, normals, vertex colours), geometry only otherwise."""
    cls = core_mesh_class()
    fields = core_mesh_fields(cls)
    v = torch.nan_to_num(head.vertices.detach().to("cpu", torch.float32))
    f = head.faces.detach().to("cpu", torch.int64)
    if not fields:
        return cls(v.unsqueeze(0).contiguous(), f.unsqueeze(0).contiguous())
    normals = head.detach().to("cpu").vertex_normals()
    colors = None if head.vertex_colors is None else srgb_to_linear(head.vertex_colors.detach().to("cpu", torch.float32))
    kw: dict = {}
    if head.has_uv and "uvs" in fields:
        # one vertex per distinct (position, UV) pair: glTF-style meshes have one UV per vertex
        pairs = np.stack([f.reshape(-1).numpy(), head.uv_faces.detach().cpu().reshape(-1).numpy()], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        src, uv_idx = torch.from_numpy(uniq[:, 0]), torch.from_numpy(uniq[:, 1])
        uv = head.uvs.detach().to("cpu", torch.float32)[uv_idx]
        kw["uvs"] = torch.stack([uv[:, 0], 1.0 - uv[:, 1]], dim=-1).unsqueeze(0)  # OpenGL v up -> glTF v down
        v, normals = v[src], normals[src]
        colors = None if colors is None else colors[src]
        f = torch.from_numpy(inverse.reshape(-1, 3).astype(np.int64))
        if head.texture is not None and "texture" in fields:
            kw["texture"] = head.texture.detach().to("cpu", torch.float32).clamp(0, 1).unsqueeze(0).contiguous()
    if "normals" in fields:
        kw["normals"] = normals.unsqueeze(0).contiguous()
    if colors is not None and "vertex_colors" in fields:
        kw["vertex_colors"] = colors.unsqueeze(0).contiguous()
    return cls(v.unsqueeze(0).contiguous(), f.unsqueeze(0).contiguous(), **kw)


# --------------------------------------------------------------------------- MESH -> head
def _item(x: Any, index: int, count: Optional[int]) -> Optional[torch.Tensor]:
    """Item ``index`` of a batched tensor [B,...] or a list of per-item tensors, cut to ``count`` rows."""
    if x is None:
        return None
    t = x[index] if isinstance(x, (list, tuple)) else (x[index] if isinstance(x, torch.Tensor) and x.dim() >= 3 else x)
    t = torch.as_tensor(t)
    return t[:count] if count is not None else t


def _batch_size(vertices: Any) -> int:
    if isinstance(vertices, (list, tuple)):
        return len(vertices)
    return vertices.shape[0] if vertices.dim() == 3 else 1


def _count(counts: Any, index: int) -> Optional[int]:
    if counts is None:
        return None
    return int(torch.as_tensor(counts).reshape(-1)[index])


def core_mesh_to_head(mesh: Any, index: int = 0) -> HeadMesh:
    """Item ``index`` of a core MESH -> HeadMesh, with its UVs, texture and vertex colours where the
    MESH has them. Zero-padded batches are cut to their ``vertex_counts`` / ``face_counts``."""
    vertices, faces = getattr(mesh, "vertices", None), getattr(mesh, "faces", None)
    as_list = isinstance(vertices, (list, tuple)) and isinstance(faces, (list, tuple))
    if not as_list and (not isinstance(vertices, torch.Tensor) or not isinstance(faces, torch.Tensor)):
        raise ValueError(f"expected a core MESH with .vertices and .faces tensors, got {type(mesh).__name__}")
    if not as_list:
        if vertices.dim() == 2:
            vertices, faces = vertices.unsqueeze(0), faces.unsqueeze(0)
        if vertices.dim() != 3 or vertices.shape[-1] != 3 or faces.dim() != 3 or faces.shape[-1] != 3:
            raise ValueError(f"core MESH must be vertices [B,N,3] and faces [B,M,3], got {tuple(vertices.shape)} and {tuple(faces.shape)}")
    b = _batch_size(vertices)
    if not -b <= index < b:
        raise ValueError(f"batch index {index} out of range: the MESH holds {b} mesh(es)")
    index = index % b
    nv, nf = _count(getattr(mesh, "vertex_counts", None), index), _count(getattr(mesh, "face_counts", None), index)
    v = _item(vertices, index, nv).detach().to("cpu", torch.float32).clone()
    f = _item(faces, index, nf).detach().to("cpu", torch.int64).clone()
    if v.dim() != 2 or v.shape[-1] != 3 or f.dim() != 2 or f.shape[-1] != 3:
        raise ValueError(f"core MESH item {index} must be vertices [N,3] and faces [M,3], got {tuple(v.shape)} and {tuple(f.shape)}")
    if f.numel() and (int(f.min()) < 0 or int(f.max()) >= v.shape[0]):
        raise ValueError(f"core MESH faces index vertices outside 0..{v.shape[0] - 1}")
    if not torch.isfinite(v).all():
        raise ValueError("core MESH has non-finite vertex positions")
    colors = _item(getattr(mesh, "vertex_colors", None), index, nv)
    if colors is not None:
        colors = linear_to_srgb(colors.detach().to("cpu", torch.float32)[:, :3])
    uvs = _item(getattr(mesh, "uvs", None), index, nv)
    if uvs is None:
        return HeadMesh(v, f, vertex_colors=colors)
    uvs = uvs.detach().to("cpu", torch.float32)
    if uvs.shape != (v.shape[0], 2):
        raise ValueError(f"core MESH uvs of item {index} must be [N,2] for its {v.shape[0]} vertices, got {tuple(uvs.shape)}")
    uvs = torch.stack([uvs[:, 0], 1.0 - uvs[:, 1]], dim=-1)  # glTF v down -> OpenGL v up
    texture = getattr(mesh, "texture", None)
    if texture is not None:
        texture = torch.as_tensor(texture)
        texture = texture[min(index, texture.shape[0] - 1)] if texture.dim() == 4 else texture
        texture = texture[..., :3].detach().to("cpu", torch.float32).clamp(0, 1)
    # weld the seam-split vertices back into one surface; the UVs stay per corner
    pos, inv = np.unique(v.numpy(), axis=0, return_inverse=True)
    inv = torch.from_numpy(inv.reshape(-1).astype(np.int64))
    if colors is not None:
        first = torch.from_numpy(np.unique(inv.numpy(), return_index=True)[1])
        colors = colors[first]
    return HeadMesh(torch.from_numpy(pos), inv[f], uvs, f, texture, colors)
