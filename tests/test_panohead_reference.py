"""Our generator against the public PanoHead code (same weights -> same outputs).

Runs only when ``PANOHEAD_SRC`` points to a checkout of SizheAn/PanoHead (its ``training/``,
``torch_utils/``, ``dnnlib/`` folders): nothing from it is vendored here. On CPU its custom ops fall
back to their reference implementations, so this compares maths, key names and shapes."""
from __future__ import annotations

import copy
import os
import sys

import pytest
import torch

SRC = os.environ.get("PANOHEAD_SRC")
pytestmark = pytest.mark.skipif(not SRC or not os.path.isdir(os.path.join(SRC or "", "training")),
                                reason="set PANOHEAD_SRC=<SizheAn/PanoHead checkout> to compare with the public code")


@pytest.mark.slow
def test_same_weights_same_images():
    before = set(sys.modules)
    sys.path.insert(0, SRC)
    try:
        _compare()
    finally:
        sys.path.remove(SRC)
        for name in set(sys.modules) - before:  # keep the release's modules out of the other tests
            if name.split(".")[0] in ("training", "torch_utils", "dnnlib"):
                del sys.modules[name]


def _compare() -> None:
    from training.triplane import TriPlaneGenerator as Reference

    from idsculpt.core.panohead.triplane import TriPlaneGenerator, tiny_config

    torch.set_num_threads(1)
    cfg = tiny_config(w_dim=512, triplane_size=32, channels=32)  # their SR blocks hard-code w_dim 512
    cfg["sr_kwargs"].pop("sr_channels")
    cfg["img_resolution"] = cfg["rendering_kwargs"]["image_resolution"] = 512
    cfg["rendering_kwargs"]["superresolution_module"] = "training.superresolution.SuperresolutionHybrid8XDC"
    torch.manual_seed(0)
    ref = Reference(**copy.deepcopy(cfg)).eval()
    ours = TriPlaneGenerator(**copy.deepcopy(cfg)).eval()
    sd = ref.state_dict()
    for k, v in sd.items():
        if k.endswith("noise_strength"):
            v.fill_(0.3)
    assert set(sd) == set(ours.state_dict())
    ours.load_state_dict(sd, strict=True)
    z = torch.randn(2, 512)
    lab = torch.tensor([[1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0]]).repeat(2, 1)
    with torch.no_grad():
        assert torch.equal(ref.mapping(z, lab), ours.mapping(z, lab))
        assert torch.equal(ref.apply_delta_c(z, lab)[0], ours.apply_delta_c(z, lab)[0])
        ws = ref.mapping(z, lab)
        torch.manual_seed(1)
        a = ref.synthesis(ws, lab, noise_mode="const", neural_rendering_resolution=32)
        torch.manual_seed(1)
        b = ours.synthesis(ws, lab, noise_mode="const", neural_rendering_resolution=32)
    for k in ("image", "image_raw", "image_depth", "image_mask"):
        assert torch.allclose(a[k], b[k], atol=1e-4, rtol=1e-4), k


@pytest.mark.slow
def test_pickle_written_by_the_real_persistence_module_reads_exactly(tmp_path):
    """A snapshot pickled by PanoHead's own torch_utils.persistence (in a separate process) is read
    by our safe reader with every tensor equal, and nothing of the release is imported here."""
    import subprocess
    import textwrap

    from idsculpt.core.panohead import checkpoint as ck

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    script = textwrap.dedent(f"""
        import sys, copy, pickle, torch
        sys.path.insert(0, {SRC!r}); sys.path.insert(0, {os.path.join(root, 'tests')!r})
        import dnnlib, conftest
        from training.triplane import TriPlaneGenerator
        from idsculpt.core.panohead.triplane import tiny_config
        cfg = tiny_config(w_dim=512, triplane_size=16, channels=32)
        cfg["sr_kwargs"].pop("sr_channels"); cfg["img_resolution"] = 512
        cfg["rendering_kwargs"]["superresolution_module"] = "training.superresolution.SuperresolutionHybrid8XDC"
        G = TriPlaneGenerator(**dnnlib.EasyDict(copy.deepcopy(cfg))).eval().requires_grad_(False)
        G.neural_rendering_resolution = 128
        snap = dict(training_set_kwargs=dict(resolution=512), G=copy.deepcopy(G), D=None, G_ema=copy.deepcopy(G), augment_pipe=None)
        pickle.dump(snap, open({str(tmp_path / 'snap.pkl')!r}, 'wb'))
        torch.save(G.state_dict(), {str(tmp_path / 'sd.pt')!r})
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=300)
    cfg, sd = ck.read_release_pickle(str(tmp_path / "snap.pkl"))
    ref = torch.load(str(tmp_path / "sd.pt"), weights_only=True)
    assert set(sd) == set(ref) and all(torch.equal(sd[k], ref[k]) for k in ref)
    assert cfg["neural_rendering_resolution"] == 128 and "torch_utils" not in sys.modules
    ck.build_from_config(cfg).load_state_dict(sd, strict=True)
