"""Registry metadata and node replacement (issue 20): pyproject's [tool.comfy] read by ComfyUI's own
parser, and node replacements registered only where the host has the API (a stand-in for newer ComfyUI).

Needs COMFYUI_PATH and ComfyUI's Python (skipped otherwise).
"""
from __future__ import annotations

import asyncio
import logging
import os

import pytest

pytestmark = pytest.mark.comfy

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_supported_comfyui_range_read_by_comfyui(comfy_inprocess) -> None:
    from packaging.specifiers import SpecifierSet

    from comfy_config.config_parser import extract_node_configuration

    cfg = extract_node_configuration(ROOT)
    assert cfg.tool_comfy.publisher_id == "idsculpt"
    spec = SpecifierSet(cfg.project.supported_comfyui_version)
    assert "0.3.64" in spec and "0.39.0" in spec and "0.3.63" not in spec
    import comfyui_version

    assert comfyui_version.__version__ in spec  # the ComfyUI these tests run on is inside the range


class _RecordingReplace:
    """Stand-in for newer ComfyUI's io.NodeReplace (keyword arguments as upstream's)."""

    def __init__(self, new_node_id, old_node_id, old_widget_ids=None, input_mapping=None, output_mapping=None):
        self.kw = dict(new_node_id=new_node_id, old_node_id=old_node_id, old_widget_ids=old_widget_ids,
                       input_mapping=input_mapping, output_mapping=output_mapping)


def _host_with_node_replacement(monkeypatch, fail: bool = False) -> list:
    """Give comfy_api.latest the newer host's NodeReplace and ComfyAPI().node_replacement.register."""
    import comfy_api.latest as api_mod
    from comfy_api.latest import io

    registered: list = []

    class NodeReplacement:
        async def register(self, node_replace) -> None:
            if fail:
                raise RuntimeError("server not ready")
            registered.append(node_replace.kw)

    class API:
        def __init__(self) -> None:
            self.node_replacement = NodeReplacement()

    monkeypatch.setattr(io, "NodeReplace", _RecordingReplace, raising=False)
    monkeypatch.setattr(api_mod, "ComfyAPI", API)
    return registered


SAMPLE = [{"new_node_id": "IDSculptSaveHead", "old_node_id": "IDSculptSaveGLB", "old_widget_ids": ["filename_prefix"],
           "input_mapping": [{"new_id": "head", "old_id": "mesh"}, {"new_id": "filename_prefix", "old_id": "filename_prefix"}],
           "output_mapping": [{"new_idx": 0, "old_idx": 0}]}]


def test_node_replacements_registered_only_where_supported(comfy_inprocess, monkeypatch, caplog) -> None:
    import idsculpt.nodes as pack_nodes
    from comfy_api.latest import io

    ids = {n.GET_SCHEMA().node_id for n in pack_nodes._collect_nodes()}
    pack_nodes.check_node_replacements(pack_nodes.NODE_REPLACEMENTS, ids)  # the shipped table is valid
    # 0.3.64: no io.NodeReplace -> nothing registered, no error
    monkeypatch.delattr(io, "NodeReplace", raising=False)
    assert asyncio.run(pack_nodes.register_node_replacements(SAMPLE, ids)) == 0
    # a newer host
    registered = _host_with_node_replacement(monkeypatch)
    assert asyncio.run(pack_nodes.register_node_replacements(SAMPLE, ids)) == 1
    assert registered == [{**SAMPLE[0]}]
    with pytest.raises(ValueError, match="new_node_id is not a node"):
        asyncio.run(pack_nodes.register_node_replacements([{**SAMPLE[0], "new_node_id": "Nope"}], ids))
    with pytest.raises(ValueError, match="old_node_id is still a node"):
        asyncio.run(pack_nodes.register_node_replacements([{**SAMPLE[0], "old_node_id": "IDSculptLoadHead"}], ids))
    # the extension's on_load: registers the pack's table; a failing host is logged, loading goes on
    monkeypatch.setattr(pack_nodes, "NODE_REPLACEMENTS", SAMPLE)
    registered.clear()
    asyncio.run(pack_nodes.IDSculptExtension().on_load())
    assert registered == SAMPLE
    _host_with_node_replacement(monkeypatch, fail=True)
    with caplog.at_level(logging.ERROR, logger="IDSculpt"):
        asyncio.run(pack_nodes.IDSculptExtension().on_load())
    assert "could not register node replacements" in caplog.text
