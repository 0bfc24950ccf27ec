"""The paper's stages are peers (issue 21): core/panohead (stage 1), core/sculpt with core/geo_supervision.py
(stage 2 and its reference geometry), core/texture (stage 3) and core/eval never import one another; they meet
through core/stage_types.py and the primitives. And core never imports ComfyUI.

core/speed (CUDA graphs, staging copies, profiling) is a layer under the method: stages and primitives may
import it; it imports nothing else of core (no stage, no primitive), so speed never decides what is computed."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CORE = os.path.join(ROOT, "core")
#: module path inside core (dotted, without "core.") -> stage
STAGES = {"panohead": "stage 1", "sculpt": "stage 2", "geo_supervision": "stage 2", "texture": "stage 3", "eval": "eval"}
COMFY = ("comfy", "comfy_api", "comfy_extras", "comfy_execution", "folder_paths", "nodes", "server", "execution")


def _stage_of(module: str) -> str | None:
    """core-relative dotted module -> its stage, or None for a primitive / shared module."""
    return STAGES.get(module.split(".")[0])


def _imports(path: str, core: str = CORE) -> list[tuple[int, str, bool]]:
    """(line, target, relative) of every import in a file, relative targets resolved to core-relative dotted paths."""
    rel = os.path.relpath(path, core)[:-3].replace(os.sep, ".")
    package = rel.split(".")[:-1]
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)] if node.level > 1 else package
                if node.level - 1 > len(package):
                    continue  # above core: not a core module
                target = ".".join(base + ([node.module] if node.module else []))
                names = [target + "." + a.name for a in node.names] if not node.module else [target]
                out += [(node.lineno, t, True) for t in names]
            elif node.module:
                out.append((node.lineno, node.module, False))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name, False) for a in node.names]
    return out


def _core_files() -> list[str]:
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(CORE) for f in fs if f.endswith(".py"))


def test_stages_never_import_one_another() -> None:
    bad = []
    for path in _core_files():
        rel = os.path.relpath(path, CORE)[:-3].replace(os.sep, ".")
        own = _stage_of(rel)
        for line, target, relative in _imports(path):
            other = _stage_of(target) if relative else None
            if own and other and other != own:
                bad.append(f"core/{os.path.relpath(path, CORE)}:{line} ({own}) imports {target} ({other})")
    assert bad == [], "stages meet through core/stage_types.py and the primitives:\n" + "\n".join(bad)


def _speed_violations(core: str = CORE) -> list[str]:
    """Imports from a core/speed module into any other part of core (relative imports resolved; core uses no
    absolute imports of the pack)."""
    speed = os.path.join(core, "speed")
    files = sorted(os.path.join(d, f) for d, _, fs in os.walk(speed) for f in fs if f.endswith(".py"))
    return [f"core/{os.path.relpath(path, core)}:{line} imports {target} ({_stage_of(target) or 'core'})"
            for path in files for line, target, relative in _imports(path, core=core)
            if relative and target.split(".")[0] != "speed"]


def test_speed_layer_imports_no_stage_and_no_other_core_module() -> None:
    bad = _speed_violations()
    assert bad == [], "core/speed is a layer under the method; it imports nothing else of core:\n" + "\n".join(bad)


def test_core_speed_is_a_primitive_that_stages_may_import() -> None:
    assert _stage_of("speed.cuda_graph") is None
    users = {os.path.relpath(p, CORE).split(os.sep)[0] for p in _core_files()
             for _, t, rel in _imports(p) if rel and t.split(".")[0] == "speed" and "speed" not in os.path.relpath(p, CORE)}
    assert {"panohead", "sculpt", "guidance.py"} <= users, users  # the layer is used where the speed work happens


def test_the_speed_rule_sees_a_stage_import(tmp_path) -> None:
    """The checker itself: a speed module importing a stage (or another core module) is reported."""
    fake = tmp_path / "core"
    (fake / "speed").mkdir(parents=True)
    (fake / "speed" / "x.py").write_text("from .cuda_graph import GraphedCall\nfrom ..sculpt.losses import l1\n"
                                        "from ..camera import Cameras\n")
    assert [b.split(" imports ")[1] for b in _speed_violations(core=str(fake))] == ["sculpt.losses (stage 2)", "camera (core)"]


def test_core_never_imports_comfyui() -> None:
    bad = [f"core/{os.path.relpath(p, CORE)}:{line} imports {t}" for p in _core_files()
           for line, t, relative in _imports(p) if not relative and t.split(".")[0] in COMFY]
    assert bad == []


def test_the_rule_sees_a_cross_stage_import(tmp_path) -> None:
    """The checker itself: a stage-2 file importing stage 1 is seen as such (a test that cannot fail proves nothing)."""
    fake = tmp_path / "core"
    (fake / "sculpt").mkdir(parents=True)
    (fake / "sculpt" / "x.py").write_text("from ..panohead.extract import GanViews\nfrom ..stage_types import GanViews\n")
    imports = _imports(str(fake / "sculpt" / "x.py"), core=str(fake))
    assert [(t, _stage_of(t)) for _, t, _ in imports] == [("panohead.extract", "stage 1"), ("stage_types", None)]
