"""The rasteriser interface shared by every backend, and ``get_backend``.

The interface is nvdiffrast's functional API (rasterize / interpolate / texture / antialias) with
nvdiffrast's tensor shapes and layouts, so code written against it runs unchanged on the pure-torch
backend (CPU, tests) and on nvdiffrast (CUDA, real runs):

* ``rasterize(pos [B,N,4] clip, tri [M,3] int32, (H, W)) -> rast [B,H,W,4]`` with
  ``rast = (u, v, z/w, triangle_id + 1)`` and all four channels 0 on background. ``u, v`` are the
  perspective-correct barycentrics of vertex 0 and vertex 1 (vertex 2 gets ``1 - u - v``); pixel
  (i, j) samples clip (x, y) = (2 (j + 0.5) / W - 1, 2 (i + 0.5) / H - 1): row 0 is clip y = -1.
* ``interpolate(attr [N,C] | [1,N,C] | [B,N,C], rast, tri) -> (out [B,H,W,C], None)``.
* ``texture(tex [B|1,Ht,Wt,C], uv [B,H,W,2]) -> [B,H,W,C]`` bilinear, *v up*: uv (0, 0) is the
  bottom-left corner of a texture whose row 0 is the top (the OpenGL/OBJ convention of core.mesh).
* ``antialias(color [B,H,W,C], rast, pos, tri) -> [B,H,W,C]``: analytic silhouette antialiasing
  (nvdiffrast's method; the torch backend also walks across sub-pixel rim triangles to the true
  silhouette), differentiable w.r.t. the colours and, through the edge crossing positions,
  w.r.t. ``pos``.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional

import torch


class RenderBackend:
    """Abstract rasteriser. Subclasses implement the four nvdiffrast-shaped operations."""

    name: str = "abstract"

    def __init__(self, device: torch.device | str | None = None) -> None:
        self.device = torch.device(device) if device is not None else torch.device("cpu")

    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int],
                  check_values: bool = True) -> torch.Tensor:
        """Rasterise clip-space ``pos`` [B,N,4] / triangles ``tri`` [M,3]. ``check_values``: also check the
        triangle indices' range (two host syncs; render_mesh does its own check, or skips it on request)."""
        raise NotImplementedError

    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor) -> tuple[torch.Tensor, None]:
        raise NotImplementedError

    def texture(
        self, tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap"
    ) -> torch.Tensor:
        raise NotImplementedError

    def antialias(
        self,
        color: torch.Tensor,
        rast: torch.Tensor,
        pos: torch.Tensor,
        tri: torch.Tensor,
        topology_hash: Optional[Any] = None,
        pos_gradient_boost: float = 1.0,
    ) -> torch.Tensor:
        raise NotImplementedError

    def topology_hash(self, tri: torch.Tensor) -> Any:
        """Precomputed edge topology for ``antialias`` (reuse it while ``tri`` does not change)."""
        return None

    def __repr__(self) -> str:
        return f"{type(self).__name__}(device={self.device})"


# ---------------------------------------------------------------------------------- validation
def check_rasterize_inputs(pos: torch.Tensor, tri: torch.Tensor, resolution, values: bool = True) -> tuple[torch.Tensor, int, int]:
    """Shared argument checks with messages that say what to change (``values``: the index range too,
    which reads from the GPU)."""
    if not isinstance(pos, torch.Tensor) or not isinstance(tri, torch.Tensor):
        raise TypeError("rasterize needs torch tensors for pos and tri")
    if pos.dim() == 2:
        pos = pos[None]
    if pos.dim() != 3 or pos.shape[-1] != 4:
        raise ValueError(f"rasterize: pos must be clip-space [B,N,4] (or [N,4]), got {tuple(pos.shape)}")
    if tri.dim() != 2 or tri.shape[-1] != 3:
        raise ValueError(f"rasterize: tri must be [M,3] vertex indices, got {tuple(tri.shape)}")
    if tri.dtype not in (torch.int32, torch.int64):
        raise ValueError(f"rasterize: tri must be an integer tensor (int32), got {tri.dtype}")
    try:
        h, w = int(resolution[0]), int(resolution[1])
    except Exception as e:  # noqa: BLE001
        raise ValueError(f"rasterize: resolution must be (height, width), got {resolution!r}") from e
    if h <= 0 or w <= 0 or h > 16384 or w > 16384:
        raise ValueError(f"rasterize: resolution must be between 1 and 16384, got {(h, w)}")
    if values and tri.numel() and (int(tri.min()) < 0 or int(tri.max()) >= pos.shape[1]):
        raise ValueError(f"rasterize: tri indexes vertex {int(tri.max())} but pos has only {pos.shape[1]} vertices")
    return pos, h, w


# ---------------------------------------------------------------------------------- selection
NVDIFFRAST_INSTALL_HINT = (
    "install it with `pip install diffrp-nvdiffrast` (pure Python; it JIT-compiles its CUDA plugin on "
    "first use, which needs the CUDA toolkit's nvcc and a C++ compiler), or pass backend='torch' "
    "(slower pure-torch rasteriser)"
)

_BACKENDS: dict[tuple[str, str], RenderBackend] = {}
_NVDIFFRAST_FAILED: set[str] = set()  # devices where auto tried nvdiffrast and fell back (warned once, not retried)


def _device_key(device: torch.device) -> str:
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    return str(device)


def get_backend(name: Optional[str] = None, device: torch.device | str | None = None) -> RenderBackend:
    """The rasteriser backend ``name`` ("torch" | "nvdiffrast" | None = auto) on ``device``.

    "nvdiffrast_walk" is nvdiffrast's rasteriser with the torch backend's silhouette-walking
    antialiaser (full silhouette gradients for dense meshes, see docs/RENDERING.md).

    Auto picks nvdiffrast on CUDA when it imports and its plugin builds, else the pure-torch backend
    (with a one-time warning on CUDA, since the torch backend is far slower there; a failed build is
    not retried on every render). Backends are
    cached per (name, device) so nvdiffrast's CUDA context is made once per device.
    """
    if isinstance(name, RenderBackend):
        return name
    device = torch.device(device) if device is not None else torch.device("cpu")
    if name is not None:
        name = str(name).lower()
        if name not in ("torch", "nvdiffrast", "nvdiffrast_walk", "auto"):
            raise ValueError(f"unknown render backend {name!r}: use 'torch', 'nvdiffrast', 'nvdiffrast_walk' or None (auto)")
        if name == "auto":
            name = None
    key_dev = _device_key(device)
    if name is None:
        if device.type == "cuda" and key_dev not in _NVDIFFRAST_FAILED:
            try:
                return get_backend("nvdiffrast", device)
            except RuntimeError as e:
                _NVDIFFRAST_FAILED.add(key_dev)
                warnings.warn(f"nvdiffrast unavailable ({e}); using the slower pure-torch rasteriser on {key_dev}")
        name = "torch"
    key = (name, key_dev)
    if key in _BACKENDS:
        return _BACKENDS[key]
    if name == "torch":
        from .torch_backend import TorchBackend

        be: RenderBackend = TorchBackend(device)
    else:
        if device.type != "cuda":
            raise RuntimeError(
                f"the nvdiffrast backend runs on CUDA only (got device {device}); use backend='torch' on CPU"
            )
        from .nvdiffrast_backend import NvdiffrastBackend

        be = NvdiffrastBackend(device, silhouette_walk=(name == "nvdiffrast_walk"))
    _BACKENDS[key] = be
    return be
