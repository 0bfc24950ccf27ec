"""One xatlas atlas job: the patches in, each patch's UVs out, and the file format that carries both.

This file is also the child process's program (``python xatlas_job.py JOB RESULT``; see xatlas_process):
it imports nothing from the pack, only numpy and xatlas, so it runs by path in any Python that has them.

Options (a dict): ``max_chart_area`` (mesh units², 0 = xatlas' unbounded default), ``resolution`` (texels),
``padding`` (texels between charts), ``bilinear`` (leave room for bilinear lookups).
"""
from __future__ import annotations

import json
import sys

# The child's exit code when its Python lacks numpy or xatlas (sys.executable is not the Python that runs the
# pack, as in some embedded set-ups): the parent then runs the job in-process. Looked up (not imported) before
# the import below, which would otherwise end the child with a traceback.
EXIT_MISSING_PACKAGES = 3
if __name__ == "__main__":
    from importlib.util import find_spec

    if find_spec("numpy") is None or find_spec("xatlas") is None:
        sys.exit(EXIT_MISSING_PACKAGES)

import numpy as np  # noqa: E402

Patch = tuple[np.ndarray, np.ndarray]  # vertices [V, 3] float32, faces [F, 3] uint32 (patch-local ids)
PatchUV = tuple[np.ndarray, np.ndarray, np.ndarray]  # xatlas' per-mesh output: vertex map, faces, uvs in [0, 1]


def generate(patches: list[Patch], options: dict) -> tuple[list[PatchUV], int]:
    """Chart every patch and pack all charts into one atlas; returns each patch's UVs and the chart count."""
    import xatlas

    atlas = xatlas.Atlas()
    for vertices, faces in patches:
        atlas.add_mesh(vertices, faces)
    chart_options = xatlas.ChartOptions()
    if options.get("max_chart_area", 0) > 0:
        chart_options.max_chart_area = float(options["max_chart_area"])
    pack_options = xatlas.PackOptions()
    pack_options.resolution = int(options["resolution"])
    pack_options.padding = int(options["padding"])
    pack_options.bilinear = bool(options["bilinear"])
    atlas.generate(chart_options, pack_options)
    return [tuple(atlas[i]) for i in range(len(patches))], int(atlas.chart_count)


def save_job(path: str, patches: list[Patch], options: dict) -> None:
    arrays = {"options": np.array(json.dumps(options))}
    for i, (vertices, faces) in enumerate(patches):
        arrays[f"v{i}"], arrays[f"f{i}"] = vertices, faces
    np.savez(path, **arrays)


def load_job(path: str) -> tuple[list[Patch], dict]:
    with np.load(path) as z:
        n = sum(1 for k in z.files if k.startswith("v"))
        return [(z[f"v{i}"], z[f"f{i}"]) for i in range(n)], json.loads(str(z["options"]))


def save_result(path: str, parts: list[PatchUV], charts: int) -> None:
    arrays = {"charts": np.array(charts)}
    for i, (vmapping, indices, uvs) in enumerate(parts):
        arrays[f"map{i}"], arrays[f"idx{i}"], arrays[f"uv{i}"] = vmapping, indices, uvs
    np.savez(path, **arrays)


def load_result(path: str) -> tuple[list[PatchUV], int]:
    with np.load(path) as z:
        n = sum(1 for k in z.files if k.startswith("map"))
        return [(z[f"map{i}"], z[f"idx{i}"], z[f"uv{i}"]) for i in range(n)], int(z["charts"])


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: xatlas_job.py JOB.npz RESULT.npz", file=sys.stderr)
        return 2
    patches, options = load_job(argv[0])
    parts, charts = generate(patches, options)
    save_result(argv[1], parts, charts)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
