"""nvdiffrast backend (CUDA): the same four operations through ``nvdiffrast.torch``.

nvdiffrast is imported lazily, only when this backend is created, so CPU-only installs never touch
it. It comes from PyPI as ``diffrp-nvdiffrast`` (official nvdiffrast sources, pure Python); its CUDA
plugin is JIT-compiled by ``torch.utils.cpp_extension`` on first use (1-2 minutes, needs nvcc).

torch >= 2.10 workaround: nvdiffrast's loader builds the plugin with ``cpp_extension.load`` and then
``importlib.import_module``\\ s it by name, but newer torch no longer puts the build directory on
``sys.path``, so the import fails although the build succeeded. We put that directory
(``_get_build_directory(<plugin name>, False)``, plugin name as nvdiffrast computes it) on
``sys.path`` before the first call.

Conventions handled here: ``texture`` takes v-up UVs (core.mesh's convention) and nvdiffrast's
texture has v = 0 at row 0, so v is flipped before the lookup; ``rasterize`` returns only the
main output (no ``rast_db``).
"""
from __future__ import annotations

import re
import sys
import threading
from typing import Any, Optional

import torch

from .backend import NVDIFFRAST_INSTALL_HINT, RenderBackend, check_rasterize_inputs

_DR = None
_LOCK = threading.Lock()
_CONTEXTS: dict[int, Any] = {}


def nvdiffrast_plugin_name() -> str:
    """The name nvdiffrast gives its CUDA plugin (see nvdiffrast/torch/ops.py ``_get_plugin``)."""
    import nvdiffrast

    name = "nvdiffrast_plugin_%s_torch%s" % (nvdiffrast.__version__, torch.__version__)
    return re.sub(r"\W|^(?=\d)", "_", name)


def load_nvdiffrast():
    """Import ``nvdiffrast.torch`` with the torch >= 2.10 plugin-path fix; clear error if missing."""
    global _DR
    if _DR is not None:
        return _DR
    with _LOCK:
        if _DR is not None:
            return _DR
        if not torch.cuda.is_available():
            raise RuntimeError("the nvdiffrast backend needs CUDA, and torch.cuda.is_available() is False")
        try:
            import nvdiffrast  # noqa: F401
            import nvdiffrast.torch as dr
        except ImportError as e:
            raise RuntimeError(f"nvdiffrast is not installed ({e}); {NVDIFFRAST_INSTALL_HINT}") from e
        except Exception as e:  # noqa: BLE001 - a broken install should still fall back cleanly
            raise RuntimeError(f"nvdiffrast failed to import ({type(e).__name__}: {e}); {NVDIFFRAST_INSTALL_HINT}") from e
        try:
            import torch.utils.cpp_extension as cpp_ext

            build_dir = cpp_ext._get_build_directory(nvdiffrast_plugin_name(), False)
            if build_dir not in sys.path:
                sys.path.insert(0, build_dir)
        except Exception:  # noqa: BLE001 - private torch API; the plain loader may still work
            pass
        _DR = dr
        return dr


def _context(device: torch.device):
    """One RasterizeCudaContext per CUDA device (creating it builds / loads the plugin)."""
    dr = load_nvdiffrast()
    idx = device.index if device.index is not None else torch.cuda.current_device()
    ctx = _CONTEXTS.get(idx)
    if ctx is None:
        try:
            with torch.cuda.device(idx):
                ctx = dr.RasterizeCudaContext(device=torch.device("cuda", idx))
        except Exception as e:  # noqa: BLE001 - JIT build failures come as many types
            raise RuntimeError(
                f"nvdiffrast is installed but its CUDA plugin failed to build or load ({type(e).__name__}: {e}); "
                "check that nvcc (CUDA toolkit matching torch.version.cuda) and a C++ compiler are installed, "
                "or pass backend='torch'"
            ) from e
        _CONTEXTS[idx] = ctx
    return ctx


class NvdiffrastBackend(RenderBackend):
    name = "nvdiffrast"

    def __init__(self, device: torch.device | str | None = None, silhouette_walk: bool = False) -> None:
        """``silhouette_walk=True`` replaces nvdiffrast's antialias by the torch backend's (run on
        the GPU on nvdiffrast's rast output), which walks across sub-pixel rim triangles to the true
        silhouette, so mask / occlusion gradients of dense meshes are not lost (docs/RENDERING.md)."""
        super().__init__(device if device is not None else "cuda")
        if self.device.type != "cuda":
            raise RuntimeError(f"the nvdiffrast backend runs on CUDA only, got {self.device}; use backend='torch'")
        self.dr = load_nvdiffrast()
        self.ctx = _context(self.device)
        self.silhouette_walk = bool(silhouette_walk)
        self._walker = None
        if self.silhouette_walk:
            from .torch_backend import TorchBackend

            self._walker = TorchBackend(self.device)

    def rasterize(self, pos: torch.Tensor, tri: torch.Tensor, resolution: tuple[int, int],
                  check_values: bool = True) -> torch.Tensor:
        pos, h, w = check_rasterize_inputs(pos, tri, resolution, check_values)
        # grad_db=False: nothing here uses the barycentric derivatives (no mipmapped textures).
        rast, _ = self.dr.rasterize(self.ctx, pos.float().contiguous(), tri.int().contiguous(), (h, w), grad_db=False)
        return rast

    def interpolate(self, attr: torch.Tensor, rast: torch.Tensor, tri: torch.Tensor) -> tuple[torch.Tensor, None]:
        if attr.dim() == 3 and attr.shape[0] == 1 and rast.shape[0] != 1:
            attr = attr[0]  # nvdiffrast broadcasts a [N,C] attribute over the batch
        out, _ = self.dr.interpolate(attr.float().contiguous(), rast, tri.int().contiguous())
        return out, None

    def texture(
        self, tex: torch.Tensor, uv: torch.Tensor, filter_mode: str = "linear", boundary_mode: str = "wrap"
    ) -> torch.Tensor:
        if tex.dim() == 3:
            tex = tex[None]
        if filter_mode == "auto":
            filter_mode = "linear"  # no uv derivatives here, so no mipmapping (as nvdiffrast's auto)
        uv_dr = torch.stack([uv[..., 0], 1 - uv[..., 1]], dim=-1)  # v up -> nvdiffrast's v down
        return self.dr.texture(
            tex.float().contiguous(), uv_dr.float().contiguous(), filter_mode=filter_mode, boundary_mode=boundary_mode
        )

    def topology_hash(self, tri: torch.Tensor) -> Any:
        if self._walker is not None:
            return self._walker.topology_hash(tri)
        return self.dr.antialias_construct_topology_hash(tri.int().contiguous())

    def antialias(
        self,
        color: torch.Tensor,
        rast: torch.Tensor,
        pos: torch.Tensor,
        tri: torch.Tensor,
        topology_hash: Optional[Any] = None,
        pos_gradient_boost: float = 1.0,
    ) -> torch.Tensor:
        if pos.dim() == 2:
            pos = pos[None].expand(color.shape[0], -1, -1)
        if self._walker is not None:
            return self._walker.antialias(color, rast, pos, tri, topology_hash, pos_gradient_boost)
        return self.dr.antialias(
            color.float().contiguous(),
            rast,
            pos.float().contiguous(),
            tri.int().contiguous(),
            topology_hash=topology_hash,
            pos_gradient_boost=pos_gradient_boost,
        )
