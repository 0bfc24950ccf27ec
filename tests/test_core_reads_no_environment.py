"""core/ reads no environment (issue 21): switches are parameters, and the few diagnostic ones are read in one
place on the node side (nodes/engines/vram.py), from ComfyUI's environment."""
from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "core")


def _environment_reads(path: str) -> list[str]:
    """os.environ / os.getenv / os.putenv uses in one file (by the syntax tree, not by grep: comments are free)."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in ("environ", "getenv", "putenv", "unsetenv") \
                and isinstance(node.value, ast.Name) and node.value.id == "os":
            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} os.{node.attr}")
        elif isinstance(node, ast.ImportFrom) and node.module == "os" and any(a.name in ("environ", "getenv") for a in node.names):
            found.append(f"{os.path.relpath(path, ROOT)}:{node.lineno} from os import ...")
    return found


def test_no_file_in_core_reads_the_environment() -> None:
    reads = []
    for folder, _, files in os.walk(CORE):
        reads += [r for f in files if f.endswith(".py") for r in _environment_reads(os.path.join(folder, f))]
    assert reads == [], "core/ must take switches as parameters (read them in nodes/engines/vram.py): " + ", ".join(reads)


def test_the_detector_finds_a_read(tmp_path) -> None:
    p = tmp_path / "x.py"
    p.write_text("import os\nA = os.environ.get('X')  # read\nB = os.getenv('Y')\n")
    assert sorted(r.split(" ")[-1] for r in _environment_reads(str(p))) == ["os.environ", "os.getenv"]


@pytest.mark.comfy
def test_the_node_side_reads_the_diagnostic_switches(comfy_inprocess, monkeypatch, tmp_path) -> None:
    from idsculpt.core.render import torch_backend
    from idsculpt.nodes.engines import vram

    monkeypatch.setenv(vram.FUSED_WALK_ENV, "0")
    monkeypatch.setenv(vram.SCULPT_PROFILE_ENV, str(tmp_path))
    monkeypatch.setattr(torch_backend, "FUSED_WALK", True)
    vram.apply_render_switches()
    assert torch_backend.FUSED_WALK is False and torch_backend.TorchBackend("cpu").fused_walk is False
    assert vram.sculpt_profile_folder() == str(tmp_path)
    monkeypatch.delenv(vram.FUSED_WALK_ENV)
    monkeypatch.delenv(vram.SCULPT_PROFILE_ENV)
    vram.apply_render_switches()
    assert torch_backend.FUSED_WALK is True and vram.sculpt_profile_folder() is None
