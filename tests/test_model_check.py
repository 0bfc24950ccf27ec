"""The model table (core/models.py), its docs, scripts/check_models.py and the IDSculpt Model Check node."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from idsculpt.core import models as M

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "check_models.py")


def _touch(path: str, data: bytes = b"x") -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
    return path


def _lookup(root: str):
    return lambda key: [os.path.join(root, key)]


def _install_required(root: str, workflow: str = "full") -> None:
    """One accepted (canonical) file for every required row of ``workflow``."""
    for spec in M.MODEL_TABLE:
        if spec.need == M.REQUIRED and workflow in spec.workflows:
            _touch(os.path.join(root, spec.folder, *spec.filename.split("/")))


def test_table_is_complete_and_consistent():
    keys = [m.key for m in M.MODEL_TABLE]
    assert len(keys) == len(set(keys))
    # every model REFERENCE.md / README.md lists is in the table
    for k in ("normal_sd15", "depth_sd15", "controlnet_mediapipe_face", "controlnet_canny", "controlnet_normalbae",
              "texture_sd15", "id_adapter", "insightface_det", "insightface_rec", "panohead", "vgg16", "lpips_vgg",
              "realesrgan_x2"):
        assert k in keys
    for m in M.MODEL_TABLE:
        assert m.need in (M.REQUIRED, M.OPTIONAL)
        assert set(m.workflows) <= set(M.WORKFLOWS) and m.workflows
        assert m.source and m.licence and m.locations
        assert m.required_with is None or m.required_with in keys
    assert M.get_spec("panohead").need == M.OPTIONAL  # template fallback exists
    assert M.get_spec("vgg16").required_with == "panohead"
    assert M.get_spec("id_adapter").filename == "ip-adapter-faceid-portrait-v11_sd15.bin"
    assert M.get_spec("controlnet_canny").folder == "controlnet"


def test_check_models_finds_variants_and_reports_missing(tmp_path):
    root = str(tmp_path)
    rows = M.check_models(_lookup(root), "geometry")
    assert {r.spec.key for r in rows} >= {"normal_sd15", "id_adapter", "insightface_det"}
    assert "controlnet_normalbae" not in {r.spec.key for r in rows}  # texture-only
    assert {r.spec.key for r in M.missing_required(rows)} == {r.spec.key for r in rows if r.spec.need == M.REQUIRED}
    # alternative names: .pth / fp16 / case / subfolder / diffusers layout
    _touch(os.path.join(root, "controlnet", "control_v11p_sd15_canny_fp16.safetensors"))
    _touch(os.path.join(root, "controlnet", "sd15", "Control_V2P_SD15_MediaPipe_Face.safetensors"))
    _touch(os.path.join(root, "diffusers", "normal-adapted-sd1.5", "unet", "diffusion_pytorch_model.bin"))
    _touch(os.path.join(root, "checkpoints", "HumanNorm_depth-adapted-sd1.5.ckpt"))
    _touch(os.path.join(root, "ipadapter", "ip-adapter-faceid-portrait-v11_sd15.safetensors"))
    _touch(os.path.join(root, "insightface", "models", "buffalo_l", "det_10g.onnx"))
    _touch(os.path.join(root, "insightface", "models", "buffalo_l", "w600k_r50.onnx"))
    _touch(os.path.join(root, "vae", "sd-vae-ft-mse.safetensors"))  # required: the ISD encodes with it, as the authors
    rows = {r.spec.key: r for r in M.check_models(_lookup(root), "geometry")}
    assert rows["controlnet_canny"].path.endswith("control_v11p_sd15_canny_fp16.safetensors")
    assert rows["controlnet_mediapipe_face"].path.endswith(os.path.join("sd15", "Control_V2P_SD15_MediaPipe_Face.safetensors"))
    assert rows["normal_sd15"].present and rows["depth_sd15"].present and rows["id_adapter"].present
    assert M.missing_required(rows.values()) == []
    table = M.format_table(list(rows.values()))
    assert "all required model files found" in table


def test_texture_model_accepts_any_checkpoint_but_humannorm(tmp_path):
    root = str(tmp_path)
    _touch(os.path.join(root, "checkpoints", "normal-adapted-sd1.5.safetensors"))
    _touch(os.path.join(root, "checkpoints", "depth_adapted_sd15.ckpt"))
    rows = {r.spec.key: r for r in M.check_models(_lookup(root), "full")}
    assert rows["normal_sd15"].present and rows["depth_sd15"].present and not rows["texture_sd15"].present
    _touch(os.path.join(root, "checkpoints", "sd15", "dreamshaper_8.safetensors"))
    assert next(r for r in M.check_models(_lookup(root), "full") if r.spec.key == "texture_sd15").path.endswith("dreamshaper_8.safetensors")
    _touch(os.path.join(root, "checkpoints", "realisticVisionV40_v40VAE.safetensors"))  # the paper's model wins
    assert next(r for r in M.check_models(_lookup(root), "full") if r.spec.key == "texture_sd15").path.endswith("realisticVisionV40_v40VAE.safetensors")


def test_vgg16_becomes_required_with_panohead(tmp_path):
    root = str(tmp_path)
    rows = {r.spec.key: r for r in M.check_models(_lookup(root), "geometry")}
    assert not rows["vgg16"].required
    _touch(os.path.join(root, "idsculpt", "easy-khair-180-gpc0.8-trans10-025000.pkl"))
    rows = {r.spec.key: r for r in M.check_models(_lookup(root), "geometry")}
    assert rows["panohead"].present and rows["vgg16"].required and rows["vgg16"] in M.missing_required(rows.values())


def test_lpips_vgg_weights_are_their_own_optional_row(tmp_path):
    """LPIPS' vgg.pth (learned channel weights) sits beside the VGG16 backbone in models/idsculpt; neither
    row takes the other's file, and it stays optional (the perceptual loss falls back to unit weights)."""
    root = str(tmp_path)
    _touch(os.path.join(root, "idsculpt", "easy-khair-180-gpc0.8-trans10-025000.pkl"))
    _touch(os.path.join(root, "idsculpt", "lpips", "vgg.pth"))
    rows = {r.spec.key: r for r in M.check_models(_lookup(root), "geometry")}
    assert rows["lpips_vgg"].path == os.path.join(root, "idsculpt", "lpips", "vgg.pth")
    assert not rows["vgg16"].present and not rows["lpips_vgg"].required
    assert "lpips_vgg" not in {r.spec.key for r in M.missing_required(rows.values())}
    _touch(os.path.join(root, "idsculpt", "vgg16-397923af.pth"))
    os.remove(os.path.join(root, "idsculpt", "lpips", "vgg.pth"))
    rows = {r.spec.key: r for r in M.check_models(_lookup(root), "full")}
    assert rows["vgg16"].present and not rows["lpips_vgg"].present
    spec = M.get_spec("lpips_vgg")
    assert spec.filename == "lpips/vgg.pth" and spec.folder == "idsculpt" and "lpips/weights/v0.1/vgg.pth" in spec.source


def test_realesrgan_row_names_the_file_the_authors_load():
    """The authors' deblur loads ai-forever's RealESRGAN_x2.pth (threestudio/utils/sr.py HF_MODELS[2])."""
    spec = M.get_spec("realesrgan_x2")
    assert spec.filename == "RealESRGAN_x2.pth" and spec.folder == "upscale_models" and "ai-forever/Real-ESRGAN" in spec.source
    assert ("upscale_models", "RealESRGAN_x2plus.pth") in spec.locations and spec.workflows == ("full",)


def test_search_order_and_missing_folder_keys(tmp_path):
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    _touch(os.path.join(a, "control_v11p_sd15_canny.safetensors"))
    _touch(os.path.join(b, "control_v11p_sd15_canny.pth"))  # the official release name

    def lookup(key):
        if key == "controlnet":
            return [a, b]
        raise KeyError(key)  # folder_paths raises for unregistered keys

    row = next(r for r in M.check_models(lookup, "all") if r.spec.key == "controlnet_canny")
    assert row.path == os.path.join(b, "control_v11p_sd15_canny.pth")  # canonical name wins over directory order
    assert row.searched == [a, b]
    with pytest.raises(ValueError, match="unknown workflow"):
        M.check_models(lookup, "texture-only")


def test_missing_model_message_points_at_the_table():
    msg = M.missing_model_message("control_v11p_sd15_canny.pth", "controlnet", ["/x/models/controlnet"])
    assert "canny ControlNet" in msg and "lllyasviel/ControlNet-v1-1" in msg and "/x/models/controlnet" in msg
    assert "docs/MODELS.md" in msg and "IDSculpt Model Check" in msg
    assert "PanoHead" in M.missing_model_message("panohead") and "CC BY-NC" in M.missing_model_message("panohead")
    assert "h94/IP-Adapter-FaceID" in M.missing_model_message("ip-adapter-faceid-portrait-v11_sd15.bin", "ipadapter")
    unknown = M.missing_model_message("my_lora.safetensors", "loras")
    assert "my_lora.safetensors" in unknown and "models/loras" in unknown and "docs/MODELS.md" in unknown


def test_docs_models_md_in_sync():
    with open(os.path.join(ROOT, "docs", "MODELS.md"), encoding="utf-8") as fh:
        on_disk = fh.read()
    assert on_disk == M.models_markdown(), "docs/MODELS.md is stale: run scripts/check_models.py --write-docs docs/MODELS.md"
    for m in M.MODEL_TABLE:
        assert f"`{m.filename}`" in on_disk


def _fake_comfy(root: str) -> str:
    """A directory that looks like a ComfyUI checkout but whose python cannot import it: the script's
    own YAML parsing (fallback) must then give the same folders."""
    comfy = os.path.join(root, "ComfyUI")
    _touch(os.path.join(comfy, "main.py"), b"")
    return comfy


def test_script_exit_codes_with_yaml(tmp_path):
    comfy = _fake_comfy(str(tmp_path))
    store = str(tmp_path / "store")
    yaml_path = tmp_path / "extra.yaml"
    yaml_path.write_text(f"mine:\n  base_path: {store}\n  checkpoints: ckpts\n  controlnet: cn\n  ipadapter: ipadapter\n"
                         "  insightface: insightface\n  vae: vae\n")
    cmd = [sys.executable, SCRIPT, "--comfyui", comfy, "--extra-model-paths-config", str(yaml_path), "--workflow", "geometry",
           "--python", sys.executable]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "MISSING" in r.stdout and "required model file(s) missing" in r.stdout
    for spec in M.MODEL_TABLE:
        if spec.need == M.REQUIRED and "geometry" in spec.workflows:
            sub = {"checkpoints": "ckpts", "controlnet": "cn"}.get(spec.folder, spec.folder)
            _touch(os.path.join(store, sub, *spec.filename.split("/")))
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all required model files found" in r.stdout and os.path.join(store, "ckpts") in r.stdout
    # the default models/ layout of the checkout counts too
    _touch(os.path.join(comfy, "models", "controlnet", "control_v11p_sd15_normalbae.pth"))
    _touch(os.path.join(comfy, "models", "checkpoints", "realisticVisionV40_v40VAE.safetensors"))
    _touch(os.path.join(comfy, "models", "upscale_models", "RealESRGAN_x2.pth"))  # the full workflow's deblur
    _touch(os.path.join(comfy, "models", "idsculpt", "vgg16-397923af.pth"))  # the texture refinement's LPIPS-VGG
    r = subprocess.run(cmd[:-4] + ["--workflow", "full", "--python", sys.executable], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run([sys.executable, SCRIPT, "--comfyui", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "not a ComfyUI checkout" in r.stderr


@pytest.mark.comfy
def test_script_uses_comfy_folder_paths(comfy_path, comfy_python, tmp_path):
    """With the real ComfyUI, folders come from its own folder_paths (+ extra YAML)."""
    store = str(tmp_path / "store")
    yaml_path = tmp_path / "extra.yaml"
    yaml_path.write_text(f"mine:\n  base_path: {store}\n  controlnet: cn\n")
    _touch(os.path.join(store, "cn", "control_v11p_sd15_canny.pth"))
    r = subprocess.run([sys.executable, SCRIPT, "--comfyui", comfy_path, "--python", comfy_python, "--extra-model-paths-config",
                        str(yaml_path), "--workflow", "geometry"], capture_output=True, text=True, timeout=120)
    assert "ComfyUI's folder_paths" in r.stdout, r.stdout + r.stderr
    assert os.path.join(store, "cn", "control_v11p_sd15_canny.pth") in r.stdout


@pytest.mark.comfy
def test_model_check_node_on_server(comfy_server):
    # second accepted names (.pth / .safetensors): the canonical names may hold real test models of
    # tests/test_model_builder.py in the same session's sandbox, which these 1-byte files must not shadow
    for spec in M.MODEL_TABLE:
        if spec.need == M.REQUIRED and "geometry" in spec.workflows and spec.folder in ("controlnet", "ipadapter"):
            _touch(os.path.join(comfy_server.sandbox.model_dir(spec.folder), *spec.locations[1][1].split("/")))
    info = comfy_server.object_info("IDSculptModelCheck")["IDSculptModelCheck"]
    assert info["output"] == ["STRING"] and info["output_node"]
    hist = comfy_server.submit({"1": {"class_type": "IDSculptModelCheck", "inputs": {"workflow": "geometry", "fail_if_missing": False}}})
    report = hist["outputs"]["1"]["text"][0]
    assert "control_v11p_sd15_canny" in report
    canny = os.path.join(comfy_server.sandbox.model_dir("controlnet"), "control_v11p_sd15_canny")
    assert canny + ".pth" in report or canny + ".safetensors" in report
    # the server's model folders are shared by the session's comfy tests, which may have placed
    # models: what must be missing is read off the sandbox folders themselves
    sb = comfy_server.sandbox
    missing = M.missing_required(M.check_models(lambda key: [sb.model_dir(key)], "geometry"))
    if missing:
        assert "MISSING" in report and all(r.spec.filename in report for r in missing)
        with pytest.raises(Exception, match="required model files are missing"):
            comfy_server.submit({"1": {"class_type": "IDSculptModelCheck", "inputs": {"workflow": "geometry", "fail_if_missing": True}}})
    else:
        assert "MISSING" not in report


def test_readme_models_table_matches_the_model_table():
    generated = M.models_markdown()
    table = generated[generated.index("| role |"):generated.index("## Accepted names")].strip()
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as fh:
        readme = fh.read()
    assert table in readme, "README.md's Models table is stale: copy the table from docs/MODELS.md"


def test_vgg16_is_required_by_the_full_workflow_and_by_panohead(tmp_path):
    """The texture refinement's LPIPS-VGG loads VGG16 in every full run; in geometry only PanoHead's inversion does."""
    root = str(tmp_path)
    required = lambda wf: {r.spec.key for r in M.check_models(_lookup(root), wf) if r.required}  # noqa: E731
    assert "vgg16" in required("full") and "vgg16" not in required("geometry")
    _touch(os.path.join(root, "idsculpt", "easy-khair-180-gpc0.8-trans10-025000.pkl"))
    assert "vgg16" in required("geometry")
