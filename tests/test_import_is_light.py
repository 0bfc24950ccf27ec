"""Nothing heavy at import time (issue 21): importing a module of core/ or nodes/ defines things and registers
model folders, nothing else. Big optional libraries (face detectors, MediaPipe, the renderers' extensions,
upscalers, CLIP) are imported where they are first used, and what must run once per process (the VRAM cap,
a CUDA probe) runs in the extension's load hook (nodes/__init__.py ``load_once``)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: imported only inside the functions that use them (each costs from tenths of a second to seconds, or probes a GPU)
HEAVY = {"insightface", "onnxruntime", "mediapipe", "kornia", "spandrel", "dlib", "open_clip", "transformers", "cv2",
         "nvdiffrast", "xatlas", "trimesh", "scipy", "skimage", "facexlib", "triton", "lpips", "clip"}
#: module-level calls allowed: registering model folders with ComfyUI (dictionary updates the node schemas read)
#: and filling a constant table
ALLOWED_CALLS = {("nodes/common.py", "model_folder"), ("nodes/id_adapter_nodes.py", "model_folder"),
                 ("core/dependencies.py", "PIP_NAMES.update")}
#: modules that are themselves imported lazily (walk_triton, sd_vae_ops and triplane import them inside a function)
LAZY_MODULES = {"core/render/_walk_kernel.py", "core/_gn_silu_kernel.py", "core/panohead/_trigrid_kernel.py"}


def _files() -> list[str]:
    return sorted(os.path.relpath(os.path.join(d, f), ROOT).replace(os.sep, "/")
                  for top in ("core", "nodes") for d, _, fs in os.walk(os.path.join(ROOT, top)) for f in fs if f.endswith(".py"))


def _heavy_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """Top-level imports (module body, also inside top-level if/try) of a HEAVY library."""
    out = []
    body = list(tree.body)
    while body:
        n = body.pop(0)
        if isinstance(n, (ast.If, ast.Try)):
            body += n.body + getattr(n, "orelse", []) + [s for h in getattr(n, "handlers", []) for s in h.body]
        elif isinstance(n, ast.Import):
            out += [(n.lineno, a.name) for a in n.names if a.name.split(".")[0] in HEAVY]
        elif isinstance(n, ast.ImportFrom) and not n.level and n.module and n.module.split(".")[0] in HEAVY:
            out.append((n.lineno, n.module))
    return out


def _module_level_calls(tree: ast.Module) -> list[tuple[int, str]]:
    """Bare calls run at import (``f()`` statements in the module body; assignments of constants are fine)."""
    return [(n.lineno, ast.unparse(n.value.func)) for n in tree.body
            if isinstance(n, ast.Expr) and isinstance(n.value, ast.Call)]


def test_no_heavy_library_is_imported_at_module_level() -> None:
    bad = []
    for rel in _files():
        if rel in LAZY_MODULES:
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), rel)
        bad += [f"{rel}:{line} imports {name}" for line, name in _heavy_imports(tree)]
    assert bad == [], "import these where they are used:\n" + "\n".join(bad)


def test_no_module_runs_work_at_import() -> None:
    bad = []
    for rel in _files():
        with open(os.path.join(ROOT, rel), encoding="utf-8") as fh:
            tree = ast.parse(fh.read(), rel)
        bad += [f"{rel}:{line} calls {f}()" for line, f in _module_level_calls(tree) if (rel, f) not in ALLOWED_CALLS]
    assert bad == [], "run it in nodes/__init__.py load_once() or at first use:\n" + "\n".join(bad)


def test_the_checks_see_what_they_forbid() -> None:
    tree = ast.parse("import os\nimport cv2\ntry:\n    from mediapipe.tasks import vision\nexcept ImportError:\n    pass\n"
                     "def f():\n    import kornia\n\napply_vram_cap()\nX = compute()\n")
    assert _heavy_imports(tree) == [(2, "cv2"), (4, "mediapipe.tasks")]
    assert _module_level_calls(tree) == [(10, "apply_vram_cap")]
