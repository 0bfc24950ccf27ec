"""PanoHead's tri-grid generator: StyleGAN2 backbone -> 3 feature grids -> OSG decoder -> volume
rendering with importance sampling -> super-resolution, plus the camera self-adaptation mapping.

State-dict keys equal the release's ``G_ema`` (``training/triplane.py`` of SizheAn/PanoHead):
``backbone.*``, ``superresolution.*``, ``decoder.net.{0,2}.*``, ``t_mapping.*`` and, when the
config has ``use_background``, ``bcg_synthesis.*``.

World frame: the EG3D/PanoHead frame, which *is* the frame of ``core.camera`` (+y up, face toward
+z, +x the subject's left, camera labels with OpenCV axes); the tri-grid box spans
[-box_warp/2, box_warp/2]^3 (box_warp = 1 in the release, so the head is ~1 unit tall).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Optional

import torch
import torch.nn.functional as F

from ..speed.triton_kernel import OptionalKernel
from .networks import SUPERRESOLUTION, FullyConnectedLayer, MappingNetwork, StyleGAN2Backbone, SynthesisNetwork, ToRGBLayer


def generate_planes() -> torch.Tensor:
    """Axes of the three feature planes (xy, xz, and the release's zy-ordered third plane)."""
    return torch.tensor([[[1, 0, 0], [0, 1, 0], [0, 0, 1]],
                         [[1, 0, 0], [0, 0, 1], [0, 1, 0]],
                         [[0, 1, 0], [0, 0, 1], [1, 0, 0]]], dtype=torch.float32)


def _load_trigrid_grad():
    from ._trigrid_kernel import trigrid_feature_grad

    return trigrid_feature_grad


#: the Triton kernel of the tri-grid lookup's feature gradient; off for the process after its first failure
TRIGRID_GRAD = OptionalKernel(_load_trigrid_grad, "tri-grid feature gradient", "using PyTorch's grid_sampler_3d_backward")


def _feature_grad_kernel(feats: torch.Tensor, grid: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    p, c, d, h, w = feats.shape
    m = grid.shape[-2]
    out = torch.zeros(p, d, h, w, c, device=feats.device, dtype=torch.float32)
    g = grad.reshape(p, c, m)  # a view: the lookup's output is read as [P, M, C] by the caller, so this is strided
    block_m = 64
    TRIGRID_GRAD.get()[(p, -(-m // block_m))](
        grid.reshape(p, m, 3), g, out, m, c, d, h, w, g.stride(0), g.stride(1), g.stride(2),
        BLOCK_M=block_m, BLOCK_C=max(16, 1 << (c - 1).bit_length()))
    return out.permute(0, 4, 1, 2, 3).contiguous().to(feats.dtype)


class _TriGridLookup(torch.autograd.Function):
    """``F.grid_sample`` (trilinear, zero padding, align_corners=False) of fixed sample points, whose feature
    gradient is one Triton kernel with channels innermost (``_trigrid_kernel``) where it runs.

    Why: PyTorch's ``grid_sampler_3d_backward`` adds each point's gradient to the 8 corners channel by channel,
    one point per thread and the channels a volume apart, so a warp's atomic adds hit 32 scattered addresses; it
    was 30 % of a PanoHead inversion step's GPU time on an H100 (docs/PERFORMANCE.md). The forward is PyTorch's
    own; the points (camera rays, importance samples) carry no gradient in the inversion."""

    @staticmethod
    def forward(ctx, feats: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:  # noqa: D102
        grid = grid.contiguous()
        ctx.save_for_backward(feats, grid)
        return F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):  # noqa: D102
        feats, grid = ctx.saved_tensors
        fast = TRIGRID_GRAD.attempt(grad.device, lambda: _feature_grad_kernel(feats, grid, grad))
        if fast is not None:
            return fast, None
        gf, _ = torch.ops.aten.grid_sampler_3d_backward(grad, feats, grid, 0, 0, False, [True, False])
        return gf, None


#: route the tri-grid lookup's feature gradient through the Triton kernel where it runs (CUDA with Triton). Timed on
#: an H100 against PyTorch's kernel (``bench/probes/profile_fastpath.py --trigrid-grad``, neural 128², eager): W+
#: 61.2 -> 51.9 ms, PTI 75.0 -> 65.9 ms a step; at the 64² of the server run's stand-in, no change in the stage.
TRIGRID_GRAD_KERNEL = True


def trigrid_lookup(feats: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """``F.grid_sample(feats [P,C,D,H,W], grid [P,1,1,M,3])``, trilinear with zero padding (the release's lookup);
    the feature gradient by the Triton kernel where it is on and the points need no gradient."""
    if (TRIGRID_GRAD_KERNEL and torch.is_grad_enabled() and feats.requires_grad and not grid.requires_grad
            and TRIGRID_GRAD.available(feats.device)):
        return _TriGridLookup.apply(feats, grid)
    return F.grid_sample(feats, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def sample_from_planes(plane_axes: torch.Tensor, plane_features: torch.Tensor, coordinates: torch.Tensor, box_warp: float,
                       triplane_depth: int = 1, plane_axes_inv: Optional[torch.Tensor] = None) -> torch.Tensor:
    """Trilinear lookup of world points [N,M,3] in the tri-grid [N,3,C*D,H,W] -> [N,3,M,C].

    Each of the 3 grids is a thin 3-D volume (depth D): the point, expressed in the plane's axes,
    indexes (W, H, D) of that volume, as in the release (``grid_sample`` 5-D, zeros outside).
    ``plane_axes_inv``: the inverse of ``plane_axes`` computed once (the renderer keeps it). On CUDA,
    ``torch.linalg.inv`` checks for singular matrices with a host sync, which would stop the
    inversion's optimisation step from being captured in a CUDA graph; the values are the same."""
    n, n_planes, cd, h, w = plane_features.shape
    _, m, _ = coordinates.shape
    c, d = cd // triplane_depth, triplane_depth
    feats = plane_features.reshape(n * n_planes, c, d, h, w)
    coords = (2.0 / box_warp) * coordinates
    inv = plane_axes_inv.to(coords) if plane_axes_inv is not None else torch.linalg.inv(plane_axes.to(coords))
    inv = inv.unsqueeze(0).expand(n, -1, -1, -1).reshape(n * n_planes, 3, 3)
    proj = torch.bmm(coords.unsqueeze(1).expand(-1, n_planes, -1, -1).reshape(n * n_planes, m, 3), inv)
    out = trigrid_lookup(feats, proj.reshape(n * n_planes, 1, 1, m, 3).to(feats.dtype))
    return out.permute(0, 4, 3, 2, 1).reshape(n, n_planes, m, c)


def triplane_crop_mask(xyz: torch.Tensor, thresh: float, box_warp: float, allow_bottom: bool = True) -> torch.Tensor:
    """True for samples outside the box shrunk by ``thresh`` on the sides (open at the bottom, for
    the neck); the release forces their density to -1000 so the box walls never render."""
    lim = box_warp / 2 - thresh
    # x and z by slices, not xyz[..., [0, 2]]: a list index is copied host-to-device with a sync,
    # which a CUDA graph capture of the inversion step does not allow (same result)
    inside = (xyz[..., 0:1].abs() <= lim) & (xyz[..., 2:3].abs() <= lim)
    if allow_bottom:
        inside = inside | ((xyz[..., 1:2] <= -lim) & inside)
    return ~inside


class OSGDecoder(torch.nn.Module):
    """Mean over the 3 grids -> FC 32->64 -> softplus -> FC 64->1+32 (density, features)."""

    def __init__(self, n_features: int, options: dict) -> None:
        super().__init__()
        self.hidden_dim = 64
        lr = options.get("decoder_lr_mul", 1)
        self.net = torch.nn.Sequential(
            FullyConnectedLayer(n_features, self.hidden_dim, lr_multiplier=lr),
            torch.nn.Softplus(),
            FullyConnectedLayer(self.hidden_dim, 1 + options["decoder_output_dim"], lr_multiplier=lr),
        )
        self.activation = options["decoder_activation"]

    def forward(self, sampled_features: torch.Tensor, ray_directions: Optional[torch.Tensor] = None) -> dict[str, torch.Tensor]:
        x = sampled_features.mean(1)
        n, m, c = x.shape
        x = self.net(x.reshape(n * m, c)).reshape(n, m, -1)
        rgb, sigma = x[..., 1:], x[..., 0:1]
        if self.activation == "sigmoid":
            rgb = torch.sigmoid(rgb) * (1 + 2 * 0.001) - 0.001
        elif self.activation == "lrelu":
            rgb = F.leaky_relu(rgb, 0.2) * math.sqrt(2)
        return {"rgb": rgb, "sigma": sigma}


class RaySampler(torch.nn.Module):
    """Rays through pixel centres of a ``resolution``² image from EG3D labels (OpenCV cam2world,
    intrinsics normalised by image size)."""

    def forward(self, cam2world: torch.Tensor, intrinsics: torch.Tensor, resolution: int) -> tuple[torch.Tensor, torch.Tensor]:
        n = cam2world.shape[0]
        dev = cam2world.device
        idx = (torch.arange(resolution, dtype=torch.float32, device=dev) + 0.5) / resolution
        yy, xx = torch.meshgrid(idx, idx, indexing="ij")  # row-major: ray k = row * res + col
        x = xx.reshape(1, -1).expand(n, -1)
        y = yy.reshape(1, -1).expand(n, -1)
        fx, fy = intrinsics[:, 0, 0, None], intrinsics[:, 1, 1, None]
        cx, cy, sk = intrinsics[:, 0, 2, None], intrinsics[:, 1, 2, None], intrinsics[:, 0, 1, None]
        x_lift = (x - cx + cy * sk / fy - sk * y / fy) / fx
        y_lift = (y - cy) / fy
        d_cam = torch.stack([x_lift, y_lift, torch.ones_like(x_lift)], dim=-1)
        dirs = F.normalize(d_cam @ cam2world[:, :3, :3].transpose(1, 2), dim=-1)
        origins = cam2world[:, None, :3, 3].expand_as(dirs)
        return origins, dirs


class _CumprodNonzero(torch.autograd.Function):
    """``torch.cumprod`` whose backward is autograd's own formula for inputs without zeros,
    ``reversed_cumsum(output * grad) / input``, without autograd's host-side check for zeros.

    Autograd's ``cumprod_backward`` first asks ``(input == 0).any().item()`` to choose between that
    O(n) formula and a slower zero-safe one: a device-to-host sync in every backward pass, which is
    not allowed inside a CUDA graph capture. The ray marcher's transmittance factors are
    ``1 - alpha + 1e-10`` with ``alpha = 1 - exp(-x)``, ``x >= 0``, so they are never zero and autograd
    always takes the first formula: this is the same arithmetic, op for op."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, dim: int) -> torch.Tensor:  # type: ignore[override]
        out = torch.cumprod(x, dim)
        ctx.save_for_backward(x, out)
        ctx.dim = dim
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor):  # type: ignore[override]
        x, out = ctx.saved_tensors
        d = ctx.dim
        w = out * grad
        return w.flip(d).cumsum(d).flip(d).div(x), None


def cumprod_nonzero(x: torch.Tensor, dim: int) -> torch.Tensor:
    """cumprod along ``dim`` for inputs known to have no zeros (see :class:`_CumprodNonzero`)."""
    return _CumprodNonzero.apply(x, dim)


class MipRayMarcher2(torch.nn.Module):
    """Alpha compositing at interval mid-points with softplus(sigma - 1) densities (EG3D)."""

    def forward(self, colors: torch.Tensor, densities: torch.Tensor, depths: torch.Tensor, options: dict
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        deltas = depths[:, :, 1:] - depths[:, :, :-1]
        colors_mid = (colors[:, :, :-1] + colors[:, :, 1:]) / 2
        densities_mid = (densities[:, :, :-1] + densities[:, :, 1:]) / 2
        depths_mid = (depths[:, :, :-1] + depths[:, :, 1:]) / 2
        if options.get("clamp_mode", "softplus") != "softplus":
            raise ValueError("PanoHead's ray marcher supports clamp_mode='softplus' only")
        densities_mid = F.softplus(densities_mid - 1)
        alpha = 1 - torch.exp(-densities_mid * deltas)
        alpha_shifted = torch.cat([torch.ones_like(alpha[:, :, :1]), 1 - alpha + 1e-10], -2)
        weights = alpha * cumprod_nonzero(alpha_shifted, -2)[:, :, :-1]
        rgb = torch.sum(weights * colors_mid, -2)
        wsum = weights.sum(2)
        depth = torch.nan_to_num(torch.sum(weights * depths_mid, -2) / wsum, float("inf"))
        depth = torch.clamp(depth, torch.min(depths), torch.max(depths))
        if options.get("white_back", False):
            rgb = rgb + 1 - wsum
        return rgb, depth, weights


class ImportanceRenderer(torch.nn.Module):
    """48 stratified + 48 importance samples per ray between ray_start and ray_end (release values)."""

    def __init__(self) -> None:
        super().__init__()
        self.ray_marcher = MipRayMarcher2()
        self.plane_axes = generate_planes()  # plain attribute in the release: not in the state dict
        # inverted once here (on the CPU, exact for these axis permutations), not on every lookup
        self.plane_axes_inv = torch.linalg.inv(self.plane_axes)

    def _axes_to(self, device: torch.device) -> None:
        if self.plane_axes.device != device:
            self.plane_axes = self.plane_axes.to(device)
        inv = getattr(self, "plane_axes_inv", None)  # absent on renderers unpickled from before it existed
        if inv is None:
            inv = torch.linalg.inv(self.plane_axes.cpu())
        if inv.device != device:
            inv = inv.to(device)
        self.plane_axes_inv = inv

    def run_model(self, planes, decoder, coords, dirs, options) -> dict[str, torch.Tensor]:
        self._axes_to(coords.device)
        feats = sample_from_planes(self.plane_axes, planes, coords, box_warp=options["box_warp"],
                                   triplane_depth=options.get("triplane_depth", 1), plane_axes_inv=self.plane_axes_inv)
        out = decoder(feats, dirs)
        out["xyz"] = coords
        return out

    def density(self, planes, decoder, coords, options) -> torch.Tensor:
        """Raw density (pre-activation sigma) at world points [N,M,3] -> [N,M,1]."""
        return self.run_model(planes, decoder, coords, torch.zeros_like(coords), options)["sigma"]

    def density_normal(self, planes, decoder, coords, options, eps: float = 1e-2) -> torch.Tensor:
        """Unit normals -grad(sigma) by central differences (ID-Sculpt's GAN-view normals)."""
        grads = []
        for axis in range(3):
            off = torch.zeros(3, device=coords.device, dtype=coords.dtype)
            off[axis] = eps
            sp = self.density(planes, decoder, (coords + off).clamp(-1, 1), options)
            sn = self.density(planes, decoder, (coords - off).clamp(-1, 1), options)
            grads.append(0.5 * (sp - sn)[..., 0] / eps)
        g = torch.stack(grads, dim=-1)
        n = -g / torch.sqrt(torch.clamp((g * g).sum(-1, keepdim=True), min=1e-20))
        return torch.nan_to_num(n)

    @staticmethod
    def sample_stratified(origins, ray_start, ray_end, n_samples, generator=None) -> torch.Tensor:
        n, m, _ = origins.shape
        depths = torch.linspace(ray_start, ray_end, n_samples, device=origins.device).reshape(1, 1, n_samples, 1).repeat(n, m, 1, 1)
        delta = (ray_end - ray_start) / (n_samples - 1)
        return depths + torch.rand(depths.shape, device=origins.device, generator=generator) * delta

    @staticmethod
    def sample_pdf(bins, weights, n_importance, generator=None, eps: float = 1e-5) -> torch.Tensor:
        n_rays, n_bins = weights.shape
        weights = weights + eps
        pdf = weights / torch.sum(weights, -1, keepdim=True)
        cdf = torch.cat([torch.zeros_like(pdf[:, :1]), torch.cumsum(pdf, -1)], -1)
        u = torch.rand(n_rays, n_importance, device=bins.device, generator=generator).contiguous()
        inds = torch.searchsorted(cdf, u, right=True)
        below = torch.clamp_min(inds - 1, 0)
        above = torch.clamp_max(inds, n_bins)
        idx = torch.stack([below, above], -1).view(n_rays, 2 * n_importance)
        cdf_g = torch.gather(cdf, 1, idx).view(n_rays, n_importance, 2)
        bins_g = torch.gather(bins, 1, idx).view(n_rays, n_importance, 2)
        denom = cdf_g[..., 1] - cdf_g[..., 0]
        denom = torch.where(denom < eps, torch.ones_like(denom), denom)
        return bins_g[..., 0] + (u - cdf_g[..., 0]) / denom * (bins_g[..., 1] - bins_g[..., 0])

    def sample_importance(self, z_vals, weights, n_importance, generator=None) -> torch.Tensor:
        with torch.no_grad():
            b, r, s, _ = z_vals.shape
            z = z_vals.reshape(b * r, s)
            w = weights.reshape(b * r, -1)
            w = F.max_pool1d(w.unsqueeze(1).float(), 2, 1, padding=1)
            w = F.avg_pool1d(w, 2, 1).squeeze(1) + 0.01
            mids = 0.5 * (z[:, :-1] + z[:, 1:])
            return self.sample_pdf(mids, w[:, 1:-1], n_importance, generator).detach().reshape(b, r, n_importance, 1)

    def _eval(self, planes, decoder, origins, dirs, depths, options, triplane_crop, with_normals):
        b, r, s, _ = depths.shape
        coords = (origins.unsqueeze(-2) + depths * dirs.unsqueeze(-2)).reshape(b, -1, 3)
        out = self.run_model(planes, decoder, coords, dirs.unsqueeze(-2).expand(-1, -1, s, -1).reshape(b, -1, 3), options)
        sigma = out["sigma"]
        if triplane_crop:
            sigma = torch.where(triplane_crop_mask(coords, triplane_crop, options["box_warp"]), torch.full_like(sigma, -1e3), sigma)
        extra = [out["rgb"]]
        if with_normals:
            extra.append(self.density_normal(planes, decoder, coords, options))
        feats = torch.cat(extra, -1).reshape(b, r, s, -1)
        return feats, sigma.reshape(b, r, s, 1)

    def forward(self, planes, decoder, origins, dirs, options: dict, triplane_crop: float = 0.1, with_normals: bool = False,
                generator: Optional[torch.Generator] = None):
        """Returns (features [N,R,C(+3 normals)], depth [N,R,1], weight sum [N,R,1])."""
        self._axes_to(origins.device)
        depths_c = self.sample_stratified(origins, options["ray_start"], options["ray_end"], options["depth_resolution"], generator)
        feats_c, sig_c = self._eval(planes, decoder, origins, dirs, depths_c, options, triplane_crop, with_normals)
        n_imp = options.get("depth_resolution_importance", 0)
        if n_imp > 0:
            _, _, weights = self.ray_marcher(feats_c, sig_c, depths_c, options)
            depths_f = self.sample_importance(depths_c, weights, n_imp, generator)
            feats_f, sig_f = self._eval(planes, decoder, origins, dirs, depths_f, options, triplane_crop, with_normals)
            depths = torch.cat([depths_c, depths_f], -2)
            feats = torch.cat([feats_c, feats_f], -2)
            sig = torch.cat([sig_c, sig_f], -2)
            _, order = torch.sort(depths, dim=-2)
            depths = torch.gather(depths, -2, order)
            feats = torch.gather(feats, -2, order.expand(-1, -1, -1, feats.shape[-1]))
            sig = torch.gather(sig, -2, order)
        else:
            depths, feats, sig = depths_c, feats_c, sig_c
        rgb, depth, weights = self.ray_marcher(feats, sig, depths, options)
        return rgb, depth, weights.sum(2)


class TriPlaneGenerator(torch.nn.Module):
    """The released ``TriPlaneGenerator`` (same constructor signature as the pickle's init kwargs)."""

    def __init__(self, z_dim: int, c_dim: int, w_dim: int, img_resolution: int, img_channels: int, sr_num_fp16_res: int = 0,
                 mapping_kwargs: dict | None = None, rendering_kwargs: dict | None = None, sr_kwargs: dict | None = None,
                 **synthesis_kwargs: Any) -> None:
        super().__init__()
        # kept like torch_utils.persistence keeps them: rebuilding the same network needs nothing else
        self.init_kwargs = copy.deepcopy(dict(z_dim=z_dim, c_dim=c_dim, w_dim=w_dim, img_resolution=img_resolution,
                                              img_channels=img_channels, sr_num_fp16_res=sr_num_fp16_res,
                                              mapping_kwargs=mapping_kwargs, rendering_kwargs=rendering_kwargs,
                                              sr_kwargs=sr_kwargs, **synthesis_kwargs))
        rk = dict(rendering_kwargs or {})
        mapping_kwargs = dict(mapping_kwargs or {})
        sr_kwargs = dict(sr_kwargs or {})
        self.z_dim, self.c_dim, self.w_dim = z_dim, c_dim, w_dim
        self.img_resolution, self.img_channels = img_resolution, img_channels
        self.renderer = ImportanceRenderer()
        self.ray_sampler = RaySampler()
        depth = rk.get("triplane_depth", 1)
        self.backbone = StyleGAN2Backbone(z_dim, c_dim, w_dim, img_resolution=rk["triplane_size"], img_channels=32 * 3 * depth,
                                          mapping_kwargs=mapping_kwargs, **synthesis_kwargs)
        sr_name = str(rk["superresolution_module"]).rsplit(".", 1)[-1]
        if sr_name not in SUPERRESOLUTION:
            raise ValueError(f"unsupported super-resolution module {rk['superresolution_module']!r}; known: {sorted(SUPERRESOLUTION)}")
        self.superresolution = SUPERRESOLUTION[sr_name](channels=32, img_resolution=img_resolution, sr_num_fp16_res=sr_num_fp16_res,
                                                        sr_antialias=rk.get("sr_antialias", True), w_dim=w_dim, **sr_kwargs)
        self.decoder = OSGDecoder(32, {"decoder_lr_mul": rk.get("decoder_lr_mul", 1), "decoder_output_dim": 32,
                                       "decoder_activation": rk.get("decoder_activation", "sigmoid")})
        self.torgb = ToRGBLayer(32, 3, w_dim) if rk.get("use_torgb_raw", False) else None
        bcg_kwargs = dict(synthesis_kwargs)
        bcg_kwargs["channel_base"] = bcg_kwargs.get("channel_base", 32768) // 2
        self.bcg_synthesis = (SynthesisNetwork(w_dim, img_resolution=self.superresolution.input_resolution, img_channels=32, **bcg_kwargs)
                              if rk.get("use_background", False) else None)
        # camera self-adaptation: z, c -> 3-vector added to the label's camera translation
        self.t_mapping = MappingNetwork(z_dim=z_dim, c_dim=c_dim, w_dim=3, num_ws=1, last_activation="linear", lr_multiplier=1.0,
                                        **mapping_kwargs)
        self.neural_rendering_resolution = 64
        self.rendering_kwargs = rk

    # ---------------------------------------------------------------- mapping
    def _cond(self, c: torch.Tensor) -> torch.Tensor:
        if self.rendering_kwargs.get("c_gen_conditioning_zero", False):
            c = torch.zeros_like(c)
        return c * self.rendering_kwargs.get("c_scale", 0)

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False) -> torch.Tensor:
        return self.backbone.mapping(z, self._cond(c), truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff,
                                     update_emas=update_emas)

    def apply_delta_c(self, z, c, truncation_psi=1, truncation_cutoff=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera self-adaptation: the label's translation (entries 3, 7, 11) plus t_mapping(z, c)."""
        delta = self.t_mapping(z, self._cond(c), truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff).squeeze(1)
        c_new = c.clone()
        c_new[:, 3] = c_new[:, 3] + delta[:, 0]
        c_new[:, 7] = c_new[:, 7] + delta[:, 1]
        c_new[:, 11] = c_new[:, 11] + delta[:, 2]
        return c_new, delta

    # ---------------------------------------------------------------- synthesis
    @property
    def num_ws(self) -> int:
        return self.backbone.num_ws

    def planes(self, ws: torch.Tensor, noise_mode: str = "const") -> torch.Tensor:
        """The tri-grid [B,3,32*D,S,S] for W+ codes ws [B,num_ws,w_dim]."""
        p = self.backbone.synthesis(ws, noise_mode=noise_mode)
        return p.view(len(p), 3, 32 * self.rendering_kwargs.get("triplane_depth", 1), p.shape[-2], p.shape[-1])

    def synthesis(self, ws: torch.Tensor, c: torch.Tensor, neural_rendering_resolution: Optional[int] = None, noise_mode: str = "const",
                  with_normals: bool = False, planes: Optional[torch.Tensor] = None, superresolve: bool = True,
                  generator: Optional[torch.Generator] = None, **_: Any) -> dict[str, torch.Tensor]:
        """Render W+ codes from labels c [B,25]; images in [-1,1], NCHW like the release.

        Extra outputs: ``image_normal`` (world-frame unit normals from the density gradient, when
        ``with_normals``), ``image_mask`` (accumulated opacity), ``image_depth``."""
        cam2world = c[:, :16].view(-1, 4, 4)
        intrinsics = c[:, 16:25].view(-1, 3, 3)
        res = neural_rendering_resolution or self.neural_rendering_resolution
        origins, dirs = self.ray_sampler(cam2world, intrinsics, res)
        n = origins.shape[0]
        if planes is None:
            planes = self.planes(ws, noise_mode=noise_mode)
        if planes.shape[0] != n:
            planes = planes.expand(n, -1, -1, -1, -1)
        feats, depth, wsum = self.renderer(planes, self.decoder, origins, dirs, self.rendering_kwargs, with_normals=with_normals,
                                           generator=generator)
        out: dict[str, torch.Tensor] = {}
        if with_normals:
            normals = F.normalize(feats[..., -3:], dim=-1)
            feats = feats[..., :-3]
            out["image_normal"] = normals.permute(0, 2, 1).reshape(n, 3, res, res)
        feature_image = feats.permute(0, 2, 1).reshape(n, feats.shape[-1], res, res).contiguous()
        depth_image = depth.permute(0, 2, 1).reshape(n, 1, res, res)
        weight_image = wsum.permute(0, 2, 1).reshape(n, 1, res, res)
        if self.decoder.activation == "sigmoid":
            feature_image = feature_image * 2 - 1
        if self.bcg_synthesis is not None and ws is not None:
            ws_b = ws[:, : self.bcg_synthesis.num_ws]
            if ws_b.shape[0] != n:
                ws_b = ws_b.expand(n, -1, -1)
            if ws_b.shape[1] < self.bcg_synthesis.num_ws:
                ws_b = torch.cat([ws_b, ws_b[:, -1:].repeat(1, self.bcg_synthesis.num_ws - ws_b.shape[1], 1)], 1)
            bcg = self.bcg_synthesis(ws_b, noise_mode=noise_mode)
            bcg = F.interpolate(bcg, size=feature_image.shape[2:], mode="bilinear", align_corners=False,
                                antialias=self.rendering_kwargs.get("sr_antialias", True))
            feature_image = feature_image + (1 - weight_image) * bcg
        if self.torgb is not None and ws is not None:
            rgb_image = self.torgb(feature_image, ws[:, -1]).to(torch.float32)
        else:
            rgb_image = feature_image[:, :3]
        out.update({"image_raw": rgb_image, "image_depth": depth_image, "image_mask": weight_image * (1 + 2 * 0.001) - 0.001,
                    "image_weight": weight_image})
        if superresolve and ws is not None:
            ws_sr = ws if ws.shape[0] == n else ws.expand(n, -1, -1)
            noise_sr = "none" if self.rendering_kwargs.get("superresolution_noise_mode", "none") == "none" else noise_mode
            out["image"] = self.superresolution(rgb_image, feature_image, ws_sr, noise_mode=noise_sr)
        return out

    def sample_mixed(self, coordinates: torch.Tensor, directions: torch.Tensor, ws: torch.Tensor, noise_mode: str = "const", **_):
        planes = self.planes(ws, noise_mode=noise_mode)
        return self.renderer.run_model(planes, self.decoder, coordinates, directions, self.rendering_kwargs)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, neural_rendering_resolution=None, noise_mode="random", **kw):
        ws = self.mapping(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        c2, _ = self.apply_delta_c(z, c, truncation_psi=truncation_psi, truncation_cutoff=truncation_cutoff)
        return self.synthesis(ws, c2, neural_rendering_resolution=neural_rendering_resolution, noise_mode=noise_mode, **kw)


# ---------------------------------------------------------------------------------- configs
def release_config() -> dict[str, Any]:
    """Init kwargs of the released ``easy-khair-180-gpc0.8-trans10-025000.pkl`` G_ema, as PanoHead's
    ``train.py`` builds them for ``--cfg=ffhq --gen_pose_cond=True --triplane_depth=3`` (the
    checkpoint's own kwargs are read from the pickle on conversion; this is for random-weight
    benchmarks and a fallback)."""
    return {
        "z_dim": 512, "c_dim": 25, "w_dim": 512, "img_resolution": 512, "img_channels": 3, "sr_num_fp16_res": 4,
        "mapping_kwargs": {"num_layers": 2},
        "rendering_kwargs": {
            "image_resolution": 512, "disparity_space_sampling": False, "clamp_mode": "softplus",
            "superresolution_module": "training.superresolution.SuperresolutionHybrid8XDC",
            "c_gen_conditioning_zero": False, "gpc_reg_prob": 0.8, "c_scale": 1.0, "superresolution_noise_mode": "none",
            "density_reg": 0.25, "density_reg_p_dist": 0.004, "reg_type": "l1", "decoder_lr_mul": 1.0,
            "decoder_activation": "sigmoid", "use_torgb_raw": False, "triplane_size": 256, "triplane_depth": 3,
            "trans_reg": 10.0, "use_background": True, "sr_antialias": True, "depth_resolution": 48,
            "depth_resolution_importance": 48, "ray_start": 2.25, "ray_end": 3.3, "box_warp": 1,
            "avg_camera_radius": 2.7, "avg_camera_pivot": [0, 0, 0.2],
        },
        "sr_kwargs": {"channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only"},
        "architecture": "skip", "channel_base": 32768, "channel_max": 512, "fused_modconv_default": "inference_only",
        "num_fp16_res": 0, "conv_clamp": None,
    }


def tiny_config(w_dim: int = 32, triplane_size: int = 32, channels: int = 32) -> dict[str, Any]:
    """The same generator at test scale: small widths, 32² tri-grid, 2X super-resolution to 128²."""
    cfg = release_config()
    cfg.update({"z_dim": w_dim, "w_dim": w_dim, "img_resolution": 128, "channel_base": channels * 8, "channel_max": channels,
                "sr_kwargs": {"channel_base": channels * 8, "channel_max": channels, "fused_modconv_default": "inference_only",
                              "sr_channels": [16, 16]}})
    rk = cfg["rendering_kwargs"]
    rk.update({"image_resolution": 128, "triplane_size": triplane_size, "depth_resolution": 12, "depth_resolution_importance": 12,
               "superresolution_module": "training.superresolution.SuperresolutionHybrid2X"})
    return cfg


def build_generator(config: dict[str, Any]) -> TriPlaneGenerator:
    return TriPlaneGenerator(**copy.deepcopy(dict(config)))
