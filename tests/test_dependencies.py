"""core/dependencies.py: import failures name the module that is really missing; the package report.

Fake packages on a temporary sys.path entry stand in for a package installed with --no-deps whose own
import fails (insightface without onnx), a package that is absent, a package lacking a submodule
(mediapipe > 0.10.21 without ``solutions``) and one whose import raises a binary error."""
from __future__ import annotations

import importlib
import io
import os
import subprocess
import sys
import textwrap

import pytest

from idsculpt.core import dependencies as D

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _fake_package(root, name: str, init: str, version: str = "2.1", files: dict | None = None) -> None:
    """``name`` installed in ``root``: its package folder plus a dist-info with its version and top level."""
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(textwrap.dedent(init))
    for rel, text in (files or {}).items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(textwrap.dedent(text))
    info = root / f"{name}-{version}.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
    (info / "top_level.txt").write_text(name + "\n")


@pytest.fixture()
def fake_site(tmp_path, monkeypatch):
    """A temporary site folder first on sys.path; the fake modules are forgotten afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(D, "_PKG_DISTS", None)  # re-read packages_distributions with the fakes
    importlib.invalidate_caches()
    before = set(sys.modules)
    yield tmp_path
    for name in set(sys.modules) - before:
        if name.startswith("idsc_fake"):
            del sys.modules[name]


def test_installed_package_whose_own_import_is_missing_names_that_module(fake_site):
    # what `pip install --no-deps insightface` without onnx looks like
    _fake_package(fake_site, "idsc_fake_face", """
        from . import model_zoo
    """, files={"model_zoo.py": "import onnx_idsc_absent_module\n"})
    with pytest.raises(D.MissingDependency) as ei:
        D.import_optional("idsc_fake_face", purpose="ID Embed")
    msg = str(ei.value)
    assert msg == ("idsc_fake_face 2.1 is installed but cannot be imported because the module 'onnx_idsc_absent_module' is "
                   "missing (ID Embed needs it): pip install onnx_idsc_absent_module")
    assert "not installed" not in msg
    assert ei.value.name == "onnx_idsc_absent_module"
    assert isinstance(ei.value, ImportError) and isinstance(ei.value, RuntimeError)  # old callers caught either
    assert isinstance(ei.value.__cause__, ModuleNotFoundError)


def test_module_not_found_named_onnx_maps_to_its_pip_name(fake_site):
    """The exact case of the newcomer's run: the import raises ModuleNotFoundError('onnx')."""
    _fake_package(fake_site, "idsc_fake_insight", """
        raise ModuleNotFoundError("No module named 'onnx'", name="onnx")
    """)
    with pytest.raises(D.MissingDependency, match=r"^idsc_fake_insight 2\.1 is installed but cannot be imported because "
                                                  r"the module 'onnx' is missing: pip install onnx$"):
        D.import_optional("idsc_fake_insight")
    # import names that pip spells differently get the pip name
    assert D.pip_name("cv2") == "opencv-python-headless" and D.pip_name("PIL.Image") == "pillow"
    assert D.pip_name("skimage.measure") == "scikit-image" and D.pip_name("matplotlib.pyplot") == "matplotlib"


def test_wrapped_import_error_still_names_the_inner_module(fake_site):
    # insightface re-raises a missing onnxruntime as a plain ImportError "from" the ModuleNotFoundError
    _fake_package(fake_site, "idsc_fake_wrap", """
        try:
            import onnxruntime_idsc_absent
        except ModuleNotFoundError as exc:
            raise ImportError("InsightFace requires ONNX Runtime") from exc
    """)
    with pytest.raises(D.MissingDependency, match="because the module 'onnxruntime_idsc_absent' is missing"):
        D.import_optional("idsc_fake_wrap")


def test_absent_package_says_not_installed(fake_site):
    with pytest.raises(D.MissingDependency) as ei:
        D.import_optional("idsc_fake_absent", "app", purpose="ID Embed", install="pip install --no-deps idsc-fake-absent")
    assert str(ei.value) == "idsc_fake_absent is not installed (ID Embed needs it): pip install --no-deps idsc-fake-absent"
    assert ei.value.name == "idsc_fake_absent"

def test_table_install_line_and_half_removed_install(fake_site, monkeypatch):
    # a package of the table carries its own install line
    spec = D.PythonPackage("idsc-fake-tab", "idsc_fake_tab", D.REQUIRED, "faces", "pip install --no-deps idsc-fake-tab==2.1")
    monkeypatch.setattr(D, "PACKAGES", (*D.PACKAGES, spec))
    with pytest.raises(D.MissingDependency, match=r"^idsc-fake-tab is not installed: pip install --no-deps idsc-fake-tab==2\.1$"):
        D.import_optional("idsc_fake_tab")
    # metadata present, module folder gone (a half-removed install): say so rather than "not installed"
    _fake_package(fake_site, "idsc_fake_tab", "")
    import shutil

    shutil.rmtree(fake_site / "idsc_fake_tab")
    importlib.invalidate_caches()
    with pytest.raises(D.MissingDependency, match=r"^idsc-fake-tab 2\.1 is registered as installed but its module 'idsc_fake_tab' "
                                                  r"cannot be found: reinstall it \(pip install --no-deps idsc-fake-tab==2\.1\)$"):
        D.import_optional("idsc_fake_tab")


def test_missing_submodule_of_the_package_itself(fake_site):
    # a newer mediapipe: the package imports, its legacy `python.solutions` is gone
    _fake_package(fake_site, "idsc_fake_mp", "", version="0.10.31", files={"python/__init__.py": ""})
    with pytest.raises(D.MissingDependency) as ei:
        D.import_optional("idsc_fake_mp", "python.solutions.face_mesh", purpose="PanoHead alignment",
                          install="pip install --no-deps idsc_fake_mp==0.10.21")
    assert str(ei.value) == ("idsc_fake_mp 0.10.31 is installed but has no module 'idsc_fake_mp.python.solutions' "
                             "(PanoHead alignment needs it): pip install --no-deps idsc_fake_mp==0.10.21")


def test_other_import_failure_is_quoted(fake_site):
    _fake_package(fake_site, "idsc_fake_abi", """
        raise OSError("libfoo.so.3: cannot open shared object file")
    """)
    with pytest.raises(D.MissingDependency, match=r"^idsc_fake_abi 2\.1 is installed but importing it fails: "
                                                  r"OSError: libfoo\.so\.3: cannot open shared object file$"):
        D.import_optional("idsc_fake_abi")


def test_fresh_thread_import_raises_in_the_caller(fake_site):
    _fake_package(fake_site, "idsc_fake_thread", "import idsc_absent_dep\n")
    with pytest.raises(D.MissingDependency, match="module 'idsc_absent_dep' is missing"):
        D.import_optional("idsc_fake_thread", fresh_thread=True)
    _fake_package(fake_site, "idsc_fake_ok", "import threading\nTHREAD = threading.current_thread().name\n",
                  files={"sub.py": "X = 3\n"})
    mod = D.import_optional("idsc_fake_ok", "sub", fresh_thread=True)
    assert mod.sub.X == 3 and mod.THREAD == "idsculpt-import"  # really imported on the new thread


def test_packages_report_statuses(fake_site):
    _fake_package(fake_site, "idsc_fake_broken", "import onnx_idsc_absent_module\n", version="1.5")
    _fake_package(fake_site, "idsc_fake_limited", "", version="0.10.31", files={"tasks/__init__.py": ""})
    table = (
        D.PythonPackage("json", "json", D.REQUIRED, "stdlib stand-in", "-"),
        D.PythonPackage("idsc-fake-broken", "idsc_fake_broken", D.REQUIRED, "a broken one", "pip install idsc-fake-broken"),
        D.PythonPackage("idsc-fake-limited", "idsc_fake_limited", D.REQUIRED, "landmarks", "pip install x",
                        probe=("solutions",), fallback_probe=("tasks",), fallback_note="Tasks API only"),
        D.PythonPackage("idsc-fake-gone", "idsc_fake_gone", D.REQUIRED, "a missing one", "pip install idsc-fake-gone"),
        D.PythonPackage("idsc-fake-opt", "idsc_fake_opt", D.OPTIONAL, "speed", "pip install idsc-fake-opt"),
    )
    rows = D.python_packages_report(table)
    got = {r.package.module: (r.status, r.version, r.problem) for r in rows}
    assert got["json"][0] == D.OK and not got["json"][2]
    assert got["idsc_fake_broken"] == (D.BROKEN, "1.5", True)
    assert got["idsc_fake_limited"] == (D.LIMITED, "0.10.31", False)
    assert got["idsc_fake_gone"] == (D.MISSING, None, True)
    assert got["idsc_fake_opt"] == (D.ABSENT, None, False)  # optional: listed, not a problem
    text = D.format_packages_table(rows)
    assert "2 required Python package(s) missing or broken:" in text
    assert "idsc-fake-broken 1.5 is installed but cannot be imported because the module 'onnx_idsc_absent_module' is missing" in text
    assert "idsc-fake-gone is not installed (a missing one): pip install idsc-fake-gone" in text
    assert "idsc-fake-opt" in text and "pip install idsc-fake-opt" not in text
    # the cheap load-time check (find_spec only) sees the absent one, not the broken one (that needs an import)
    assert [p.module for p in D.missing_required_packages(table)] == ["idsc_fake_gone"]
    # the JSON form check_models.py reads back formats the same
    assert D.format_packages_table([r.as_dict() for r in rows]) == text


def test_drop_stderr_line_passes_everything_else():
    target = io.StringIO()
    filt = D._DropLines(target, D.PROTOBUF_NOTICE)
    filt.write("first line\nAttributeError")  # PyErr_Print writes the type, ": ", the message, "\n" separately
    filt.write(": ")
    filt.write(D.PROTOBUF_NOTICE)
    filt.write("\nlast, no newline")
    filt.close_out()
    assert target.getvalue() == "first line\nlast, no newline" and filt.dropped == 1


_QUIET_CHILD = r"""
import sys
sys.path.insert(0, sys.argv[1])
import dependencies as D
mp = D.import_optional("mediapipe", "python.solutions.face_mesh", fresh_thread=True)
assert hasattr(mp.solutions.face_mesh, "FaceMesh")
print("LAST=" + repr(getattr(sys, "last_value", None)))
"""


def test_first_mediapipe_import_is_quiet():
    """mediapipe 0.10.21 + protobuf >= 5 print the GetPrototype notice at import (control run); through
    import_optional it is dropped and leaves no stored error (sys.last_value) behind."""
    if importlib.util.find_spec("mediapipe") is None:
        pytest.skip("mediapipe is not installed")
    plain = subprocess.run([sys.executable, "-c", "import mediapipe.python.solutions.face_mesh"], capture_output=True, text=True,
                           timeout=120)
    if D.PROTOBUF_NOTICE not in plain.stderr:
        pytest.skip("this mediapipe/protobuf pair prints no GetPrototype notice: nothing to silence")
    quiet = subprocess.run([sys.executable, "-c", _QUIET_CHILD, os.path.join(ROOT, "core")], capture_output=True, text=True,
                           timeout=120)
    assert quiet.returncode == 0, quiet.stderr[-2000:]
    assert D.PROTOBUF_NOTICE not in quiet.stderr and "LAST=None" in quiet.stdout


_SITES_CHILD = r"""
import os, sys
root, models = sys.argv[1], sys.argv[2]
sys.path.insert(0, os.path.join(root, "bench"))
import _pack; _pack.load()  # the repo as package idsculpt
import numpy as np
sys.modules["onnx"] = None        # as after `pip install --no-deps insightface` without onnx
sys.modules["matplotlib"] = None  # as after `pip install --no-deps mediapipe` without matplotlib
from idsculpt.core.face.detect import load_face_analysis
from idsculpt.core.panohead.align import align_portrait
for call in (lambda: load_face_analysis(models, "buffalo_l"), lambda: align_portrait(np.zeros((256, 256, 3), np.uint8))):
    try:
        call()
        print("NO ERROR")
    except Exception as e:
        print(f"{type(e).__name__}|{getattr(e, 'name', '')}|{e}")
"""


def test_pack_import_sites_name_the_missing_module(tmp_path):
    """The insightface site (core/face/detect.py) and the mediapipe site (core/panohead/align.py)."""
    for pkg in ("insightface", "mediapipe"):
        if importlib.util.find_spec(pkg) is None:
            pytest.skip(f"{pkg} is not installed")
    pack = tmp_path / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    for f in ("det_10g.onnx", "w600k_r50.onnx"):
        (pack / f).write_bytes(b"not read: the import fails first")
    r = subprocess.run([sys.executable, "-c", _SITES_CHILD, ROOT, str(tmp_path / "insightface")], capture_output=True, text=True,
                       timeout=180)
    lines = [ln for ln in r.stdout.splitlines() if "|" in ln]
    assert len(lines) == 2, r.stdout[-2000:] + r.stderr[-3000:]
    face, align = lines
    assert face.startswith("MissingDependency|onnx|insightface ") and "is installed but cannot be imported because the " \
        "module 'onnx' is missing" in face and face.endswith("pip install onnx")
    # the alignment's landmarks (core/face/landmarks.py): the legacy FaceMesh's real cause, and the Tasks API's file
    assert align.startswith("MissingDependency|matplotlib|No MediaPipe face landmarker available (PanoHead alignment)")
    assert "the module 'matplotlib' is missing (PanoHead alignment needs it): pip install matplotlib;" in align
    assert "face_landmarker.task" in align and "models/mediapipe" in align


def _requirement_names(lines) -> list[str]:
    import re

    return [re.split(r"[<>=!~; ]", ln.strip(), maxsplit=1)[0].lower() for ln in lines if ln.strip() and not ln.strip().startswith("#")]


def test_requirements_pyproject_and_package_table_agree():
    """requirements.txt (the README's install) and pyproject's dependencies (a registry install) list the
    same packages, and every required package of the report is installed by one of: requirements.txt,
    the --no-deps line, or ComfyUI (torch)."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+

    with open(os.path.join(ROOT, "requirements.txt"), encoding="utf-8") as fh:
        req_lines = [ln for ln in fh.read().splitlines() if ln.strip() and not ln.startswith("#")]
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    assert [ln.strip() for ln in req_lines] == deps
    names = set(_requirement_names(req_lines))
    for p in D.PACKAGES:
        if p.need != D.REQUIRED:
            continue
        if p.install == D.NO_DEPS_LINE:
            assert p.dist not in names, f"{p.dist} must not be in requirements.txt: pip would install its dependencies"
        elif p.dist != "torch":
            assert p.dist.lower() in names, f"{p.dist} is required but not in requirements.txt"
    assert "torch" not in names  # ComfyUI's own torch is never replaced


def test_check_models_script_lists_a_broken_package(tmp_path):
    """scripts/check_models.py runs the package report in ComfyUI's Python: with onnx blocked there (as after
    `pip install --no-deps insightface` alone) it lists onnx as missing and insightface as broken because of
    onnx, and exits 1 although every model file of the checked workflow is present."""
    if importlib.util.find_spec("insightface") is None:
        pytest.skip("insightface is not installed")
    comfy = tmp_path / "ComfyUI"
    comfy.mkdir()
    (comfy / "main.py").write_text("")
    pack = comfy / "models" / "insightface" / "models" / "buffalo_l"
    pack.mkdir(parents=True)
    for f in ("det_10g.onnx", "w600k_r50.onnx"):
        (pack / f).write_bytes(b"x")
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text("import sys\nsys.modules['onnx'] = None\n")
    script = os.path.join(ROOT, "scripts", "check_models.py")
    cmd = [sys.executable, script, "--comfyui", str(comfy), "--workflow", "eval", "--python", sys.executable]
    ok = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout[-3000:] + ok.stderr[-2000:]
    assert "all required model files found" in ok.stdout and "all required Python packages import" in ok.stdout
    env = dict(os.environ, PYTHONPATH=str(block) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bad = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert bad.returncode == 1, bad.stdout[-3000:] + bad.stderr[-2000:]
    assert "all required model files found" in bad.stdout
    assert "- onnx is not installed (insightface imports it): pip install -r requirements.txt" in bad.stdout
    assert "because the module 'onnx' is missing: pip install onnx" in bad.stdout


@pytest.mark.comfy
def test_model_check_node_lists_python_packages(comfy_server):
    """The IDSculpt Model Check node's report ends with the package list of the server's Python."""
    hist = comfy_server.submit({"1": {"class_type": "IDSculptModelCheck", "inputs": {"workflow": "geometry", "fail_if_missing": False}}})
    report = hist["outputs"]["1"]["text"][0]
    assert "python package" in report
    for p in D.PACKAGES:
        assert p.dist in report
    assert "all required Python packages import" in report or "required Python package(s) missing or broken" in report
