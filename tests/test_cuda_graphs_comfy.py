"""nodes/cuda_graphs.py inside a real ComfyUI (in-process, CPU): the wrappers sit in the UNet and
ControlNet call path, change nothing, and leave the user's MODEL and CONTROL_NET as they were.

On CPU every call runs eagerly (graphs need CUDA); the replays themselves are checked against eager
calls on the GPU by tests/test_cuda_graph.py and bench/bench_isd.py / bench_texture.py
(``max_abs_diff_vs_eager``)."""
from __future__ import annotations

import pytest
import torch

pytestmark = pytest.mark.comfy


def test_wrappers_are_in_the_call_path_and_change_nothing(comfy_inprocess, monkeypatch) -> None:
    import comfy.sample

    from idsculpt.nodes.cuda_graphs import WRAPPER_KEY, DiffusionGraphs
    from idsculpt.nodes.texture_nodes import attach_control
    from tiny_models import tiny_conditioning, tiny_controlnet, tiny_sd15_model

    model, cn = tiny_sd15_model(), tiny_controlnet()
    pos, neg = tiny_conditioning(3), tiny_conditioning(4)
    hint = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    latent = torch.zeros(1, 4, 8, 8)
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))

    def sample(m):
        control = cn.copy().set_cond_hint(hint, 1.0, (0.0, 1.0))
        cache: dict = {}
        p, n = attach_control(pos, control, cache), attach_control(neg, control, cache)
        with torch.inference_mode():
            return comfy.sample.sample(m, noise, 3, 4.0, "ddim", "ddim_uniform", p, n, latent, disable_pbar=True, seed=0)

    plain = sample(model)
    import idsculpt.nodes.cuda_graphs as cg

    graphs = DiffusionGraphs(model, cn, enabled=True)
    assert not graphs.enabled  # a CPU model: no graphs
    # put the wrappers in the call path on this CPU run (every call then runs eagerly through them)
    monkeypatch.setattr(cg, "_fully_loaded", lambda module: True)
    graphs.enabled = graphs.unet.enabled = graphs.control.enabled = True
    wrapped = graphs.clone_model(model)
    with graphs.control_patched():
        assert "forward" in cn.control_model.__dict__
        out = sample(wrapped)
    assert "forward" not in cn.control_model.__dict__  # the shared ControlNet module is restored
    assert torch.equal(out, plain)
    stats = graphs.stats()
    assert stats["unet"]["eager"] == 3 and stats["controlnet"]["eager"] == 3  # CFG batched: one call per step
    # the user's MODEL carries no wrapper; the clone does
    assert WRAPPER_KEY not in str(model.wrappers) and WRAPPER_KEY in str(wrapped.wrappers)
    graphs.close()
