"""The PanoHead release pickle is read without running its embedded code, and every weight survives."""
from __future__ import annotations

import os
import pickle
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(__file__))
from panohead_fixtures import dump_release_pickle, fake_release_modules, tiny_generator  # noqa: E402
from torch_threads import one_thread  # noqa: E402,F401  (autouse: this module runs single-threaded)

from idsculpt.core.panohead import checkpoint as ckpt  # noqa: E402
from idsculpt.core.panohead.triplane import tiny_config  # noqa: E402


def _hostile_src(marker: str) -> str:
    return (f"import pathlib\npathlib.Path({marker!r}).write_text('pickled source ran')\n"
            "raise RuntimeError('the pickled module source was executed')\n")


@pytest.fixture(scope="module")
def release_pickle(tmp_path_factory):
    d = tmp_path_factory.mktemp("panohead_pkl")
    marker = str(d / "PWNED")
    g = tiny_generator(seed=3)
    cfg = tiny_config()
    blob = dump_release_pickle(g, cfg, _hostile_src(marker))
    path = d / ckpt.RELEASE_FILENAME
    path.write_bytes(blob)
    return g, cfg, str(path), marker


def test_pickle_is_armed(release_pickle):
    """Control: the usual loader (the persistence reconstruct hook) does run the stored source."""
    _, _, path, marker = release_pickle
    with fake_release_modules("unused"):
        with open(path, "rb") as f, pytest.raises(RuntimeError, match="pickled module source was executed"):
            pickle.load(f)
    assert os.path.exists(marker)
    os.remove(marker)


def test_safe_reader_roundtrips_every_weight_without_running_code(release_pickle):
    g, cfg, path, marker = release_pickle
    for mod in ("torch_utils", "torch_utils.persistence", "dnnlib", "dnnlib.util"):
        assert mod not in sys.modules  # nothing of the release code is importable here
    config, sd = ckpt.read_release_pickle(path)
    assert not os.path.exists(marker), "the pickle's embedded source was executed"
    ref = g.state_dict()
    assert set(sd) == set(ref)
    for k, v in ref.items():
        assert sd[k].dtype == v.dtype and torch.equal(sd[k], v), k
    assert config["class_name"] == "TriPlaneGenerator"
    assert config["init_kwargs"]["rendering_kwargs"]["triplane_depth"] == cfg["rendering_kwargs"]["triplane_depth"]
    assert config["neural_rendering_resolution"] == 32
    assert "w_avg" in "".join(sd)  # the mapping's running mean travels as a buffer


def test_conversion_to_safetensors_then_load(release_pickle, tmp_path):
    g, _, path, marker = release_pickle
    st, js = ckpt.convert_pickle(path, out_dir=str(tmp_path))
    assert os.path.isfile(st) and os.path.isfile(js) and not os.path.exists(marker)
    g2 = ckpt.load_generator(st)
    for k, v in g.state_dict().items():
        assert torch.equal(g2.state_dict()[k], v), k
    # same images from the same latent (the loaded model is the released network, not a lookalike)
    ws = g.mapping(torch.randn(1, g.z_dim, generator=torch.Generator().manual_seed(0)), torch.zeros(1, 25))
    lab = torch.tensor([[1, 0, 0, 0, 0, -1, 0, 0, 0, 0, -1, 2.7, 0, 0, 0, 1, 4.2647, 0, 0.5, 0, 4.2647, 0.5, 0, 0, 1.0]])
    with torch.no_grad():
        a = g.synthesis(ws, lab, neural_rendering_resolution=16, generator=torch.Generator().manual_seed(1))["image"]
        b = g2.synthesis(ws, lab, neural_rendering_resolution=16, generator=torch.Generator().manual_seed(1))["image"]
    assert torch.equal(a, b)


def test_not_a_panohead_pickle_is_a_clear_error(tmp_path):
    p = tmp_path / "other.pkl"
    p.write_bytes(pickle.dumps({"weights": [1, 2, 3]}))
    with pytest.raises(ValueError, match="G_ema"):
        ckpt.read_release_pickle(str(p))
    with pytest.raises(FileNotFoundError):
        ckpt.load_generator(str(tmp_path / "missing.pkl"))


def test_globals_outside_the_allow_list_stay_inert(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "PWNED2"),))

    p = tmp_path / "evil.pkl"
    p.write_bytes(pickle.dumps({"G_ema": Evil()}))
    with pytest.raises(ValueError, match="persistence"):
        ckpt.read_release_pickle(str(p))
    assert not (tmp_path / "PWNED2").exists()


def test_conversion_is_redone_when_the_pickle_changes(tmp_path):
    """A different .pkl under the same name must not reuse the old conversion."""
    from safetensors.torch import load_file

    pkl = tmp_path / ckpt.RELEASE_FILENAME
    pkl.write_bytes(dump_release_pickle(tiny_generator(seed=1), tiny_config(), "x = 1\n"))
    st1, _ = ckpt.convert_pickle(str(pkl))
    first = load_file(st1)
    mtime = os.path.getmtime(st1)
    assert ckpt.convert_pickle(str(pkl))[0] == st1 and os.path.getmtime(st1) == mtime  # unchanged: reused
    pkl.write_bytes(dump_release_pickle(tiny_generator(seed=2), tiny_config(), "x = 1\n"))
    os.utime(pkl, ns=(os.stat(pkl).st_atime_ns, os.stat(pkl).st_mtime_ns + 10**9))  # a later file, whatever the clock
    second = load_file(ckpt.convert_pickle(str(pkl))[0])
    assert any(not torch.equal(first[k], second[k]) for k in first)
