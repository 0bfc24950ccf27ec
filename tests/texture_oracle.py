"""A known textured head and oracle diffusion stand-ins for the texture stage (tests and bench/).

One home for the texture stage's known answer, shared by tests/test_texture.py, the schedule evidence
test and bench/evidence_oracle_texture.py (bench scripts import it through ``_pack.load(tests=True)``):

* ``head_mesh``: an ellipsoid with a nose (the nose occludes the cheeks from the side);
  ``normalised=True`` puts it in the authors' normalised frame (vertex mean at the origin, largest
  |coordinate| 0.9, core.dmtet.sdf_init.normalize_mesh), the size every texture camera assumes.
* ``gt_color``: the head's colour, a smooth function of 3D position; ``detailed_color`` adds finer
  structure (a few texels' worth of stripes and spots) so a blurred texture is measurably wrong.
* ``known_head``: the UV-unwrapped head with its ground-truth texture baked from a colour function.
* ``OracleDenoiser``: a refinement ``Denoiser`` that returns the ground-truth render of the asked view
  (a perfect denoiser of this head), optionally attenuated as an SDEdit posterior mean (``prior_std``).
* ``OracleInpainter``: a Progressive Inpaint ``Inpainter`` returning the ground-truth view, cropped.
"""
from __future__ import annotations

import math
from typing import Callable, Optional

import torch
import trimesh

from idsculpt.core.camera import EG3D_FOCAL, Cameras
from idsculpt.core.dmtet.sdf_init import NORMALISED_HEAD_EXTENT, normalize_mesh
from idsculpt.core.guidance import sd15_alphas_cumprod
from idsculpt.core.mesh import HeadMesh
from idsculpt.core.texture import crop_image, fill_holes, rasterize_uv, render_textured, unwrap_uv

ColorFn = Callable[[torch.Tensor], torch.Tensor]


def head_mesh(subdiv: int = 3, normalised: bool = False) -> HeadMesh:
    """The known head: an icosphere scaled to an ellipsoid (0.8, 1.0, 0.9) with a nose on +z."""
    s = trimesh.creation.icosphere(subdiv)
    v = torch.tensor(s.vertices, dtype=torch.float32) * torch.tensor([0.8, 1.0, 0.9])
    nose = 0.35 * torch.exp(-(v[:, 0] ** 2 + (v[:, 1] + 0.1) ** 2) / 0.05) * (v[:, 2] > 0)
    v = v + nose[:, None] * torch.tensor([0.0, 0.0, 1.0])  # a nose that occludes the cheeks from the side
    if normalised:
        v = normalize_mesh(v).apply(v)
    return HeadMesh(v, torch.tensor(s.faces))


def gt_color(p: torch.Tensor) -> torch.Tensor:
    """Smooth colour of a surface point p [...,3] -> [...,3] in 0.1..0.9."""
    return 0.5 + 0.4 * torch.stack(
        [torch.sin(3 * p[..., 0] + 1), torch.sin(2.5 * p[..., 1] - 0.5 + 2 * p[..., 2]), torch.cos(3 * p[..., 2] + p[..., 0])], -1
    )


def detailed_color(p: torch.Tensor) -> torch.Tensor:
    """``gt_color`` (scaled to 0.5 ± 0.3) plus detail at a spatial period of ~0.2-0.3 units of the
    normalised head (stripes along y, spots in x-z): ~30 texels of a 1024² atlas, ~15 px of a 512² view
    at distance 3, so blur and sub-feature misregistration cost real PSNR. Stays in 0.05..0.95."""
    base = 0.5 + 0.75 * (gt_color(p) - 0.5)
    stripes = torch.sin(22 * p[..., 1] + 4 * p[..., 0])
    spots = torch.sin(30 * p[..., 0]) * torch.sin(30 * p[..., 2] + 1.0)
    detail = torch.stack([0.12 * stripes + 0.05 * spots, 0.08 * spots - 0.05 * stripes, 0.1 * stripes * spots], -1)
    return (base + detail).clamp(0.05, 0.95)


def bake_texture(mesh: HeadMesh, size: int, color: ColorFn = gt_color) -> torch.Tensor:
    """The texture [size,size,3] of ``color`` at every covered texel's 3D point, gutters push-pull filled."""
    texels = rasterize_uv(mesh, size)
    painted = torch.where(texels.covered[..., None], color(texels.position), torch.zeros(1, device=texels.position.device))
    return fill_holes(painted, texels.covered)


def known_head(texture_size: int, subdiv: int = 3, normalised: bool = False, color: ColorFn = gt_color,
               device: Optional[torch.device] = None) -> tuple[HeadMesh, HeadMesh]:
    """(the UV-unwrapped untextured head, the same head with its ground-truth texture)."""
    mesh, _ = unwrap_uv(head_mesh(subdiv, normalised), texture_size)
    if device is not None:
        mesh = HeadMesh(mesh.vertices.to(device), mesh.faces.to(device), mesh.uvs.to(device), mesh.uv_faces.to(device))
    return mesh, mesh.with_(texture=bake_texture(mesh, texture_size, color))


def portrait_camera(resolution: int, fill: float = 1.1) -> Cameras:
    """A frontal portrait camera in the normalised frame: EG3D's FoV (focal 4.2647, ~13.4°), placed so the
    frame's half-width at the head's centre is ``fill`` x the normalised extent (the head fills an aligned
    portrait, as the sculpt's reference_camera sees the normalised head)."""
    fov = math.degrees(2 * math.atan(0.5 / EG3D_FOCAL))
    distance = fill * NORMALISED_HEAD_EXTENT / math.tan(math.radians(fov / 2))
    return Cameras.orbit(0.0, 0.0, distance, fov, resolution)


def sdedit_attenuation(t: int, prior_std: float) -> float:
    """Fraction of a render's deviation from the truth that an SDEdit pass from noise level t keeps, for a
    model whose prior of the clean image is N(truth, prior_std²) per pixel (in [-1,1] image units) and SD1.5's
    training schedule: Tweedie's posterior mean E[x0 | x_t] averaged over the noise is
    truth + a·(render − truth), a = ᾱ_t·s² / (ᾱ_t·s² + 1 − ᾱ_t). s → 0: the perfect oracle (a = 0)."""
    if prior_std <= 0:
        return 0.0
    ab = float(sd15_alphas_cumprod()[int(t)])
    s2 = prior_std * prior_std
    return ab * s2 / (ab * s2 + 1.0 - ab)


class OracleDenoiser:
    """Refinement denoiser of the known head: the ground-truth render of the asked view (its camera, the
    refinement's white background). ``prior_std`` > 0 keeps a fraction ``sdedit_attenuation(t)`` of the
    input render's deviation (an SDEdit restore that only partly trusts its prior); 0 = perfect oracle."""

    def __init__(self, gt: HeadMesh, background: float = 1.0, prior_std: float = 0.0, backend=None) -> None:
        self.gt = gt
        self.background = background
        self.prior_std = prior_std
        self.backend = backend  # the refinement's renderer (a name or a RenderBackend), so the truth matches its renders
        self.ts: list[int] = []  # t of every view restored
        self.calls = 0  # denoise / denoise_batch calls (one sampler run each in the real adapter)

    def truth(self, camera: Cameras) -> torch.Tensor:
        """The true renders [B,H,W,3] of ``camera`` (B cameras)."""
        out, _ = render_textured(self.gt, self.gt.texture, camera.to(self.gt.vertices.device), self.background, self.backend)
        return out.color

    def _restore(self, images: torch.Tensor, truth: torch.Tensor, t: int) -> torch.Tensor:
        a = sdedit_attenuation(t, self.prior_std)
        return truth if a == 0.0 else truth + a * (images.to(truth) - truth)

    def denoise(self, image: torch.Tensor, normal_control: torch.Tensor, view, t: int) -> torch.Tensor:
        self.ts.append(int(t))
        self.calls += 1
        return self._restore(image, self.truth(view.camera)[0], t)

    def denoise_batch(self, images: torch.Tensor, normal_controls: torch.Tensor, views: list, t: int) -> torch.Tensor:
        """K views from one t: each row is what ``denoise`` returns for that view (its own camera's truth and its
        own render's error, attenuated by the shared t)."""
        self.ts += [int(t)] * len(views)
        self.calls += 1
        truth = self.truth(Cameras.cat([v.camera for v in views]))
        return self._restore(images, truth, t)


class OracleInpainter:
    """Returns the ground-truth render of the requested view, cropped like the loop crops."""

    def __init__(self, gt: HeadMesh) -> None:
        self.gt = gt
        self.calls: list = []

    def inpaint(self, image, generate_mask, normal_control, context):
        assert image.shape == (context.crop_size, context.crop_size, 3)
        assert generate_mask.shape == image.shape[:2] and normal_control.shape == image.shape
        self.calls.append((context.index, float(generate_mask.mean())))
        out, _ = render_textured(self.gt, self.gt.texture, context.camera)
        return crop_image(out.color[0], context.crop, context.crop_size)


def masked_psnr(a: torch.Tensor, b: torch.Tensor, m: torch.Tensor) -> float:
    """PSNR (dB, peak 1) of a vs b over the pixels where m is True (one pooled MSE)."""
    mse = ((a - b)[m] ** 2).mean().clamp_min(1e-12)
    return float(10 * torch.log10(1 / mse))


def degraded_texture(texture: torch.Tensor, seed: int = 0, blur: float = 4.0 / 256, shift: float = 0.15,
                     wrong_fraction: float = 0.03) -> torch.Tensor:
    """A start texture as Progressive Inpaint leaves it, made from the truth ``texture`` [T,T,3]:
    * blurred (Gaussian, sigma = ``blur`` x T texels: the same blur in UV units at every texture size,
      standing in for resampling in the back-projection and the deblur pass),
    * colour-shifted by a smooth random field of amplitude ±``shift`` per channel (views painted by
      the diffusion model in slightly different tones),
    * with ~``wrong_fraction`` of the atlas in random-coloured squares of T/32 texels (seams, wrong
      inpaint content).
    Deterministic in ``seed``; clamped to 0.02..0.98 (the logit of the refinement stays finite)."""
    t = texture.shape[0]
    dev = texture.device
    g = torch.Generator().manual_seed(int(seed))
    x = texture.permute(2, 0, 1)[None].float()
    sigma = blur * t
    if sigma > 0:
        r = max(1, int(math.ceil(3 * sigma)))
        k = torch.exp(-0.5 * (torch.arange(-r, r + 1, dtype=torch.float32) / sigma) ** 2)
        k = (k / k.sum()).to(dev)
        x = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
        x = torch.nn.functional.conv2d(x, k.view(1, 1, 1, -1).expand(3, 1, 1, -1), groups=3)
        x = torch.nn.functional.conv2d(x, k.view(1, 1, -1, 1).expand(3, 1, -1, 1), groups=3)
    field = torch.nn.functional.interpolate(torch.rand(1, 3, 4, 4, generator=g), size=(t, t), mode="bicubic", align_corners=True)
    x = x + (2 * shift) * (field.to(dev) - 0.5)
    side = max(1, t // 32)
    n = int(round(wrong_fraction * t * t / side**2))
    corners = torch.randint(0, t - side + 1, (n, 2), generator=g)
    colours = torch.rand(n, 3, generator=g)
    for (i, j), c in zip(corners.tolist(), colours):
        x[0, :, i:i + side, j:j + side] = c.to(dev)[:, None, None]
    return x[0].permute(1, 2, 0).clamp(0.02, 0.98).contiguous()


#: novel views of the evidence: 8 azimuths between the refinement's and the reference's (22.5° + k·45°,
#: none frontal) x 2 elevations, at the middle of the refinement's distance and FoV ranges
NOVEL_ELEVATIONS = (0.0, 30.0)
NOVEL_AZIMUTHS = tuple(22.5 + 45.0 * k for k in range(8))


def novel_cameras(resolution: int, distance: float = 3.0, fov: float = 37.5) -> Cameras:
    el = [e for e in NOVEL_ELEVATIONS for _ in NOVEL_AZIMUTHS]
    az = [a for _ in NOVEL_ELEVATIONS for a in NOVEL_AZIMUTHS]
    return Cameras.orbit(el, az, distance, fov, resolution)


def novel_view_psnr(mesh: HeadMesh, texture: torch.Tensor, truth, cams: Cameras, backend=None) -> tuple[float, list[float]]:
    """(pooled PSNR over every view's head pixels, per-view PSNRs) of ``mesh`` with ``texture`` against
    ``truth`` (a RenderOutput of the ground truth at ``cams``, white background)."""
    out, _ = render_textured(mesh, texture, cams.to(mesh.vertices.device), 1.0, backend)
    cov = truth.mask[..., 0] > 0.5
    per = [masked_psnr(truth.color[i], out.color[i], cov[i]) for i in range(len(cams))]
    return masked_psnr(truth.color, out.color, cov), per
