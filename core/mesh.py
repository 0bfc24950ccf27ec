"""The pack's head mesh type and its file formats (GLB, OBJ+MTL+PNG) through trimesh.

Positions live in the world frame of ``core.camera`` (+y up, face toward +z). UVs are per corner:
``uv_faces[f, k]`` indexes ``uvs`` for corner k of face f, so seams need no duplicated positions.
UV convention: u to the right, v up (v = 0 is the *bottom* row of ``texture``), as in OpenGL and
OBJ; glTF's top-down v is handled by trimesh on export/import. ``texture`` is [H,W,3] float in 0..1,
row 0 at the top.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, replace
from typing import Optional

import numpy as np
import torch

from .held_tensors import held_tensors


def vertex_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """Area-weighted unit vertex normals of [N,3] or [B,N,3] positions (differentiable)."""
    v = vertices
    f = faces.long()
    d = v.dim() - 2  # index_select: its backward is one index_add (v[..., idx, :]'s sorts the indices first)
    p0, p1, p2 = v.index_select(d, f[:, 0]), v.index_select(d, f[:, 1]), v.index_select(d, f[:, 2])
    fn = torch.cross(p1 - p0, p2 - p0, dim=-1)  # length = 2 * area: area weighting for free
    vn = torch.zeros_like(v)
    for k in range(3):
        vn = vn.index_add(v.dim() - 2, f[:, k], fn)
    return torch.nn.functional.normalize(vn, dim=-1, eps=1e-12)


@dataclass
class HeadMesh:
    vertices: torch.Tensor  # [N,3] float32
    faces: torch.Tensor  # [M,3] int64, counter-clockwise seen from outside
    uvs: Optional[torch.Tensor] = None  # [K,2] float32
    uv_faces: Optional[torch.Tensor] = None  # [M,3] int64 into uvs
    texture: Optional[torch.Tensor] = None  # [H,W,3] float32 0..1
    vertex_colors: Optional[torch.Tensor] = None  # [N,3] float32 0..1

    def _comfy_cache_tensors(self) -> list:
        """Its tensors, for a host's RAM-pressure cache (core/held_tensors.py)."""
        return held_tensors(self)

    def __post_init__(self) -> None:
        self.vertices = torch.as_tensor(self.vertices, dtype=torch.float32)
        self.faces = torch.as_tensor(self.faces, dtype=torch.int64)
        if self.vertices.dim() != 2 or self.vertices.shape[-1] != 3:
            raise ValueError(f"HeadMesh vertices must be [N,3], got {tuple(self.vertices.shape)}")
        if self.faces.dim() != 2 or self.faces.shape[-1] != 3:
            raise ValueError(f"HeadMesh faces must be [M,3], got {tuple(self.faces.shape)}")
        if (self.uvs is None) != (self.uv_faces is None):
            raise ValueError("HeadMesh needs both uvs and uv_faces, or neither")
        if self.uvs is not None:
            self.uvs = torch.as_tensor(self.uvs, dtype=torch.float32)
            self.uv_faces = torch.as_tensor(self.uv_faces, dtype=torch.int64)
            if self.uv_faces.shape != self.faces.shape:
                raise ValueError("HeadMesh uv_faces must have the shape of faces")

    # ------------------------------------------------------------------ basics
    @property
    def device(self) -> torch.device:
        return self.vertices.device

    @property
    def has_uv(self) -> bool:
        return self.uvs is not None

    def to(self, device: torch.device | str) -> "HeadMesh":
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return HeadMesh(mv(self.vertices), mv(self.faces), mv(self.uvs), mv(self.uv_faces), mv(self.texture), mv(self.vertex_colors))

    def detach(self) -> "HeadMesh":
        dt = lambda t: None if t is None else t.detach()  # noqa: E731
        return HeadMesh(dt(self.vertices), self.faces, dt(self.uvs), self.uv_faces, dt(self.texture), dt(self.vertex_colors))

    def with_(self, **changes) -> "HeadMesh":
        return replace(self, **changes)

    def face_normals(self, unit: bool = True) -> torch.Tensor:
        v = self.vertices[self.faces]
        n = torch.cross(v[:, 1] - v[:, 0], v[:, 2] - v[:, 0], dim=-1)
        return torch.nn.functional.normalize(n, dim=-1) if unit else n

    def vertex_normals(self) -> torch.Tensor:
        """Area-weighted unit vertex normals [N,3] (differentiable in the positions)."""
        return vertex_normals(self.vertices, self.faces)

    def area(self) -> float:
        return float(self.face_normals(unit=False).norm(dim=-1).sum() / 2)

    def bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.vertices.min(0).values, self.vertices.max(0).values

    # ------------------------------------------------------------------ trimesh bridge
    def to_trimesh(self):
        """A trimesh.Trimesh; with UVs the vertices are split at UV seams (glTF needs per-vertex UVs)."""
        import trimesh
        from PIL import Image

        v = self.vertices.detach().cpu().numpy()
        f = self.faces.detach().cpu().numpy()
        if not self.has_uv:
            vc = None
            if self.vertex_colors is not None:
                vc = (self.vertex_colors.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)
            vn = self.vertex_normals().detach().cpu().numpy()
            return trimesh.Trimesh(v, f, vertex_normals=vn, vertex_colors=vc, process=False)
        uv = self.uvs.detach().cpu().numpy()
        ft = self.uv_faces.detach().cpu().numpy()
        pairs = np.stack([f.reshape(-1), ft.reshape(-1)], axis=1)
        uniq, inverse = np.unique(pairs, axis=0, return_inverse=True)
        inverse = inverse.reshape(-1)
        tex = self.texture
        if tex is None:
            tex = torch.full((4, 4, 3), 0.5)
        img = Image.fromarray((tex.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8))
        material = trimesh.visual.material.PBRMaterial(baseColorTexture=img, metallicFactor=0.0, roughnessFactor=1.0)
        visual = trimesh.visual.TextureVisuals(uv=uv[uniq[:, 1]], material=material)
        vn = self.vertex_normals().detach().cpu().numpy()[uniq[:, 0]]  # smooth shading across UV seams
        return trimesh.Trimesh(v[uniq[:, 0]], inverse.reshape(-1, 3), vertex_normals=vn, visual=visual, process=False)

    @staticmethod
    def from_trimesh(tm) -> "HeadMesh":
        """From a trimesh.Trimesh (or a Scene, whose geometry is concatenated in world space)."""
        import trimesh

        if isinstance(tm, trimesh.Scene):
            geoms = tm.dump(concatenate=False) if hasattr(tm, "dump") else list(tm.geometry.values())
            if not geoms:
                raise ValueError("the file holds no mesh")
            tm = geoms[0] if len(geoms) == 1 else trimesh.util.concatenate(geoms)
        v = np.asarray(tm.vertices, dtype=np.float32)
        f = np.asarray(tm.faces, dtype=np.int64)
        uv = getattr(tm.visual, "uv", None)
        if uv is None or len(uv) != len(v):
            vc = None
            if getattr(tm.visual, "kind", None) == "vertex":
                vc = torch.from_numpy(np.asarray(tm.visual.vertex_colors)[:, :3].astype(np.float32) / 255)
            # weld duplicated positions so the surface is one connected, closed sheet again
            pos, inv = np.unique(v, axis=0, return_inverse=True)
            if vc is not None:
                vc = vc[torch.from_numpy(np.unique(inv.reshape(-1), return_index=True)[1])]
            return HeadMesh(torch.from_numpy(pos), torch.from_numpy(inv.reshape(-1)[f]), vertex_colors=vc)
        # split vertices carry the UVs: weld positions, keep the split vertices' UVs per corner
        pos, inv = np.unique(v, axis=0, return_inverse=True)
        inv = inv.reshape(-1)
        texture = None
        mat = getattr(tm.visual, "material", None)
        img = None
        if mat is not None:
            img = getattr(mat, "baseColorTexture", None) or getattr(mat, "image", None)
        if img is not None:
            arr = np.asarray(img.convert("RGB"), dtype=np.float32) / 255.0
            texture = torch.from_numpy(arr)
        return HeadMesh(
            torch.from_numpy(pos), torch.from_numpy(inv[f]), torch.from_numpy(np.asarray(uv, dtype=np.float32)), torch.from_numpy(f), texture
        )

    # ------------------------------------------------------------------ files
    def save(self, path: str) -> str:
        """Write ``.glb`` or ``.obj`` (with ``.mtl`` and ``.png`` beside it when textured); returns path."""
        ext = os.path.splitext(path)[1].lower()
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        tm = self.to_trimesh()
        if ext == ".glb":
            with open(path, "wb") as fh:
                # normals included: three.js viewers (ComfyUI's Preview3D) otherwise shade flat
                fh.write(tm.export(file_type="glb", include_normals=True))
        elif ext == ".obj":
            self._save_obj(path)
        else:
            raise ValueError(f"unsupported mesh format {ext!r}: use .glb or .obj")
        return path

    def _save_obj(self, path: str) -> None:
        """OBJ with per-corner UVs kept as they are (no seam splitting), plus MTL + PNG texture."""
        from PIL import Image

        base = os.path.splitext(os.path.basename(path))[0]
        v = self.vertices.detach().cpu().numpy()
        f = self.faces.detach().cpu().numpy() + 1
        lines = []
        if self.has_uv:
            lines.append(f"mtllib {base}.mtl\nusemtl head\n")
        lines.append("".join(f"v {x:.7g} {y:.7g} {z:.7g}\n" for x, y, z in v))
        if self.has_uv:
            uv = self.uvs.detach().cpu().numpy()
            ft = self.uv_faces.detach().cpu().numpy() + 1
            lines.append("".join(f"vt {a:.7g} {b:.7g}\n" for a, b in uv))
            lines.append("".join(f"f {a}/{ta} {b}/{tb} {c}/{tc}\n" for (a, b, c), (ta, tb, tc) in zip(f, ft)))
            tex = self.texture if self.texture is not None else torch.full((4, 4, 3), 0.5)
            Image.fromarray((tex.detach().cpu().clamp(0, 1).numpy() * 255).round().astype(np.uint8)).save(
                os.path.join(os.path.dirname(os.path.abspath(path)), f"{base}.png")
            )
            with open(os.path.join(os.path.dirname(os.path.abspath(path)), f"{base}.mtl"), "w") as fh:
                fh.write(f"newmtl head\nKa 1 1 1\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nmap_Kd {base}.png\n")
        else:
            lines.append("".join(f"f {a} {b} {c}\n" for a, b, c in f))
        with open(path, "w") as fh:
            fh.write("".join(lines))

    @staticmethod
    def load(path: str) -> "HeadMesh":
        import trimesh

        if not os.path.isfile(path):
            raise FileNotFoundError(f"mesh file not found: {path}")
        try:
            tm = trimesh.load(path, process=False)  # (maintain_order would drop per-corner OBJ UVs)
        except Exception as exc:  # trimesh raises many types for broken files
            raise ValueError(f"could not read mesh file {path}: {exc}") from exc
        return HeadMesh.from_trimesh(tm)


# ---------------------------------------------------------------------- GLB extras
_GLB_MAGIC, _GLB_JSON = 0x46546C67, 0x4E4F534A  # "glTF", "JSON"


def _glb_chunks(path: str) -> tuple[dict, bytes]:
    """(the JSON chunk parsed, every byte after it) of a binary glTF file."""
    import json
    import struct

    with open(path, "rb") as fh:
        data = fh.read()
    if len(data) < 20:
        raise ValueError(f"{path} is not a GLB file (too short)")
    magic, version, _length = struct.unpack_from("<III", data, 0)
    chunk_len, chunk_type = struct.unpack_from("<II", data, 12)
    if magic != _GLB_MAGIC or version != 2 or chunk_type != _GLB_JSON:
        raise ValueError(f"{path} is not a glTF 2.0 binary file")
    return json.loads(data[20:20 + chunk_len].decode("utf-8")), data[20 + chunk_len:]


def write_glb_extras(path: str, extras: dict) -> None:
    """Merge ``extras`` into the GLB's ``asset.extras`` (glTF's place for application data), in place.

    Used to keep the portrait's camera with a saved head: the head is saved in the sculpting frame, and a
    later evaluation needs the camera in that same frame."""
    import json
    import struct

    doc, rest = _glb_chunks(path)
    asset = doc.setdefault("asset", {"version": "2.0"})
    asset.setdefault("extras", {}).update(extras)
    text = json.dumps(doc, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 4)  # chunks are 4-byte aligned, JSON padded with spaces
    with open(path, "wb") as fh:
        fh.write(struct.pack("<III", _GLB_MAGIC, 2, 12 + 8 + len(text) + len(rest)))
        fh.write(struct.pack("<II", len(text), _GLB_JSON))
        fh.write(text)
        fh.write(rest)


#: ``asset.extras`` key of a saved head's reference camera: {"eg3d_label": 25 floats, "height": H, "width": W}
REFERENCE_CAMERA_EXTRA = "idsculpt_reference_camera"


def read_glb_extras(path: str) -> dict:
    """The GLB's ``asset.extras`` ({} when it has none)."""
    doc, _ = _glb_chunks(path)
    extras = doc.get("asset", {}).get("extras", {})
    return extras if isinstance(extras, dict) else {}


def decimate(mesh: HeadMesh, max_faces: int) -> HeadMesh:
    """Quadric decimation (geometry only) to at most about ``max_faces`` faces; the mesh itself when it
    is already that small. Used where a dense mesh only needs its shape: UV unwrapping (xatlas time grows
    quickly with faces) and the landmarks' occlusion test."""
    m = mesh.faces.shape[0]
    if m <= max_faces:
        return mesh
    import fast_simplification

    v = mesh.vertices.detach().cpu().numpy().astype(np.float32)
    f = mesh.faces.detach().cpu().numpy().astype(np.int64)
    reduction = 1.0 - float(max_faces) / m
    v2, f2 = fast_simplification.simplify(v, f, target_reduction=reduction)
    if len(f2) == 0:
        raise RuntimeError(f"decimating a {m}-face mesh to {max_faces} faces left nothing: raise max_faces")
    return HeadMesh(torch.from_numpy(np.ascontiguousarray(v2, dtype=np.float32)), torch.from_numpy(np.ascontiguousarray(f2, dtype=np.int64)))
