"""LPIPS-VGG of the PanoHead inversion and the texture refinement (core/panohead/perceptual.py).

Known answers: the `lpips` package's own LPIPS(net='vgg') with its real v0.1 ``vgg.pth`` channel
weights on the same (random, torchvision-layout) VGG16 backbone; and, without that package, the
closed form of one learned weight (a one-hot lin vector picks one channel's squared difference).
"""
from __future__ import annotations

import os
import shutil

import pytest
import torch
import torch.nn.functional as F

from idsculpt.core.panohead.perceptual import (
    UNIT_WEIGHTS_NOTE, VGG16Perceptual, find_lpips_vgg, load_vgg16,
)

_CH = (64, 128, 256, 512, 512)


def _random_backbone(path: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A random VGG16 in torchvision's key layout (features.N.*; a classifier entry that must be ignored)."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {}
    for name, p in VGG16Perceptual().features.named_parameters():
        fan_in = p[0].numel() if p.dim() > 1 else 1
        sd["features." + name] = torch.randn(p.shape, generator=g) * ((2.0 / fan_in) ** 0.5 if p.dim() > 1 else 0.05)
    sd["classifier.0.weight"] = torch.randn(4, 7, generator=g)
    torch.save(sd, path)
    return sd


def _lin_file(path: str, values: list[torch.Tensor]) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({f"lin{k}.model.1.weight": v.reshape(1, -1, 1, 1) for k, v in enumerate(values)}, path)
    return path


@pytest.mark.slow  # lpips builds torchvision's whole VGG16 (138 M parameters, random init): ~10 s on 2 cores
def test_equals_the_lpips_package_with_its_real_vgg_weights(tmp_path):
    lpips = pytest.importorskip("lpips", reason="the `lpips` package (needs torchvision) is not installed")
    real_lin = os.path.join(os.path.dirname(lpips.__file__), "weights", "v0.1", "vgg.pth")
    assert os.path.isfile(real_lin)
    backbone = str(tmp_path / "vgg16-397923af.pth")
    sd = _random_backbone(backbone)
    folder = tmp_path / "idsculpt"
    (folder / "lpips").mkdir(parents=True)
    shutil.copy(real_lin, folder / "lpips" / "vgg.pth")
    assert find_lpips_vgg(str(folder)) == str(folder / "lpips" / "vgg.pth")

    ours = load_vgg16(backbone, find_lpips_vgg(str(folder)))
    assert ours.has_lpips_heads and "learned" in ours.weights_note
    ref = lpips.LPIPS(net="vgg", pnet_rand=True, verbose=False)  # its weights/v0.1/vgg.pth, random trunk
    trunk = {}
    for k, bounds in enumerate(((0, 4), (4, 9), (9, 16), (16, 23), (23, 30))):
        for n in range(*bounds):
            for w in ("weight", "bias"):
                if f"features.{n}.{w}" in sd:
                    trunk[f"net.slice{k + 1}.{n}.{w}"] = sd[f"features.{n}.{w}"]
    missing, unexpected = ref.load_state_dict(trunk, strict=False)
    assert not unexpected and not [m for m in missing if m.startswith("net.")]
    ref.eval()

    g = torch.Generator().manual_seed(1)
    a = torch.rand(2, 3, 64, 96, generator=g) * 2 - 1
    b = (a + 0.3 * torch.randn(2, 3, 64, 96, generator=g)).clamp(-1, 1)
    with torch.no_grad():
        want = ref(a, b).flatten()
        got = ours(a, b)
    assert want.abs().min() > 1e-3  # a real distance, not two zeros
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # the unit-weight distance is a different number: the learned weights matter
    assert (load_vgg16(backbone)(a, b) - want).abs().max() > 1e-3

    # a full lpips model file (net.sliceK.* + lin*) is a backbone that carries its own weights
    full = str(tmp_path / "lpips_vgg16_full.pth")
    torch.save(ref.state_dict(), full)
    whole = load_vgg16(full)
    assert whole.has_lpips_heads
    torch.testing.assert_close(whole(a, b), want, atol=1e-5, rtol=0)


def test_one_learned_weight_picks_one_channel(tmp_path):
    """lin0 = e_j, lin1..4 = 0: the distance is the spatial mean of (n_a[j] - n_b[j])² at relu1_2, with
    n = x / (|x| + 1e-10) along channels, computed here from the two convolutions directly."""
    backbone = str(tmp_path / "vgg16.pth")
    sd = _random_backbone(backbone, seed=3)
    j = 17
    lins = [torch.zeros(c) for c in _CH]
    lins[0][j] = 1.0
    net = load_vgg16(backbone, _lin_file(str(tmp_path / "lpips" / "vgg.pth"), lins))
    g = torch.Generator().manual_seed(4)
    a, b = torch.rand(2, 3, 32, 32, generator=g) * 2 - 1, torch.rand(2, 3, 32, 32, generator=g) * 2 - 1

    def relu1_2(x):
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        x = F.relu(F.conv2d((x - shift) / scale, sd["features.0.weight"], sd["features.0.bias"], padding=1))
        x = F.relu(F.conv2d(x, sd["features.2.weight"], sd["features.2.bias"], padding=1))
        return x / (x.square().sum(1, keepdim=True).sqrt() + 1e-10)

    want = (relu1_2(a)[:, j] - relu1_2(b)[:, j]).square().mean(dim=(1, 2))
    with torch.no_grad():
        torch.testing.assert_close(net(a, b), want, atol=1e-6, rtol=1e-5)
    # linear in the weights: doubling every weight doubles the distance
    net2 = load_vgg16(backbone, _lin_file(str(tmp_path / "x2" / "vgg.pth"), [2 * v for v in lins]))
    with torch.no_grad():
        torch.testing.assert_close(net2(a, b), 2 * want, atol=1e-6, rtol=1e-5)


def test_without_the_weights_every_channel_weighs_one_and_says_so(tmp_path):
    backbone = str(tmp_path / "vgg16-397923af.pth")
    _random_backbone(backbone)
    net = load_vgg16(backbone)
    assert not net.has_lpips_heads and UNIT_WEIGHTS_NOTE in net.weights_note and "NOT the authors'" in net.weights_note
    assert all(torch.equal(w, torch.ones(c)) for w, c in zip(net.lin, _CH))
    ones = load_vgg16(backbone, _lin_file(str(tmp_path / "lpips" / "vgg.pth"), [torch.ones(c) for c in _CH]))
    a, b = torch.rand(1, 3, 32, 32) * 2 - 1, torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        torch.testing.assert_close(ones(a, b), net(a, b), atol=0, rtol=0)
    # the inversion's 256-px downsampling is explicit: the plain call keeps the size (the texture LPIPS runs at 512)
    big = torch.rand(1, 3, 64, 64) * 2 - 1
    small = F.interpolate(big, size=(32, 32), mode="area")
    with torch.no_grad():
        torch.testing.assert_close(net(big, -big, max_size=32), net(small, -small), atol=1e-6, rtol=1e-5)
        assert (net(big, -big) - net(small, -small)).abs().max() > 1e-4


def test_wrong_weight_files_are_named(tmp_path):
    backbone = str(tmp_path / "vgg16.pth")
    _random_backbone(backbone)
    alex = _lin_file(str(tmp_path / "alex" / "vgg.pth"), [torch.ones(c) for c in (64, 192, 384, 256, 256)])
    with pytest.raises(ValueError, match="lin1.*192 channels.*alex.pth"):
        load_vgg16(backbone, alex)
    partial = str(tmp_path / "partial.pth")
    torch.save({"lin0.model.1.weight": torch.ones(1, 64, 1, 1)}, partial)
    with pytest.raises(ValueError, match=r"lin\[1, 2, 3, 4\]"):
        load_vgg16(backbone, partial)
