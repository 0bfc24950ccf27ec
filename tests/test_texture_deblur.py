"""core/texture/deblur.py: the authors' deblur (8-bit, OpenCV bicubic half size, mirrored 15-px pad, x2 SR, crop)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from idsculpt.core.texture.deblur import SR_PAD, bicubic_downscale_uint8, deblur_texture, mirror_pad, to_uint8_levels


def _nearest_x2(x: torch.Tensor) -> torch.Tensor:
    return x.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)


def test_downscale_is_opencv_inter_cubic_on_uint8():
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(0)
    noise = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    yy, xx = np.mgrid[0:64, 0:48]
    smooth = np.repeat((127 + 100 * np.sin(xx / 5.0) * np.cos(yy / 7.0)).astype(np.uint8)[..., None], 3, -1)
    for img in (noise, smooth):
        want = cv2.resize(img, (24, 32), interpolation=cv2.INTER_CUBIC)
        got = bicubic_downscale_uint8(torch.from_numpy(img).float(), 2).numpy()
        assert np.array_equal(got, want.astype(np.float32))


def test_mirror_pad_is_the_authors_pad_reflect():
    """sr.py's pad_reflect = numpy 'symmetric' padding (the edge row repeated)."""
    img = torch.arange(5 * 4 * 3, dtype=torch.float32).reshape(5, 4, 3)
    want = np.pad(img.numpy(), ((3, 3), (3, 3), (0, 0)), mode="symmetric")
    assert np.array_equal(mirror_pad(img, 3).numpy(), want)


def test_quantisation_truncates_like_astype_uint8():
    x = torch.tensor([0.0, 0.5, 0.999, 1.0, 1.7, -0.2, 254.5 / 255])
    assert to_uint8_levels(x).tolist() == [0.0, 127.0, 254.0, 255.0, 255.0, 0.0, 254.0]
    levels = torch.arange(256, dtype=torch.float64)
    assert torch.equal(to_uint8_levels((levels / 255).float()), levels.float())  # the 8-bit grid survives a round trip


def test_deblur_with_a_nearest_upscaler_is_the_downscaled_texture_blown_up():
    """With nearest x2 as the "super-resolution", texel (2i+a, 2j+b) must equal pixel (i, j) of the bicubic half-size
    8-bit texture: pins the pad, the crop offset and both quantisations."""
    g = torch.Generator().manual_seed(0)
    tex = torch.rand(40, 40, 3, generator=g)
    seen = {}

    def up(x):
        seen["x"] = x.clone()
        return _nearest_x2(x)

    out = deblur_texture(tex, up, scale=2)
    small = bicubic_downscale_uint8(to_uint8_levels(tex), 2)
    assert seen["x"].shape == (1, 3, 20 + 2 * SR_PAD, 20 + 2 * SR_PAD)
    assert torch.equal(seen["x"][0].permute(1, 2, 0), mirror_pad(small, SR_PAD) / 255)
    assert out.shape == tex.shape and out.dtype == tex.dtype
    assert torch.equal(out, _nearest_x2(small.permute(2, 0, 1)).permute(1, 2, 0) / 255)
    const = deblur_texture(torch.full((32, 32, 3), 0.5), _nearest_x2)
    assert torch.equal(const, torch.full((32, 32, 3), 127 / 255))


def test_upscaler_output_is_checked():
    tex = torch.rand(32, 32, 3)
    with pytest.raises(ValueError, match="x2 model should return"):
        deblur_texture(tex, lambda x: x.repeat_interleave(4, -1).repeat_interleave(4, -2))  # a x4 model passed as x2
    with pytest.raises(ValueError, match="NaN"):
        deblur_texture(tex, lambda x: _nearest_x2(x) * float("nan"))
    with pytest.raises(ValueError, match="not divisible"):
        deblur_texture(torch.rand(31, 32, 3), _nearest_x2)
    # a x4 upscaler with its real scale: the texture is shrunk by 4 first and comes back at full size
    x4 = lambda x: x.repeat_interleave(4, -1).repeat_interleave(4, -2)  # noqa: E731
    big = torch.rand(64, 64, 3)
    assert deblur_texture(big, x4, scale=4).shape == big.shape
    with pytest.raises(ValueError, match="too small"):
        deblur_texture(tex, x4, scale=4)


@pytest.mark.comfy
def test_comfy_upscale_model_drives_the_deblur(comfy_inprocess, tmp_path):
    """A (tiny, random) RealESRGAN x2 file through ComfyUI's own Load Upscale Model: the node-side wrapper
    returns the model's x2 output (tiled as ComfyUI tiles it), and deblur_texture runs on it."""
    import os
    import sys

    sys.path.insert(0, os.path.dirname(__file__))
    from build_test_models import write_realesrgan_x2
    from comfy_extras.nodes_upscale_model import UpscaleModelLoader

    from idsculpt.nodes.upscale import comfy_upscaler

    folder = comfy_inprocess.folder_paths.get_folder_paths("upscale_models")[0]
    write_realesrgan_x2(os.path.join(folder, "RealESRGAN_x2.pth"), "small", 7)
    (model,) = comfy_inprocess.run_node(UpscaleModelLoader, model_name="RealESRGAN_x2.pth").args
    upscale, scale = comfy_upscaler(model)
    assert scale == 2
    x = torch.rand(1, 3, 40, 36)
    with torch.no_grad():
        want = model(x).clamp(0, 1)  # one tile: ComfyUI's tiling must not change the numbers
    got = upscale(x)
    assert got.shape == (1, 3, 80, 72)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    tex = torch.rand(64, 64, 3)
    out = deblur_texture(tex, upscale, scale)
    assert out.shape == tex.shape and torch.isfinite(out).all()
    assert torch.equal(out * 255, (out * 255).round())  # on the 8-bit grid, as the authors' uint8 albedo
