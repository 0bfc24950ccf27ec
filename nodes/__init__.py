"""ComfyUI V3 nodes of the pack: thin adapters from ComfyUI types to ``core``.

Every module in this folder that defines ``NODES`` (a list of ``io.ComfyNode`` classes) is
collected here, so adding a node file needs no edit of this one. A module that fails to import is
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
        if info.name.startswith("_"):
            continue
        try:
            module = importlib.import_module(f"{__name__}.{info.name}")
        except Exception:  # one broken node file must not hide the others
            log.exception("IDSculpt: could not import nodes/%s.py; its nodes are unavailable", info.name)
            continue
        nodes.extend(getattr(module, "NODES", []))
    return nodes


class IDSculptExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return _collect_nodes()
