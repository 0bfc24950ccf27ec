"""scripts/run_pipeline.py: workflow patching (no ComfyUI), the pre-flight model check, and one real run
(LoadImage + IDSculpt Load Head -> IDSculpt Save Head) through a headless ComfyUI it starts itself."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

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
    """workflows/geometry_api.json, unchanged but for CPU-sized settings, on the random-weight stand-ins
    of tests/build_test_models.py: model check, every stage node, Save Head, turntable."""
    wf_path = os.path.join(ROOT, "workflows", "geometry_api.json")
    if not os.path.isfile(wf_path):
        pytest.skip("workflows/geometry_api.json not written yet")
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
