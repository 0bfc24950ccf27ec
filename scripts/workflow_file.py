"""Reading a ComfyUI workflow file and telling its two formats apart (one home for the scripts).

ComfyUI saves a workflow as the editor's *UI format* (``{"nodes": [...], "links": [...]}``: positions,
widgets by slot) or as the *API format* (``{node id: {"class_type", "inputs"}}``: what ``POST /prompt``
takes; a saved prompt may wrap it as ``{"prompt": {...}}``). scripts/run_pipeline.py needs the API
format, scripts/draw_workflow.py the UI format; each names the other file to pass when given the wrong one.
"""
from __future__ import annotations

import json
from typing import Any, Literal

Format = Literal["ui", "api", "unknown"]


def workflow_format(data: Any) -> Format:
    """``"ui"`` for an editor file, ``"api"`` for a prompt graph (node id -> {class_type, inputs}), else ``"unknown"``."""
    if isinstance(data, dict) and isinstance(data.get("nodes"), list):
        return "ui"
    if isinstance(data, dict) and data and all(isinstance(v, dict) and "class_type" in v for v in data.values()):
        return "api"
    return "unknown"


def read_workflow(path: str) -> tuple[Format, Any]:
    """The file's format and content (a saved ``{"prompt": {...}}`` is unwrapped to its API graph).
    Raises ValueError naming the file when it does not exist or is not JSON."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        raise ValueError(f"workflow {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"workflow {path} is not JSON: {exc}") from None
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and workflow_format(data["prompt"]) == "api":
        data = data["prompt"]
    return workflow_format(data), data
