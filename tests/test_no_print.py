"""core/ and nodes/ report through the "IDSculpt" logger, never print() (issue 21): ComfyUI's log, its levels
and the user's handlers see every line. A command-line ``main()`` writes its result to stdout, which is its output,
not a log line (core/dependencies.py: ``python core/dependencies.py [--json]``)."""
from __future__ import annotations

import ast
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prints(path: str) -> list[str]:
    """print() calls outside a function named main (by the syntax tree: comments and strings are free)."""
    with open(path, encoding="utf-8") as fh:
        tree = ast.parse(fh.read(), path)
    inside_main: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "main":
            inside_main |= {id(n) for n in ast.walk(node)}
    return [f"{os.path.relpath(path, ROOT)}:{n.lineno}" for n in ast.walk(tree)
            if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "print" and id(n) not in inside_main]


def test_core_and_nodes_log_instead_of_printing() -> None:
    found = []
    for part in ("core", "nodes"):
        for folder, _, files in os.walk(os.path.join(ROOT, part)):
            found += [p for f in sorted(files) if f.endswith(".py") for p in _prints(os.path.join(folder, f))]
    assert found == [], "use logging.getLogger('IDSculpt') instead of print(): " + ", ".join(found)


def test_the_detector_finds_a_print(tmp_path) -> None:
    p = tmp_path / "x.py"
    p.write_text("def f():\n    print('a')  # print( in a comment\n\n\ndef main():\n    print('cli output')\ns = 'print(x)'\n")
    assert _prints(str(p)) == [f"{os.path.relpath(str(p), ROOT)}:2"]
