"""Texture deblur after progressive inpainting: downscale, then super-resolve back (the authors' ``deblur``).

ID-Sculpt's texture stage ends its inpainting with ``dilate_texture()`` then ``deblur()``
(``threestudio/systems/IDsculpt_tex.py``, ``initialize_texture``), before refinement. ``deblur``
quantises the albedo to 8 bit, resizes it to half size with OpenCV's bicubic filter and brings it back
to full size with RealESRGAN x2 (``threestudio/utils/sr.py``: the image is padded by 15 px on each
side with mirrored rows/columns, the upscaled result is clipped to 0..1, quantised to 8 bit and the
padding cut off). Back-projecting many views blurs the atlas; this trades that blur for the super-
resolution network's sharp texture.

``deblur_texture`` does the same with any upscaler: a callable mapping [B,3,h,w] images in 0..1 to
[B,3,s·h,s·w] (nodes wrap ComfyUI's UPSCALE_MODEL; tests use closed-form upscalers). The authors cut
the padded image into overlapping 192-px patches for memory; whole-image or ComfyUI-tiled upscaling
is the same network on the same pixels up to the patch seams, so that part is left to the caller.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

Upscaler = Callable[[torch.Tensor], torch.Tensor]

#: mirrored border added before super-resolution and removed after (sr.py's ``pad_size``)
SR_PAD = 15


def to_uint8_levels(x: torch.Tensor) -> torch.Tensor:
    """0..1 floats quantised as numpy's ``(x * 255).astype(np.uint8)`` does (truncation), as floats 0..255."""
    return torch.floor(x.clamp(0, 1) * 255)


def bicubic_downscale_uint8(levels: torch.Tensor, factor: int) -> torch.Tensor:
    """[H,W,C] 8-bit levels (as floats) shrunk by ``factor`` like ``cv2.resize(..., INTER_CUBIC)`` on uint8.

    OpenCV's bicubic (a = -0.75, pixel-centre aligned, border pixels replicated, no anti-aliasing)
    is torch's ``bicubic`` with ``align_corners=False``; the uint8 result is rounded and saturated.
    """
    h, w = levels.shape[:2]
    if h % factor or w % factor:
        raise ValueError(f"texture {h}x{w} is not divisible by the upscaler's scale {factor}")
    x = levels.permute(2, 0, 1)[None].double()
    y = F.interpolate(x, size=(h // factor, w // factor), mode="bicubic", align_corners=False, antialias=False)
    return y[0].permute(1, 2, 0).round().clamp(0, 255).to(levels.dtype)


def mirror_pad(img: torch.Tensor, pad: int) -> torch.Tensor:
    """[H,W,C] padded by ``pad`` mirrored rows/columns including the edge (sr.py's ``pad_reflect``,
    numpy's 'symmetric' mode)."""
    if pad <= 0:
        return img
    if pad > img.shape[0] or pad > img.shape[1]:
        raise ValueError(f"cannot mirror-pad a {img.shape[0]}x{img.shape[1]} image by {pad} px (texture too small to deblur)")
    img = torch.cat([img[:pad].flip(0), img, img[-pad:].flip(0)], dim=0)
    return torch.cat([img[:, :pad].flip(1), img, img[:, -pad:].flip(1)], dim=1)


def deblur_texture(texture: torch.Tensor, upscale: Upscaler, scale: int = 2, pad: int = SR_PAD) -> torch.Tensor:
    """The authors' deblur of a [H,W,3] texture in 0..1 -> [H,W,3] in 0..1 (values on the 8-bit grid).

    ``upscale``: [1,3,h,w] in 0..1 -> [1,3,scale·h,scale·w] (RealESRGAN x2 in the authors' run);
    ``scale``: its factor (the texture is first shrunk by it).
    """
    if texture.dim() != 3 or texture.shape[-1] != 3:
        raise ValueError(f"deblur_texture needs a [H,W,3] texture, got {tuple(texture.shape)}")
    if scale < 1:
        raise ValueError(f"upscaler scale must be >= 1, got {scale}")
    h, w = texture.shape[:2]
    small = bicubic_downscale_uint8(to_uint8_levels(texture.float()), scale)
    padded = mirror_pad(small, pad)
    x = (padded / 255.0).permute(2, 0, 1)[None].contiguous()
    with torch.no_grad():
        y = upscale(x)
    want = (1, 3, padded.shape[0] * scale, padded.shape[1] * scale)
    if tuple(y.shape) != want:
        raise ValueError(f"the upscaler returned {tuple(y.shape)} for {tuple(x.shape)}; a x{scale} model should return {want} "
                         "(pick a 2x model such as RealESRGAN_x2.pth, or pass its real scale)")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("the upscaler returned NaN/inf values")
    out = to_uint8_levels(y[0].permute(1, 2, 0).float().to(texture.device)) / 255.0
    p = pad * scale
    out = out[p:p + h, p:p + w] if p else out
    return out.to(texture.dtype).contiguous()
