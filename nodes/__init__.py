"""ComfyUI V3 nodes of the pack: thin adapters from ComfyUI types to ``core``.

Every module in this folder that defines ``NODES`` (a list of ``io.ComfyNode`` classes) is
collected here, so adding a node file needs no edit of this one. Sub-packages (``engines/``: the
ComfyUI-backed engines the nodes use) hold no nodes and are not collected. A module that fails to import is
reported in ComfyUI's log by name, and the rest of the pack still loads.
"""
from __future__ import annotations

import importlib
import logging
import pkgutil

from comfy_api.latest import ComfyExtension, io

log = logging.getLogger("IDSculpt")


def _collect_nodes() -> list[type[io.ComfyNode]]:
    nodes: list[type[io.ComfyNode]] = []
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_") or info.ispkg:
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception:  # one broken node file must not hide the others
            log.exception("IDSculpt: could not import nodes/%s.py; its nodes are unavailable", info.name)
            continue
        nodes.extend(getattr(module, "NODES", []))
    return nodes


#: Retired node ids and what replaces them, for newer ComfyUI's node replacement (``io.NodeReplace``,
#: Feb 2026): when a saved workflow names an old id, the frontend offers the new node with the inputs,
#: widget values and outputs mapped. One dict per replacement, keys as ``io.NodeReplace``'s arguments:
#: new_node_id, old_node_id, old_widget_ids, input_mapping ([{"new_id", "old_id"} | {"new_id",
#: "set_value"}]), output_mapping ([{"new_idx", "old_idx"}]). Empty: no IDSculpt node has been renamed
#: or retired yet; add an entry here when one is.
NODE_REPLACEMENTS: list[dict] = []


def check_node_replacements(replacements: list[dict], node_ids: set[str]) -> None:
    """Refuse entries that would not work: a new id the pack lacks, or an old id it still has."""
    for r in replacements:
        if r.get("new_node_id") not in node_ids:
            raise ValueError(f"node replacement {r}: new_node_id is not a node of this pack")
        if r.get("old_node_id") in node_ids:
            raise ValueError(f"node replacement {r}: old_node_id is still a node of this pack")


async def register_node_replacements(replacements: list[dict], node_ids: set[str]) -> int:
    """Register ``replacements`` with the host where it supports node replacement (feature-detected:
    ``io.NodeReplace`` and ``ComfyAPI().node_replacement``; ComfyUI 0.3.64 has neither). Returns how
    many were registered."""
    node_replace = getattr(io, "NodeReplace", None)
    if node_replace is None or not replacements:
        return 0
    import comfy_api.latest as api_mod

    api_cls = getattr(api_mod, "ComfyAPI", None)
    register = getattr(getattr(api_cls(), "node_replacement", None), "register", None) if api_cls is not None else None
    if not callable(register):
        return 0
    check_node_replacements(replacements, node_ids)
    for r in replacements:
        await register(node_replace(**r))
    return len(replacements)


_loaded = False


def load_once() -> None:
    """What the pack does once per host process when the host loads it, never at import (importing a node
    module has no effect beyond defining it): the diagnostic VRAM cap (``IDSCULPT_VRAM_CAP_GIB``, which probes
    CUDA). Called from ``on_load`` (newer ComfyUI) and from ``get_node_list`` (0.3.64 has no ``on_load``)."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    from .engines.vram import apply_vram_cap

    apply_vram_cap()


class IDSculptExtension(ComfyExtension):
    async def on_load(self) -> None:
        # called by newer ComfyUI before get_node_list (0.3.64 does not call it)
        load_once()
        if not NODE_REPLACEMENTS or not hasattr(io, "NodeReplace"):
            return
        try:
            ids = {n.GET_SCHEMA().node_id for n in _collect_nodes()}
            n = await register_node_replacements(NODE_REPLACEMENTS, ids)
            if n:
                log.info("IDSculpt: %d node replacement(s) registered", n)
        except Exception:  # a host-side failure here must not stop the pack from loading
            log.exception("IDSculpt: could not register node replacements")

    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        load_once()
        return _collect_nodes()
