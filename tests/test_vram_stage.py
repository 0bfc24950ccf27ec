"""nodes/engines/vram.py in a real ComfyUI (in-process, CPU): the stage record, the mode check, the node inputs."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.comfy

STAGE_NODES = ("IDSculptPanoHeadInvert", "IDSculptDMTetSculpt", "IDSculptProgressiveInpaint", "IDSculptTextureRefine")


def test_stage_writes_one_json_line_per_stage(comfy_inprocess, tmp_path, monkeypatch) -> None:
    from idsculpt.nodes.engines import vram

    path = tmp_path / "stages.jsonl"
    monkeypatch.setenv(vram.LOG_ENV, str(path))
    with vram.stage("A", "offload") as rec:
        rec["extra"] = 1
    with pytest.raises(RuntimeError, match="boom"):
        with vram.stage("B", "keep_loaded"):
            raise RuntimeError("boom")  # a failing stage is still recorded
    lines = [json.loads(x) for x in path.read_text().splitlines()]
    assert [r["stage"] for r in lines] == ["A", "B"]
    assert lines[0]["vram_mode"] == "offload" and lines[0]["extra"] == 1 and lines[0]["seconds"] >= 0
    with pytest.raises(ValueError, match="vram_mode must be one of"):
        with vram.stage("C", "tiny"):
            pass


def test_stage_profile_names_the_stage_work(comfy_inprocess, tmp_path, monkeypatch) -> None:
    """IDSCULPT_PROFILE_DIR: each stage writes a cProfile (.prof + readable .txt) of its own work."""
    import pstats

    from idsculpt.nodes.engines import vram

    def sculpt_like_work() -> int:
        return sum(i * i for i in range(20000))

    monkeypatch.setenv(vram.PROFILE_ENV, str(tmp_path / "prof"))
    with vram.stage("Some Stage", "keep_loaded"):
        sculpt_like_work()
    profs = sorted((tmp_path / "prof").glob("Some_Stage_*.prof"))
    txts = sorted((tmp_path / "prof").glob("Some_Stage_*.txt"))
    assert len(profs) == 1 and len(txts) == 1
    stats = pstats.Stats(str(profs[0])).stats
    assert any(func[2] == "sculpt_like_work" for func in stats)
    assert "sculpt_like_work" in txts[0].read_text()
    monkeypatch.delenv(vram.PROFILE_ENV)
    with vram.stage("Other Stage", "keep_loaded"):
        sculpt_like_work()
    assert not list((tmp_path / "prof").glob("Other_Stage_*"))


def test_vram_cap_is_a_no_op_without_cuda_or_env(comfy_inprocess, monkeypatch) -> None:
    from idsculpt.nodes.engines import vram

    monkeypatch.setenv(vram.CAP_ENV, "8")
    vram.apply_vram_cap()  # CPU: nothing to cap, no error
    monkeypatch.setenv(vram.CAP_ENV, "eight")
    vram.apply_vram_cap()


def test_vram_cap_is_set_once_by_the_load_hook(comfy_inprocess, monkeypatch) -> None:
    """The cap (a CUDA probe) is set when the host loads the pack, once, whichever hook the host calls
    (on_load on newer ComfyUI, get_node_list on 0.3.64): 2 GiB of an 8 GiB card is a fraction of 0.25."""
    import asyncio

    import torch

    import idsculpt
    import idsculpt.nodes as pack_nodes
    from idsculpt.nodes.engines import vram

    calls = []
    monkeypatch.setenv(vram.CAP_ENV, "2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda dev: type("P", (), {"total_memory": 8 * 2**30})())
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, dev: calls.append((f, dev)))
    monkeypatch.setattr(vram.mm, "get_torch_device", lambda: "cuda:0")
    monkeypatch.setattr(pack_nodes, "_loaded", False)
    ext = asyncio.run(idsculpt.comfy_entrypoint())
    assert calls == []  # building the extension does nothing
    asyncio.run(ext.on_load())
    asyncio.run(ext.get_node_list())
    assert calls == [(0.25, "cuda:0")]


def test_stage_nodes_offer_vram_mode(comfy_inprocess) -> None:
    from idsculpt.nodes.engines.vram import VRAM_MODES

    nodes = comfy_inprocess.load_pack_nodes()
    for nid in STAGE_NODES:
        schema = nodes[nid].GET_SCHEMA()
        inp = {i.id: i for i in schema.inputs}
        assert "vram_mode" in inp, nid
        assert list(inp["vram_mode"].options) == VRAM_MODES and inp["vram_mode"].default == "offload"


def test_offload_keeps_dynamic_models_and_records_dynamic_vram(comfy_inprocess, monkeypatch, tmp_path) -> None:
    """Newer ComfyUI (stand-ins): dynamically loaded models are left to its own streaming, static ones are
    unloaded; the stage record says whether Dynamic VRAM was on (its weights are outside the peaks)."""
    import sys
    import types

    import comfy.model_management as mm

    from idsculpt.nodes.engines import vram

    static, dynamic = types.SimpleNamespace(model=types.SimpleNamespace()), types.SimpleNamespace(
        model=types.SimpleNamespace(is_dynamic=lambda: True))
    calls = []
    monkeypatch.setattr(mm, "current_loaded_models", [static, dynamic])
    monkeypatch.setattr(mm, "free_memory", lambda req, dev, keep_loaded=(): calls.append(list(keep_loaded)) or
                        [m for m in mm.current_loaded_models if m not in keep_loaded])
    assert vram.offload_other_models("cuda:0") == {"unloaded_models": 1, "kept_dynamic_models": 1}
    assert calls == [[dynamic]]
    monkeypatch.setattr(mm, "current_loaded_models", [static])  # 0.3.64: no is_dynamic anywhere
    assert vram.offload_other_models("cuda:0") == {"unloaded_models": 1} and calls[-1] == []
    # the host's Dynamic VRAM flag
    assert vram.host_dynamic_vram() is False  # 0.3.64 / CPU
    monkeypatch.setitem(sys.modules, "comfy.memory_management", types.SimpleNamespace(aimdo_enabled=True))
    assert vram.host_dynamic_vram() is True
    path = tmp_path / "stages.jsonl"
    monkeypatch.setenv(vram.LOG_ENV, str(path))
    with vram.stage("S", "offload"):
        pass
    assert json.loads(path.read_text())["dynamic_vram"] is True


def test_not_counted_names_what_the_peaks_cannot_see(comfy_inprocess, monkeypatch) -> None:
    """The stage record names the dynamically loaded models (Dynamic VRAM keeps their weights outside
    PyTorch's allocator) and onnxruntime's allocations when onnxruntime is loaded; nothing otherwise."""
    import sys
    import types

    import comfy.model_management as mm

    from idsculpt.nodes.engines import vram

    class SD15UNet:  # the model class the record names
        pass

    dynamic = types.SimpleNamespace(model=types.SimpleNamespace(model=SD15UNet(), is_dynamic=lambda: True))
    static = types.SimpleNamespace(model=types.SimpleNamespace(model=object()))
    monkeypatch.delitem(sys.modules, "onnxruntime", raising=False)
    monkeypatch.setattr(mm, "current_loaded_models", [static])
    assert vram.not_counted() == []  # 0.3.64, no onnxruntime: the peaks see everything
    monkeypatch.setattr(mm, "current_loaded_models", [static, dynamic])
    assert vram.not_counted() == ["Dynamic VRAM weights of SD15UNet"]
    monkeypatch.setitem(sys.modules, "onnxruntime", types.ModuleType("onnxruntime"))
    monkeypatch.setattr(mm, "current_loaded_models", [static])
    monkeypatch.setitem(sys.modules, "comfy.memory_management", types.SimpleNamespace(aimdo_enabled=True))
    assert vram.not_counted() == ["Dynamic VRAM weights", "onnxruntime allocations (InsightFace)"]
