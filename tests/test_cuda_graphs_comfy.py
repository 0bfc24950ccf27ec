"""nodes/engines/cuda_graphs.py inside a real ComfyUI (in-process, CPU): the wrappers sit in the UNet and
ControlNet call path, change nothing, and leave the user's MODEL and CONTROL_NET as they were.

On CPU every call runs eagerly (graphs need CUDA); the replays themselves are checked against eager
calls on the GPU by tests/test_cuda_graph.py and bench/bench_isd.py / bench_texture.py
(``max_abs_diff_vs_eager``)."""
from __future__ import annotations

import logging
import sys
import types

import pytest
import torch

pytestmark = pytest.mark.comfy


def test_wrappers_are_in_the_call_path_and_change_nothing(comfy_inprocess, monkeypatch) -> None:
    import comfy.sample

    from idsculpt.nodes.engines.cuda_graphs import WRAPPER_KEY, DiffusionGraphs
    from idsculpt.nodes.engines.sampling import attach_control
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
    import idsculpt.nodes.engines.cuda_graphs as cg

    graphs = DiffusionGraphs(model, cn, enabled=True)
    assert not graphs.enabled  # a CPU model: no graphs
    # put the wrappers in the call path on this CPU run (every call then runs eagerly through them)
    monkeypatch.setattr(cg, "not_resident_reason", lambda *a, **k: None)
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


# -- when graphs are safe (review F2), with stand-ins for the newer host ---------------------------

def _cuda_model(dynamic: bool | None = None):
    """A MODEL-like stand-in on cuda:0 (is_dynamic absent: 0.3.64; present: newer ComfyUI)."""
    m = types.SimpleNamespace(load_device=torch.device("cuda", 0))
    if dynamic is not None:
        m.is_dynamic = lambda: dynamic
    return m


def _fake_prefetch(args) -> types.ModuleType:
    """newer ComfyUI's comfy.model_prefetch.malloc_graph_enabled: compiler on unless --disable-comfy-compiler,
    with aimdo (Dynamic VRAM) enabled, on CUDA devices (model_prefetch.py@03fb330a)."""
    mod = types.ModuleType("comfy.model_prefetch")
    mod.aimdo_enabled = True
    mod.malloc_graph_enabled = lambda dev: (not getattr(args, "disable_comfy_compiler", False) and mod.aimdo_enabled
                                            and torch.device(dev).type == "cuda")
    return mod


def test_graphs_off_reason_follows_the_host(comfy_inprocess, monkeypatch) -> None:
    import comfy.cli_args

    import idsculpt.nodes.engines.cuda_graphs as cg

    args = comfy.cli_args.args
    monkeypatch.setattr(cg, "_cuda_available", lambda: False)
    assert "not a CUDA device" in cg.graphs_off_reason(_cuda_model())
    monkeypatch.setattr(cg, "_cuda_available", lambda: True)
    # 0.3.64 (emulated on any host): no is_dynamic, no --disable-cuda-graphs, no comfy.model_prefetch
    monkeypatch.delattr(args, "disable_cuda_graphs", raising=False)
    monkeypatch.delattr(args, "disable_comfy_compiler", raising=False)
    monkeypatch.setitem(sys.modules, "comfy.model_prefetch", None)  # "import comfy.model_prefetch" fails
    assert cg.graphs_off_reason(_cuda_model()) is None
    assert "not a CUDA device" in cg.graphs_off_reason(types.SimpleNamespace(load_device=torch.device("cpu")))
    # a static model on a newer host
    assert cg.graphs_off_reason(_cuda_model(dynamic=False)) is None
    # Dynamic VRAM: the MODEL or the ControlNet loaded dynamically; the reason names the flags that help
    r = cg.graphs_off_reason(_cuda_model(dynamic=True))
    assert "dynamically" in r and "--highvram" in r and "--gpu-only" in r and "--disable-dynamic-vram" in r
    cn = types.SimpleNamespace(control_model_wrapped=types.SimpleNamespace(is_dynamic=lambda: True))
    assert "ControlNet dynamically" in cg.graphs_off_reason(_cuda_model(dynamic=False), cn)
    cn.control_model_wrapped.is_dynamic = lambda: False
    assert cg.graphs_off_reason(_cuda_model(dynamic=False), cn) is None
    # the host's own switches
    monkeypatch.setattr(args, "disable_cuda_graphs", True, raising=False)
    assert "--disable-cuda-graphs" in cg.graphs_off_reason(_cuda_model(dynamic=False))
    monkeypatch.setattr(args, "disable_cuda_graphs", False)
    monkeypatch.setitem(sys.modules, "comfy.model_prefetch", _fake_prefetch(args))
    assert "model compiler" in cg.graphs_off_reason(_cuda_model(dynamic=False))
    monkeypatch.setattr(args, "disable_comfy_compiler", True, raising=False)
    assert cg.graphs_off_reason(_cuda_model(dynamic=False)) is None
    sys.modules["comfy.model_prefetch"].malloc_graph_enabled = lambda dev: 1 / 0  # a failing host probe: stay eager
    assert "model compiler" in cg.graphs_off_reason(_cuda_model(dynamic=False))


def test_one_log_line_says_why_graphs_are_off(comfy_inprocess, monkeypatch, caplog) -> None:
    import idsculpt.nodes.engines.cuda_graphs as cg
    from tiny_models import tiny_sd15_model

    model = tiny_sd15_model().clone()
    model.load_device = torch.device("cuda", 0)
    model.is_dynamic = lambda: True  # what ModelPatcherDynamic answers
    monkeypatch.setattr(cg, "_cuda_available", lambda: True)
    with caplog.at_level(logging.INFO, logger="IDSculpt"):
        g = cg.DiffusionGraphs(model, None, enabled=True)
        cg.DiffusionGraphs(model, None, enabled=False)  # the user's switch: nothing to explain
    lines = [r.getMessage() for r in caplog.records if "CUDA graphs" in r.getMessage()]
    assert len(lines) == 1 and lines[0].startswith("IDSculpt CUDA graphs off: ComfyUI loads the MODEL dynamically")
    assert not g.enabled and not g.unet.enabled and g.off_reason in lines[0]
    # the wrapper is not even registered: every call runs ComfyUI's own path
    assert cg.WRAPPER_KEY not in str(g.clone_model(model).wrappers)


def test_residency_needs_every_parameter_and_no_dynamic_load(comfy_inprocess) -> None:
    """All parameters, not the first: a dynamic load force-loads the small modules (the first ones may be
    resident) and leaves the rest in host memory. device_type="cpu" lets the CPU stand in for the GPU."""
    from dynamic_vram_standin import DynamicVRAMStandIn
    from tiny_models import tiny_vae

    import idsculpt.nodes.engines.cuda_graphs as cg

    net = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4))
    assert cg.not_resident_reason(net, device_type="cpu") is None
    assert "4 of its 4 parameters are not on the cuda device" == cg.not_resident_reason(net)
    net[1].weight = torch.nn.Parameter(torch.empty(4, 4, device="meta"))  # the first parameter stays resident
    assert cg.not_resident_reason(net, device_type="cpu") == "1 of its 4 parameters are not on the cpu device"
    root = torch.nn.Module()
    root.model_lowvram = True
    assert "partly" in cg.not_resident_reason(torch.nn.Linear(2, 2), root, device_type="cpu")
    vae = tiny_vae(seed=4)
    assert cg.not_resident_reason(vae.first_stage_model, device_type="cpu") is None
    p = DynamicVRAMStandIn(vae.first_stage_model, load_device=torch.device("cpu"), offload_device=torch.device("cpu"))
    p.load(torch.device("cpu"))
    try:
        assert "dynamically" in cg.not_resident_reason(vae.first_stage_model, device_type="cpu")
    finally:
        p.unload()
    assert cg.not_resident_reason(vae.first_stage_model, device_type="cpu") is None


def test_per_call_check_is_cached_and_logged_once(comfy_inprocess, monkeypatch, caplog) -> None:
    import idsculpt.nodes.engines.cuda_graphs as cg
    from tiny_models import tiny_sd15_model

    model = tiny_sd15_model()
    g = cg.DiffusionGraphs(model, None, enabled=False)
    calls = []
    real = cg.not_resident_reason
    monkeypatch.setattr(cg, "not_resident_reason", lambda *a, **k: calls.append(1) or real(*a, **k))
    root, dm = model.model, model.get_model_object("diffusion_model")
    with caplog.at_level(logging.INFO, logger="IDSculpt"):
        assert not g._may_record("UNet", dm, root) and not g._may_record("UNet", dm, root)
        assert len(calls) == 1  # cached while ComfyUI's load state is unchanged
        monkeypatch.setattr(root, "model_lowvram", True)
        assert not g._may_record("UNet", dm, root) and len(calls) == 2  # a new load state: checked again
    lines = [r.getMessage() for r in caplog.records if "CUDA graphs off for the UNet" in r.getMessage()]
    assert len(lines) == 1 and "parameters are not on the cuda device" in lines[0]
