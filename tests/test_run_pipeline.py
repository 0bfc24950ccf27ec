"""scripts/run_pipeline.py: workflow patching (no ComfyUI), the choice of ComfyUI's Python and of --cpu,
the stage-seconds table, --quick's test-model plumbing, temp-folder cleanup, the pre-flight model check,
and real runs through a headless ComfyUI it starts itself (a tiny graph, the geometry workflow, and
``--quick`` on the full workflow)."""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import comfy_harness as ch
from idsculpt.core.mesh import HeadMesh

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "run_pipeline.py")


def _module():
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    spec = importlib.util.spec_from_file_location("idsculpt_run_pipeline", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


RP = _module()


def tiny_workflow(head_file: str = "idsculpt_rp_head.glb") -> dict:
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": "placeholder.png"}, "_meta": {"title": "Portrait"}},
        "2": {"class_type": "PreviewImage", "inputs": {"images": ["1", 0]}},
        "3": {"class_type": "IDSculptLoadHead", "inputs": {"file": head_file}},
        "4": {"class_type": "IDSculptSaveHead", "inputs": {"head": ["3", 0], "filename_prefix": "IDSculpt/rp", "save_obj": False}},
    }


def coloured_cube() -> HeadMesh:
    """A unit cube with distinct vertex colours (a known, asymmetric object for the turntable)."""
    v = torch.tensor([[x, y, z] for x in (-0.5, 0.5) for y in (-0.5, 0.5) for z in (-0.5, 0.5)], dtype=torch.float32)
    f = torch.tensor([[0, 1, 3], [0, 3, 2], [4, 6, 7], [4, 7, 5], [0, 4, 5], [0, 5, 1], [2, 3, 7], [2, 7, 6],
                      [0, 2, 6], [0, 6, 4], [1, 5, 7], [1, 7, 3]], dtype=torch.int64)
    colours = (v + 0.5).clamp(0, 1)
    return HeadMesh(v, f, vertex_colors=colours)


def test_workflow_patching():
    wf = tiny_workflow()
    assert RP.portrait_node(wf) == "1"
    RP.apply_overrides(wf, ["4.filename_prefix=out/x", "4.save_obj=true", "3.file=\"a b.glb\"", "2.images=[\"3\", 0]"])
    assert wf["4"]["inputs"]["filename_prefix"] == "out/x" and wf["4"]["inputs"]["save_obj"] is True
    assert wf["3"]["inputs"]["file"] == "a b.glb" and wf["2"]["inputs"]["images"] == ["3", 0]
    RP.apply_overrides(wf, ["IDSculptSaveHead.save_obj=false"])  # by class: every node of that class
    assert wf["4"]["inputs"]["save_obj"] is False
    for bad in ("9.x=1", "4filename=1", "4.x", "KSampler.steps=1"):
        with pytest.raises(RP.UsageError):
            RP.apply_overrides(wf, [bad])
    wf["5"] = {"class_type": "LoadImage", "inputs": {"image": "other.png"}}
    assert RP.portrait_node(wf) == "1"  # titled 'Portrait'
    wf["1"]["_meta"]["title"] = "Load Image"
    with pytest.raises(RP.UsageError, match="--portrait-node"):
        RP.portrait_node(wf)
    assert RP.portrait_node(wf, "5") == "5"
    assert RP.infer_models_workflow(wf) == "geometry"
    wf["6"] = {"class_type": "IDSculptTextureRefine", "inputs": {}}
    assert RP.infer_models_workflow(wf) == "full"
    g = {"1": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "a.safetensors"}},
         "2": {"class_type": "UpscaleModelLoader", "inputs": {"model_name": "x2.pth"}},
         "3": {"class_type": "IDSculptInsightFaceLoader", "inputs": {"model_name": "buffalo_l"}}}
    assert RP.referenced_models(g) == [("1", "checkpoints", "a.safetensors"), ("2", "upscale_models", "x2.pth")]


def test_load_workflow_rejects_ui_format(tmp_path):
    p = tmp_path / "ui.json"
    p.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(RP.UsageError, match="Save \\(API\\)"):
        RP.load_workflow(str(p))
    # a shipped UI workflow: the message names its API twin in workflows/api/
    ui = os.path.join(ROOT, "workflows", "geometry.json")
    with pytest.raises(RP.UsageError, match=re.escape(os.path.join(ROOT, "workflows", "api", "geometry.json"))):
        RP.load_workflow(ui)
    p.write_text(json.dumps(tiny_workflow()))
    assert RP.load_workflow(str(p))["4"]["class_type"] == "IDSculptSaveHead"


def test_turntable_renders_the_mesh(tmp_path):
    from PIL import Image

    glb = coloured_cube().save(str(tmp_path / "cube.glb"))
    png, gif = RP.render_turntable(glb, str(tmp_path / "cube"), frames=8, size=64, strip_columns=4)
    sheet = np.asarray(Image.open(png).convert("RGB")).astype(np.float32) / 255
    assert sheet.shape == (128, 256, 3)
    frames = [sheet[r * 64:(r + 1) * 64, c * 64:(c + 1) * 64] for r in range(2) for c in range(4)]
    for fr in frames:
        covered = (np.abs(fr - 1.0).sum(-1) > 0.05).mean()
        assert 0.05 < covered < 0.9  # the cube is in view, and not filling the frame
        assert fr[0, 0].min() > 0.99  # white background at the corner
    # front (azimuth 0, +z face) and back (azimuth 180, -z face) show different vertex colours
    front, back = frames[0][24:40, 24:40].mean((0, 1)), frames[4][24:40, 24:40].mean((0, 1))
    assert front[2] > back[2] + 0.2  # +z face is bluer (colour = position + 0.5)
    g = Image.open(gif)
    assert g.n_frames == 8


# --------------------------------------------------------------------------- ComfyUI's Python and --cpu
def _probe_table(results: dict):
    """A probe that answers from ``results`` {python: (ok, error, info)} and records its calls."""
    calls = []

    def probe(python, comfy_path):
        calls.append(python)
        ok, err, info = results[python]
        return RP.PythonProbe(python, ok, err, info)

    return probe, calls


def test_choose_python_order_and_reasons(monkeypatch, tmp_path):
    here, venv = sys.executable, str(tmp_path / "venv" / "bin" / "python")
    gpu = {"ok": True, "torch": "2.14", "cuda": True}
    # 1. --python wins, without looking elsewhere
    probe, calls = _probe_table({"/x/python": (True, "", gpu)})
    p, why = RP.choose_python("/comfy", "/x/python", probe)
    assert p.python == "/x/python" and why == "given with --python" and calls == ["/x/python"]
    # 2. the running Python, when it imports ComfyUI
    probe, calls = _probe_table({here: (True, "", gpu)})
    p, why = RP.choose_python("/comfy", None, probe)
    assert p.python == here and "running this script imports ComfyUI" in why and calls == [here]
    # 3. else the venv check_models.find_comfy_python finds, saying why
    monkeypatch.setattr(RP.check_models, "find_comfy_python", lambda comfy: venv)
    probe, calls = _probe_table({here: (False, "No module named 'PIL'", {}), venv: (True, "", gpu)})
    p, why = RP.choose_python("/comfy", None, probe)
    assert p.python == venv and calls == [here, venv]
    assert "cannot run ComfyUI (No module named 'PIL')" in why and "found ComfyUI's venv" in why
    # 4. neither: no choice, both reasons named
    probe, _ = _probe_table({here: (False, "No module named 'PIL'", {}), venv: (False, "No module named 'aiohttp'", {})})
    p, why = RP.choose_python("/comfy", None, probe)
    assert p is None and "'PIL'" in why and "'aiohttp'" in why and venv in why
    # 5. no venv found (find_comfy_python falls back to this Python): says where it looked
    monkeypatch.setattr(RP.check_models, "find_comfy_python", lambda comfy: here)
    probe, calls = _probe_table({here: (False, "No module named 'torch'", {})})
    p, why = RP.choose_python("/comfy", None, probe)
    assert p is None and calls == [here] and "no ComfyUI venv was found" in why and "comfyvenv" in why


def _stub_checkout(root, with_folder_paths: bool = True) -> str:
    """A ComfyUI checkout stand-in with the modules the probe imports (comfy.options, comfy.cli_args, folder_paths)."""
    (root / "comfy").mkdir(parents=True)
    (root / "comfy" / "__init__.py").write_text("")
    (root / "comfy" / "options.py").write_text("def enable_args_parsing(enable=False):\n    pass\n")
    (root / "comfy" / "cli_args.py").write_text("args = None\n")
    if with_folder_paths:
        (root / "folder_paths.py").write_text("models_dir = 'models'\n")
    (root / "main.py").write_text("")
    return str(root)


def test_probe_python_of_a_missing_interpreter_says_so(tmp_path):
    gone = RP.probe_python(str(tmp_path / "no-such-python"), _stub_checkout(tmp_path / "good"))
    assert not gone.ok and "FileNotFoundError" in gone.error


def test_probe_python_really_runs_the_candidate(tmp_path):
    """The probe runs the candidate interpreter in the checkout: with torch, aiohttp, yaml, PIL and safetensors in
    this test's Python (ComfyUI's venv; CI's has no aiohttp) it passes; a checkout without folder_paths.py fails
    naming that module."""
    for module in ("aiohttp", "yaml", "PIL", "safetensors"):
        pytest.importorskip(module, reason=f"this Python lacks {module}, which ComfyUI's Python has")
    import torch

    ok = RP.probe_python(sys.executable, _stub_checkout(tmp_path / "good"))
    assert ok.ok and ok.info["torch"] == torch.__version__ and ok.info["cuda"] == torch.cuda.is_available()
    bad = RP.probe_python(sys.executable, _stub_checkout(tmp_path / "bad", with_folder_paths=False))
    assert not bad.ok and bad.error == "No module named 'folder_paths'" and bad.info.get("missing") == "folder_paths"


def test_auto_cpu_decision():
    cpu_only = RP.PythonProbe("/py", True, "", {"ok": True, "torch": "2.14.1+cpu", "cuda": False, "mps": False, "xpu": False})
    cuda = RP.PythonProbe("/py", True, "", {"ok": True, "torch": "2.14.1", "cuda": True})
    mps = RP.PythonProbe("/py", True, "", {"ok": True, "torch": "2.14.1", "cuda": False, "mps": True})
    use, why = RP.cpu_decision(cpu_only, cpu=False, gpu=False, url=None)
    assert use and "has no CUDA/MPS/XPU device: adding --cpu" in why and "2.14.1+cpu" in why
    assert RP.cpu_decision(cuda, False, False, None)[0] is False
    assert RP.cpu_decision(mps, False, False, None) == (False, "torch 2.14.1 sees a GPU (MPS)")  # Apple: no --cpu
    assert RP.cpu_decision(cpu_only, False, True, None) == (False, "--gpu given: no --cpu added")
    assert RP.cpu_decision(cuda, True, False, None) == (True, "--cpu given")
    assert RP.cpu_decision(cpu_only, False, False, "http://h:1")[0] is False  # a running server keeps its own device
    # --cpu and --gpu exclude each other on the command line
    with pytest.raises(SystemExit):
        RP.build_parser().parse_args(["--out", "x", "--cpu", "--gpu"])


# --------------------------------------------------------------------------- stage seconds
def test_stage_seconds_from_recorded_events():
    """A recorded event sequence with known times: each node runs from its 'executing' to the next one's
    (or the prompt's end); cached nodes get no time; samplers and IDSculpt nodes get rows, the rest is summed."""
    wf = {"3": {"class_type": "LoadImage", "inputs": {}}, "8": {"class_type": "IDSculptPanoHeadInvert", "inputs": {}},
          "29": {"class_type": "KSampler", "inputs": {}, "_meta": {"title": "Reference normal map"}},
          "30": {"class_type": "VAEDecode", "inputs": {}}, "51": {"class_type": "IDSculptDMTetSculpt", "inputs": {}},
          "7": {"class_type": "IDSculptPanoHeadLoader", "inputs": {}}}
    events = [(0.0, "execution_start", {}), (0.0, "execution_cached", {"nodes": ["7"]}),
              (0.5, "executing", {"node": "3"}), (1.0, "executing", {"node": "8"}), (1.5, "progress", {"node": "8", "value": 1, "max": 2}),
              (4.0, "executing", {"node": "29"}), (6.5, "executing", {"node": "30"}), (7.0, "executing", {"node": "51"}),
              (17.25, "execution_success", {}), (17.3, "executing", {"node": None})]
    clock = iter([0.0] + [t for t, _, _ in events])  # the printer reads the clock once at start, once per event
    out = []

    class _Stream:
        def write(self, text):
            out.append(text)

        def flush(self):
            pass

    printer = RP.ProgressPrinter(wf, stream=_Stream(), clock=lambda: next(clock))
    for _, kind, data in events:
        printer(kind, data)
    st = printer.times
    assert st.seconds == {"3": 0.5, "8": 3.0, "29": 2.5, "30": 0.5, "51": 10.25} and st.cached == ["7"]
    lines = st.table(wf).splitlines()
    assert lines[0].split() == ["node", "class", "seconds", "title"]
    rows = [ln.split() for ln in lines[1:]]
    assert rows[0] == ["8", "IDSculptPanoHeadInvert", "3.0"]
    assert rows[1] == ["29", "KSampler", "2.5", "Reference", "normal", "map"]
    assert rows[2] == ["51", "IDSculptDMTetSculpt", "10.2"]  # 10.25 shown with one decimal
    assert rows[3] == ["other", "nodes", "1.0"]  # LoadImage 0.5 + VAEDecode 0.5
    assert rows[4][:2] == ["total", "16.8"]  # 16.75
    assert "(1 node(s) cached)" in lines[-1]
    assert any("running node 51 IDSculptDMTetSculpt" in t for t in out)
    # a failure ends the running node too
    st2 = RP.StageTimes()
    st2.on_event("executing", {"node": "8"}, 1.0)
    st2.on_event("execution_error", {"node_id": "8"}, 3.0)
    assert st2.seconds == {"8": 2.0} and st2.current is None


# --------------------------------------------------------------------------- --quick plumbing
def test_quick_workflow_models_and_yaml(tmp_path):
    """--quick patches the shipped full workflow with make_workflows' QUICK_TEST on the template head,
    builds the stand-ins of exactly the files it then loads, and puts them first in ComfyUI's folders."""
    import make_workflows as MW

    full = RP.load_workflow(os.path.join(ROOT, "workflows", "api", "full.json"))
    quick = RP.quick_workflow(full)
    samplers = [n for n in quick.values() if n["class_type"] == "KSampler"]
    assert samplers and all(n["inputs"]["steps"] == MW.QUICK_TEST["KSampler"]["steps"] for n in samplers)
    for cls, values in MW.TEMPLATE_HEAD.items():  # the template head (the random PanoHead has no surface)
        nodes = [n for n in quick.values() if n["class_type"] == cls]
        assert nodes and all(n["inputs"][k] == v for n in nodes for k, v in values.items())
    keys = RP.quick_model_keys(quick)
    models = RP.check_models.load_models_module()
    loaded = {n["inputs"][k] for n in quick.values() for k in ("ckpt_name", "control_net_name", "adapter_name")
              if isinstance(n["inputs"].get(k), str)}
    expect_keys = {m.key for m in models.MODEL_TABLE if m.filename in loaded}
    assert expect_keys <= set(keys) and "insightface" in keys
    assert "panohead" not in keys  # the template head
    assert "realesrgan_x2" in keys and "vae_ft_mse" in keys  # the texture's deblur upscaler and ISD's VAE are in the graph
    files = RP.quick_model_files(str(tmp_path), keys)
    assert os.path.join(str(tmp_path), "insightface", "models", "buffalo_l", "det_10g.onnx") in files
    yaml_path = RP.write_quick_yaml(str(tmp_path), keys, str(tmp_path / "extra.yaml"))
    import yaml

    with open(yaml_path, encoding="utf-8") as fh:
        conf = yaml.safe_load(fh)
    (entry,) = conf.values()
    # is_default: ComfyUI puts these folders FIRST, so real models of the same names do not shadow them
    assert entry.pop("base_path") == str(tmp_path) and entry.pop("is_default") is True
    assert entry == {f: f for f in ("checkpoints", "controlnet", "idsculpt", "insightface", "ipadapter", "upscale_models", "vae")}
    # every model file of the quick graph lies in one of those folders
    assert all(os.path.relpath(f, str(tmp_path)).split(os.sep)[0] in entry for f in files)


class _FakeServer:
    """Stands in for ComfyServer: records the command line, fails at start or returns one GLB."""

    last = None
    fail = False
    glb = b""

    def __init__(self, comfy_path, python, extra_args, log_path=None, url=None):
        self.extra_args, self.stopped = list(extra_args), False
        self.log_path = log_path
        _FakeServer.last = self

    def start(self):
        if _FakeServer.fail:
            raise RP.ComfyError("ComfyUI exited with code 1 during start-up")
        return self

    def object_info(self):
        return {"LoadImage": {}, "IDSculptLoadHead": {}, "IDSculptSaveHead": {}, "PreviewImage": {}}

    def upload_image(self, path):
        return "p.png"

    def connect_ws(self):
        return None

    def queue(self, wf):
        return "pid"

    def wait(self, prompt_id, ws, on_event, timeout=None):
        for kind, data in (("executing", {"node": "3"}), ("executing", {"node": "4"}), ("execution_success", {})):
            on_event(kind, data)
        return {"outputs": {"4": {"3d": [{"filename": "rp_00001_.glb", "subfolder": "IDSculpt", "type": "output"}]},
                            "2": {"images": [{"filename": "pv.png", "subfolder": "", "type": "temp"}]}}}

    def view(self, f):
        return _FakeServer.glb

    def stop(self):
        self.stopped = True

    def log_tail(self, n=0):
        return ""


def _fe_dirs(d) -> list[str]:
    return [n for n in os.listdir(d) if n.startswith("idsculpt_fe_")]


def test_front_end_folder_removed_after_failure_and_success(tmp_path, monkeypatch, capsys):
    """The empty --front-end-root run_pipeline makes for ComfyUI is gone when it returns, whether ComfyUI
    failed to start or the run succeeded (which also prints the stage table and the files)."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(RP.tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(RP, "ComfyServer", _FakeServer)
    glb = coloured_cube().save(str(tmp_path / "cube.glb"))
    with open(glb, "rb") as fh:
        _FakeServer.glb = fh.read()
    portrait = tmp_path / "p.png"
    portrait.write_bytes(b"png")
    args = argparse.Namespace(url=None, extra_model_paths_config=[], base_directory=None, cpu=False, use_cpu=True, comfy_arg=[],
                              out=str(tmp_path / "out"), comfyui=str(tmp_path), python=sys.executable, portrait=str(portrait),
                              timeout=None, quick=False, workflow="tiny_api.json", frames=2, size=32)
    os.makedirs(args.out)
    _FakeServer.fail = True
    assert RP.run_comfy(args, tiny_workflow(), "1", time.monotonic()) == 3
    srv = _FakeServer.last
    fe = srv.extra_args[srv.extra_args.index("--front-end-root") + 1]
    assert os.path.dirname(fe) == str(tmp) and srv.stopped and "--cpu" in srv.extra_args
    assert not os.path.exists(fe) and _fe_dirs(tmp) == []
    _FakeServer.fail = False
    assert RP.run_comfy(args, tiny_workflow(), "1", time.monotonic()) == 0
    assert _fe_dirs(tmp) == []
    text = capsys.readouterr().out
    assert "== seconds per stage" in text and "IDSculptSaveHead" in text
    assert os.path.isfile(os.path.join(args.out, "rp_00001_.glb")) and os.path.isfile(os.path.join(args.out, "rp_00001__turntable.gif"))
    assert "IDSculpt/rp_00001_.glb" in text and "pv.png" not in text  # ComfyUI's saved files; temp previews are not


@pytest.mark.comfy
def test_stops_before_comfyui_when_models_missing(tmp_path, comfy_path, comfy_python):
    wf = tiny_workflow()
    wf["9"] = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "normal-adapted-sd1.5.safetensors"}}
    wfp = tmp_path / "wf.json"
    wfp.write_text(json.dumps(wf))
    portrait = tmp_path / "p.png"
    from PIL import Image

    Image.new("RGB", (32, 32), (200, 150, 120)).save(portrait)
    base = tmp_path / "base"
    base.mkdir()
    r = subprocess.run([sys.executable, SCRIPT, "--comfyui", comfy_path, "--python", comfy_python, "--portrait", str(portrait),
                        "--out", str(tmp_path / "out"), "--workflow", str(wfp), "--base-directory", str(base), "--models", "geometry"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISSING" in r.stdout and "normal-adapted-sd1.5.safetensors" in r.stdout and "node 9 (CheckpointLoaderSimple)" in r.stdout
    assert "stopped before starting ComfyUI" in r.stderr
    assert not os.path.exists(tmp_path / "out" / "comfyui.log")  # no server was started


@pytest.mark.comfy
@pytest.mark.slow
def test_run_pipeline_end_to_end(tmp_path, comfy_path, comfy_python, portraits_dir):
    sandbox = ch.ComfySandbox(str(tmp_path / "sandbox"))
    coloured_cube().save(os.path.join(sandbox.input_dir, "idsculpt_rp_head.glb"))
    wfp = tmp_path / "tiny_api.json"
    wfp.write_text(json.dumps(tiny_workflow()))
    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, "--comfyui", comfy_path, "--python", comfy_python, "--portrait", os.path.join(portraits_dir, "musk_1.jpg"),
           "--out", str(out), "--workflow", str(wfp), "--base-directory", sandbox.base, "--extra-model-paths-config", sandbox.yaml_path,
           "--cpu", "--comfy-arg=--database-url", "--comfy-arg=sqlite:///:memory:", "--models", "none",
           "--set", "4.filename_prefix=IDSculpt/e2e", "--frames", "6", "--size", "64"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-4000:]
    assert "running node 4 IDSculptSaveHead" in r.stdout
    glbs = [f for f in os.listdir(out) if f.endswith(".glb")]
    assert len(glbs) == 1 and glbs[0].startswith("e2e_")
    saved = HeadMesh.load(str(out / glbs[0]))
    assert saved.faces.shape[0] == 12
    stem = os.path.splitext(glbs[0])[0]
    assert os.path.isfile(out / f"{stem}_turntable.png") and os.path.isfile(out / f"{stem}_turntable.gif")
    # the LoadImage node was pointed at the uploaded portrait (and the --set reached the Save node)
    sent = json.loads((out / "workflow_api.json").read_text())
    assert sent["1"]["inputs"]["image"] == "musk_1.jpg" and os.path.isfile(os.path.join(sandbox.input_dir, "musk_1.jpg"))
    assert sent["4"]["inputs"]["filename_prefix"] == "IDSculpt/e2e"
    assert os.path.isfile(os.path.join(sandbox.output_dir, "IDSculpt", glbs[0]))


#: CPU-sized settings for the shipped geometry workflow, by node class (robust to node id changes)
GEOMETRY_SMOKE = [
    "IDSculptPanoHeadInvert.init=template",  # the random test PanoHead has no surface to mesh
    "IDSculptPanoHeadInvert.w_steps=2", "IDSculptPanoHeadInvert.pti_steps=2", "IDSculptPanoHeadInvert.mesh_resolution=64",
    "IDSculptPanoHeadInvert.view_resolution=64", "IDSculptLandmarkRender.preview_resolution=128",
    "EmptyLatentImage.width=64", "EmptyLatentImage.height=64", "KSampler.steps=1", "IDSculptISDGuidance.resolution=64",
    "IDSculptDMTetSculpt.steps=4", "IDSculptDMTetSculpt.gan_steps=2", "IDSculptDMTetSculpt.grid_resolution=32",
    "IDSculptDMTetSculpt.render_resolution=64",
]


@pytest.mark.comfy
@pytest.mark.slow
def test_geometry_workflow_end_to_end_on_test_models(tmp_path, comfy_path, comfy_python, portraits_dir):
    """workflows/api/geometry.json, unchanged but for CPU-sized settings, on the random-weight stand-ins
    of tests/build_test_models.py: model check, every stage node, Save Head, turntable."""
    wf_path = os.path.join(ROOT, "workflows", "api", "geometry.json")
    if not os.path.isfile(wf_path):
        pytest.skip("workflows/api/geometry.json not written yet")
    import test_model_builder as tmb

    models = tmb._build(comfy_path, comfy_python, "small", tmb.SMALL_KEYS + ("depth_sd15",))
    sandbox = ch.ComfySandbox(str(tmp_path / "sandbox"))

    class _S:  # _link_models wants an object with .sandbox
        pass

    s = _S()
    s.sandbox = sandbox
    tmb._link_models(s, models)
    out = tmp_path / "out"
    cmd = [sys.executable, SCRIPT, "--comfyui", comfy_path, "--python", comfy_python, "--portrait", os.path.join(portraits_dir, "jolie_1.jpg"),
           "--out", str(out), "--workflow", wf_path, "--base-directory", sandbox.base, "--extra-model-paths-config", sandbox.yaml_path,
           "--cpu", "--comfy-arg=--database-url", "--comfy-arg=sqlite:///:memory:", "--models", "geometry", "--frames", "4", "--size", "64"]
    for item in GEOMETRY_SMOKE:
        cmd += ["--set", item]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1200)
    assert r.returncode == 0, r.stdout[-5000:] + r.stderr[-3000:]
    assert "all required model files found" in r.stdout
    assert "IDSculptDMTetSculpt" in r.stdout and "step 4/4" in r.stdout  # progress came through the websocket
    glbs = sorted(f for f in os.listdir(out) if f.endswith(".glb"))
    assert len(glbs) == 1
    head = HeadMesh.load(str(out / glbs[0]))
    assert head.faces.shape[0] > 100 and torch.isfinite(head.vertices).all()
    ext = (head.vertices.max(0).values - head.vertices.min(0).values)
    assert (ext > 0.2).all() and (ext < 5).all()  # a head-sized object, not a collapsed or exploded mesh
    assert os.path.isfile(out / (glbs[0][:-4] + "_turntable.gif"))


@pytest.mark.comfy
@pytest.mark.slow
def test_quick_run_end_to_end_on_cpu(tmp_path, comfy_path, comfy_python, portraits_dir):
    """``run_pipeline.py --quick`` exactly as a new user runs it (no --python, no --cpu, no --workflow): it
    picks this Python (which imports ComfyUI), adds --cpu when torch has no GPU, builds or reuses the
    random-weight test models, runs the shipped full workflow lowered, and writes a textured GLB; the
    stage table lists the IDSculpt nodes and the samplers; no temporary folder is left behind.
    The pack comes in through the test sandbox (its YAML's custom_nodes entry): the user's install is a clone
    into ComfyUI/custom_nodes. First run builds the test models (~1.5 min, cached in $IDSCULPT_TEST_MODELS_DIR
    or tests/output/test_models, shared with tests/test_model_builder.py)."""
    import torch

    sandbox = ch.ComfySandbox(str(tmp_path / "sandbox"))
    test_models = os.environ.get("IDSCULPT_TEST_MODELS_DIR") or os.path.join(ROOT, "tests", "output", "test_models")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    cmd = [comfy_python, SCRIPT, "--comfyui", comfy_path, "--portrait", os.path.join(portraits_dir, "bezos_1.jpg"), "--out", str(out),
           "--quick", "--test-models", test_models, "--base-directory", sandbox.base, "--extra-model-paths-config", sandbox.yaml_path,
           "--comfy-arg=--database-url", "--comfy-arg=sqlite:///:memory:", "--frames", "4", "--size", "64"]
    t0 = time.monotonic()
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=1500, env=dict(os.environ, TMPDIR=str(tmp)))
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    assert "the Python running this script imports ComfyUI" in r.stdout
    if not torch.cuda.is_available():
        assert "has no CUDA/MPS/XPU device: adding --cpu" in r.stdout and "main.py --cpu" in r.stdout
    assert "all required model files found" in r.stdout and "all required Python packages import" in r.stdout
    table = r.stdout.split("== seconds per stage", 1)[1].split("== results", 1)[0]
    for cls in ("IDSculptPanoHeadInvert", "IDSculptDMTetSculpt", "IDSculptProgressiveInpaint", "IDSculptTextureRefine", "KSampler"):
        assert cls in table, f"{cls} missing from the stage table:\n{table}"
    full = sorted(f for f in os.listdir(out) if f.startswith("head_full") and f.endswith(".glb"))
    assert len(full) == 1, os.listdir(out)
    head = HeadMesh.load(str(out / full[0]))
    assert head.uvs is not None and head.texture is not None and head.texture.shape[0] >= 256
    assert torch.isfinite(head.vertices).all() and torch.isfinite(head.texture).all()
    assert os.path.isfile(out / (full[0][:-4] + "_turntable.png"))
    assert [n for n in os.listdir(tmp) if n.startswith("idsculpt_fe_")] == []
    print(f"run_pipeline --quick: exit 0 in {wall:.0f} s wall")
