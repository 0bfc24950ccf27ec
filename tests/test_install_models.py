"""scripts/install_models.py against a local HTTP server (127.0.0.1, stops by itself) that serves the
Hugging Face hub's file endpoints (the layout huggingface_hub uses with HF_ENDPOINT:
/{repo}/resolve/{revision}/{filename}, with ETag, X-Repo-Commit, Content-Length and Range) and the
other sources through IDSCULPT_DOWNLOAD_MIRROR (/<host>/<path>), with tiny files in the real formats.

The CLI runs in a subprocess (fresh HF_ENDPOINT / HF_HUB_CACHE, like a user's shell) on a fake
ComfyUI folder; ComfyUI's own folder probe cannot run there (``--python`` points nowhere), so the
model check's ComfyUI-free folder rules apply. The conversion test needs a real ComfyUI.
"""
from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "scripts", "install_models.py")
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def _load(name: str, path: str):
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
    return sys.modules[name]


sys.path.insert(0, os.path.join(ROOT, "scripts"))
installer = _load("idsculpt_install_models", SCRIPT)
models = installer.models_module()


# --------------------------------------------------------------------------- the local server
class Sources:
    """Files served on 127.0.0.1: ``hub[(repo, filename)]`` and ``files['/<host>/<path>']`` (bytes or a
    path on disk). ``cut_once``: request paths whose first GET stops halfway (the connection closes
    after half the promised Content-Length). ``log``: (method, path, Range header) of every request."""

    def __init__(self, lifetime_s: float = 240.0) -> None:
        self.hub: dict = {}
        self.files: dict = {}
        self.cut_once: set = set()
        self.log: list = []
        src = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_HEAD(self):
                src._serve(self, head=True)

            def do_GET(self):
                src._serve(self, head=False)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.timer = threading.Timer(lifetime_s, self.server.shutdown)  # bounded: stops by itself
        self.timer.daemon = True
        self.timer.start()

    def stop(self) -> None:
        self.timer.cancel()
        self.server.shutdown()
        self.server.server_close()

    def _lookup(self, path: str):
        parts = path.lstrip("/").split("/")
        if len(parts) >= 5 and parts[2] == "resolve":
            repo, rev, filename = "/".join(parts[:2]), parts[3], "/".join(parts[4:])
            data = self.hub.get((repo, filename))
            return data, rev in ("main", COMMIT), True
        return self.files.get(path), True, False

    def _serve(self, h: BaseHTTPRequestHandler, head: bool) -> None:
        path = h.path.split("?", 1)[0]
        rng = h.headers.get("Range")
        self.log.append((h.command, path, rng))
        data, rev_ok, is_hub = self._lookup(path)
        if data is None or not rev_ok:
            h.send_response(404)
            if is_hub:
                h.send_header("X-Error-Code", "EntryNotFound" if rev_ok else "RevisionNotFound")
                h.send_header("X-Repo-Commit", COMMIT)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        if isinstance(data, str):
            with open(data, "rb") as fh:
                data = fh.read()
        total = len(data)
        start = int(rng.split("=", 1)[1].split("-", 1)[0]) if rng else 0
        body = data[start:]
        h.send_response(206 if rng else 200)
        h.send_header("Content-Length", str(len(body)))
        h.send_header("Accept-Ranges", "bytes")
        if rng:
            h.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
        if is_hub:
            h.send_header("ETag", '"' + hashlib.sha256(data).hexdigest() + '"')
            h.send_header("X-Repo-Commit", COMMIT)
        h.end_headers()
        if head:
            return
        if path in self.cut_once:
            self.cut_once.discard(path)
            h.wfile.write(body[: len(body) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(socket.SHUT_RDWR)
            return
        for i in range(0, len(body), 1 << 20):
            h.wfile.write(body[i:i + (1 << 20)])


@pytest.fixture
def sources():
    s = Sources()
    yield s
    s.stop()


# --------------------------------------------------------------------------- helpers
def torch_bytes(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def fake_comfy(tmp_path, present=()) -> str:
    """A ComfyUI folder (main.py + models/) with dummy files at the canonical names of ``present``."""
    comfy = tmp_path / "ComfyUI"
    (comfy / "models").mkdir(parents=True)
    (comfy / "main.py").write_text("# stand-in: the installer only needs the folder layout\n")
    for key in present:
        spec = models.get_spec(key)
        p = comfy / "models" / spec.folder / spec.filename
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b"present")
    return str(comfy)


def all_keys_but(workflow: str, *missing: str) -> list[str]:
    return [m.key for m in models.MODEL_TABLE if workflow in m.workflows and m.key not in missing and m.fetch != "manual"]


def run_cli(comfy: str, sources: Sources, tmp_path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, HF_ENDPOINT=sources.url, HF_HUB_CACHE=str(tmp_path / "hf-cache"), HF_HUB_DISABLE_TELEMETRY="1",
               IDSCULPT_DOWNLOAD_MIRROR=sources.url, HF_HUB_DISABLE_PROGRESS_BARS="1", HF_HUB_DISABLE_XET="1")
    env.pop("HF_HUB_OFFLINE", None)
    env.pop("IDSCULPT_COMFY_PYTHON", None)
    return subprocess.run([sys.executable, SCRIPT, "--comfyui", comfy, "--python", str(tmp_path / "no-python"), *args],
                          capture_output=True, text=True, timeout=180, env=env)


def lookup_of(comfy: str):
    return lambda key: [os.path.join(comfy, "models", key)]


def canonical(comfy: str, key: str) -> str:
    spec = models.get_spec(key)
    return os.path.join(comfy, "models", spec.folder, *spec.filename.split("/"))


def lock_of(comfy: str) -> dict:
    with open(os.path.join(comfy, "models", "idsculpt", installer.LOCK_NAME), encoding="utf-8") as fh:
        return json.load(fh)


# --------------------------------------------------------------------------- tests
def test_dry_run_lists_exactly_what_the_model_check_reports_missing(tmp_path, sources):
    comfy = fake_comfy(tmp_path, present=("controlnet_canny", "vae_ft_mse", "insightface_det"))
    before = sorted(str(p) for p in (tmp_path / "ComfyUI").rglob("*"))
    proc = run_cli(comfy, sources, tmp_path, "--workflow", "full", "--dry-run")
    assert proc.returncode == 0, proc.stderr
    listed = {line.strip().split(":", 1)[0] for line in proc.stdout.splitlines() if line.startswith("  ") and "<-" in line}
    missing = {r.spec.key for r in models.missing_required(models.check_models(lookup_of(comfy), "full"))}
    assert listed == missing and "insightface_rec" in missing and "controlnet_canny" not in missing
    for key in missing:  # each line names the canonical destination
        assert canonical(comfy, key) in proc.stdout
    assert sources.log == [], "a dry run must not touch the network"
    assert sorted(str(p) for p in (tmp_path / "ComfyUI").rglob("*")) == before, "a dry run must not write anything"


def test_hub_download_resumes_after_a_cut_connection_and_records_the_hash(tmp_path, sources):
    # 24 MiB: huggingface_hub writes what arrived in DOWNLOAD_CHUNK_SIZE (10 MiB) pieces, so a resume needs a
    # file that is cut after at least one full piece
    canny = torch_bytes({"control_model.input_hint_block.0.weight": torch.arange(6 << 20, dtype=torch.float32)})
    vae = torch_bytes({"decoder.conv_in.weight": torch.ones(3, 3)})  # .safetensors name, content irrelevant here
    sources.hub[("lllyasviel/ControlNet-v1-1", "control_v11p_sd15_canny.pth")] = canny
    sources.hub[("stabilityai/sd-vae-ft-mse-original", "vae-ft-mse-840000-ema-pruned.safetensors")] = vae
    canny_path = "/lllyasviel/ControlNet-v1-1/resolve/main/control_v11p_sd15_canny.pth"
    sources.cut_once.add(canny_path)
    comfy = fake_comfy(tmp_path, present=all_keys_but("geometry", "controlnet_canny", "vae_ft_mse"))
    proc = run_cli(comfy, sources, tmp_path, "--workflow", "geometry")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    with open(canonical(comfy, "controlnet_canny"), "rb") as fh:
        assert fh.read() == canny
    with open(canonical(comfy, "vae_ft_mse"), "rb") as fh:
        assert fh.read() == vae
    resumed = [r for m, p, r in sources.log if m == "GET" and p == canny_path and r]
    from huggingface_hub.constants import DOWNLOAD_CHUNK_SIZE

    cut = len(canny) // 2  # the second GET asked for the rest only (from the last whole piece written)
    assert resumed == [f"bytes={cut // DOWNLOAD_CHUNK_SIZE * DOWNLOAD_CHUNK_SIZE}-"] and cut >= DOWNLOAD_CHUNK_SIZE, sources.log
    lock = lock_of(comfy)["files"]
    assert lock["controlnet_canny"]["sha256"] == hashlib.sha256(canny).hexdigest()
    assert lock["controlnet_canny"]["commit"] == COMMIT and lock["controlnet_canny"]["size"] == len(canny)
    assert "no published SHA-256" in proc.stdout
    again = run_cli(comfy, sources, tmp_path, "--workflow", "geometry")
    assert again.returncode == 0 and "nothing to install" in again.stdout


def test_a_hub_file_whose_hash_differs_from_the_recorded_one_is_refused(tmp_path, sources):
    first = torch_bytes({"params_ema": {"conv_first.weight": torch.zeros(2, 3, 3, 3)}})
    sources.hub[("ai-forever/Real-ESRGAN", "RealESRGAN_x2.pth")] = first
    comfy = fake_comfy(tmp_path, present=all_keys_but("full", "realesrgan_x2"))
    assert run_cli(comfy, sources, tmp_path, "--workflow", "full").returncode == 0
    os.remove(canonical(comfy, "realesrgan_x2"))
    import shutil

    shutil.rmtree(tmp_path / "hf-cache")  # a fresh cache (the cached commit would be reused, as it should be)
    changed = torch_bytes({"params_ema": {"conv_first.weight": torch.ones(2, 3, 3, 3)}})
    sources.hub[("ai-forever/Real-ESRGAN", "RealESRGAN_x2.pth")] = changed
    proc = run_cli(comfy, sources, tmp_path, "--workflow", "full")
    assert proc.returncode == 1
    assert "does not match " + hashlib.sha256(first).hexdigest() in proc.stdout
    assert hashlib.sha256(changed).hexdigest() in proc.stdout
    assert not os.path.exists(canonical(comfy, "realesrgan_x2"))
    # the refused blob left the hub cache: nothing there holds the changed bytes
    cached = [p for p in (tmp_path / "hf-cache").rglob("*") if p.is_file() and p.read_bytes() == changed]
    assert cached == []
    # the pinned commit was asked for (the lock pins the revision seen first)
    assert any(p == f"/ai-forever/Real-ESRGAN/resolve/{COMMIT}/RealESRGAN_x2.pth" for _, p, _ in sources.log)


def test_a_url_file_whose_hash_prefix_differs_is_refused(tmp_path, sources):
    # VGG16 is required once PanoHead is there; torchvision's name carries its SHA-256 prefix (397923af)
    sources.files["/download.pytorch.org/models/vgg16-397923af.pth"] = torch_bytes({"features.0.weight": torch.zeros(64, 3, 3, 3)})
    comfy = fake_comfy(tmp_path, present=all_keys_but("geometry", "vgg16") + ["panohead"])
    proc = run_cli(comfy, sources, tmp_path, "--workflow", "geometry")
    assert proc.returncode == 1
    assert "does not match 397923af from the model table: refused" in proc.stdout
    dest = canonical(comfy, "vgg16")
    assert not os.path.exists(dest) and not os.path.exists(dest + ".part")


def test_own_downloader_resumes_with_a_range_request(tmp_path, sources):
    data = bytes(range(256)) * 4096  # 1 MiB
    sources.files["/example.org/big.bin"] = data
    sources.cut_once.add("/example.org/big.bin")
    os.environ["IDSCULPT_DOWNLOAD_MIRROR"] = sources.url
    try:
        part = installer.download_url("https://example.org/big.bin", str(tmp_path / "big.bin.part"))
    finally:
        del os.environ["IDSCULPT_DOWNLOAD_MIRROR"]
    with open(part, "rb") as fh:
        assert fh.read() == data
    gets = [r for m, p, r in sources.log if p == "/example.org/big.bin"]
    assert gets[0] is None and gets[1] == f"bytes={len(data) // 2}-"


def test_plain_http_is_refused_for_remote_hosts(tmp_path):
    with pytest.raises(installer.InstallError, match="HTTPS only"):
        installer.download_url("http://example.org/x.bin", str(tmp_path / "never.part"))
    assert not (tmp_path / "never.part").exists()


@pytest.mark.parametrize("top_folder", [False, True])
def test_buffalo_zip_needs_the_licence_once_and_is_unpacked_where_the_check_looks(tmp_path, sources, top_folder):
    from tiny_insightface import write_tiny_insightface

    folder = write_tiny_insightface(str(tmp_path / "pack"), "buffalo_l")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name in sorted(os.listdir(folder)):
            zf.write(os.path.join(folder, name), ("buffalo_l/" if top_folder else "") + name)
    sources.files["/github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"] = buf.getvalue()
    comfy = fake_comfy(tmp_path, present=all_keys_but("geometry", "insightface_det", "insightface_rec"))
    refused = run_cli(comfy, sources, tmp_path, "--workflow", "geometry")
    assert refused.returncode == 1 and "non-commercial research" in refused.stdout
    assert "--accept-licence insightface" in refused.stdout and sources.log == []
    proc = run_cli(comfy, sources, tmp_path, "--workflow", "geometry", "--accept-licence", "insightface")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    target = os.path.join(comfy, "models", "insightface", "models", "buffalo_l")
    for name in ("det_10g.onnx", "w600k_r50.onnx"):
        with open(os.path.join(target, name), "rb") as a, open(os.path.join(folder, name), "rb") as b:
            assert a.read() == b.read()
    rows = models.check_models(lookup_of(comfy), "geometry")
    assert not models.missing_required(rows)
    assert [r.path for r in rows if r.spec.key == "insightface_det"] == [os.path.join(target, "det_10g.onnx")]
    assert not [p for p in os.listdir(os.path.dirname(target)) if p.endswith(".part")]
    assert lock_of(comfy)["accepted_licences"] == ["insightface"]
    os.remove(os.path.join(target, "w600k_r50.onnx"))  # accepted once: no flag needed again
    assert run_cli(comfy, sources, tmp_path, "--workflow", "geometry").returncode == 0


def test_lpips_weights_come_out_of_the_pypi_wheel(tmp_path, sources, monkeypatch):
    member = b"lpips linear weights stand-in".ljust(7289, b".")  # the real file's size, not its content
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("lpips/weights/v0.1/vgg.pth", member)
    wheel = buf.getvalue()
    wheel_sha = hashlib.sha256(wheel).hexdigest()
    url = "https://files.pythonhosted.org/packages/ab/cd/lpips-0.1.4-py3-none-any.whl"
    sources.files["/pypi.org/pypi/lpips/0.1.4/json"] = json.dumps(
        {"urls": [{"filename": "lpips-0.1.4-py3-none-any.whl", "url": url, "digests": {"sha256": wheel_sha}}]}).encode()
    sources.files["/files.pythonhosted.org/packages/ab/cd/lpips-0.1.4-py3-none-any.whl"] = wheel
    monkeypatch.setenv("IDSCULPT_DOWNLOAD_MIRROR", sources.url)
    monkeypatch.setattr(installer, "_lpips_from_package", lambda m: None)  # as without the lpips package
    monkeypatch.setattr(installer, "LPIPS_WHEEL", ("lpips", "0.1.4", "lpips-0.1.4-py3-none-any.whl", wheel_sha))
    lock = installer.Lock(str(tmp_path / "lock.json"))
    spec = models.get_spec("lpips_vgg")
    dest = str(tmp_path / "idsculpt" / "lpips" / "vgg.pth")
    # the table pins the real file's SHA-256: a stand-in is refused ...
    with pytest.raises(installer.InstallError, match="does not match a78928a0"):
        installer.install_lpips(spec, dest, lock, print)
    assert not os.path.exists(dest)
    # ... and placed when its own hash is the expected one
    import dataclasses

    ok = dataclasses.replace(spec, sha256=hashlib.sha256(member).hexdigest(), size=len(member))
    installer.install_lpips(ok, dest, lock, print)
    with open(dest, "rb") as fh:
        assert fh.read() == member


def test_panohead_prints_the_manual_steps_and_fetches_nothing(tmp_path, sources):
    comfy = fake_comfy(tmp_path, present=all_keys_but("geometry"))
    proc = run_cli(comfy, sources, tmp_path, "--workflow", "geometry", "--optional", "--accept-licence", "panohead")
    assert installer.PANOHEAD_DRIVE in proc.stdout
    assert canonical(comfy, "panohead") in proc.stdout and "easy-khair-180-gpc0.8-trans10-025000.pkl" in proc.stdout
    assert not any("drive.google" in p for _, p, _ in sources.log)


def test_hub_component_falls_back_to_the_bin_weights(tmp_path, sources, monkeypatch):
    import huggingface_hub.constants

    conv = installer._convert_module()
    data = torch_bytes({"decoder.conv_in.weight": torch.ones(2, 2)})
    sources.hub[("someone/sd15", "vae/diffusion_pytorch_model.bin")] = data
    monkeypatch.setenv("HF_ENDPOINT", sources.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    lock = installer.Lock(str(tmp_path / "lock.json"))
    for _ in range(2):  # the second time the hub cache remembers the missing safetensors
        path, name = installer.hub_file_any("someone/sd15", "vae", conv.WEIGHT_NAMES["vae"], "k", lock)
        assert name == "vae/diffusion_pytorch_model.bin"
        with open(path, "rb") as fh:
            assert fh.read() == data
    assert sources.log[0][1] == "/someone/sd15/resolve/main/vae/diffusion_pytorch_model.safetensors"
    with pytest.raises(installer.InstallError, match="has none of unet/diffusion_pytorch_model.safetensors"):
        installer.hub_file_any("someone/sd15", "unet", conv.WEIGHT_NAMES["unet"], "k", lock)


def test_every_required_file_has_an_automatic_source_and_https_urls():
    kinds = {"hf", "hf-diffusers", "url", "zip", "lpips", "manual"}
    for m in models.MODEL_TABLE:
        kind, _, arg = m.fetch.partition(":")
        assert kind in kinds, (m.key, m.fetch)
        if m.need == models.REQUIRED:
            assert kind != "manual", m.key  # only optional files may need a manual download
        if kind in ("url", "zip"):
            assert arg.startswith("https://"), m.key
        if kind == "hf":
            repo, _, filename = arg.partition(":")
            assert repo.count("/") == 1 and filename, m.key
        if m.sha256:
            assert all(c in "0123456789abcdef" for c in m.sha256) and len(m.sha256) in (8, 64), m.key
        if m.licence_gate:
            assert m.licence_gate in installer.LICENCES, m.key
    # torchvision's hub convention: the name carries the first 8 hex digits of the SHA-256
    assert models.get_spec("vgg16").sha256 == models.get_spec("vgg16").filename.split("-")[1].split(".")[0]


def test_the_documented_commands_parse():
    """Every install_models.py command in docs/INSTALL_MODELS.md uses only options the script accepts."""
    import re
    import shlex

    with open(os.path.join(ROOT, "docs", "INSTALL_MODELS.md"), encoding="utf-8") as fh:
        text = fh.read().replace("\\\n", " ")
    commands = [line.split("#", 1)[0] for line in text.splitlines() if line.startswith("python scripts/install_models.py")]
    assert len(commands) >= 3
    parser = installer.build_parser()
    for cmd in commands:
        parser.parse_args(shlex.split(cmd)[2:])  # argparse exits (SystemExit) on an unknown option
    documented = set(re.findall(r"`(--[a-z-]+)", text))
    known = {o for a in parser._actions for o in a.option_strings}
    assert documented <= known, documented - known


def test_the_missing_file_message_points_at_the_installer():
    msg = models.missing_model_message("control_v11p_sd15_canny.pth", "controlnet")
    assert "scripts/install_models.py --comfyui" in msg and "nothing downloads during" in msg


def test_diffusers_unet_config_gives_sd15_layout():
    conv = installer._convert_module()
    cfg = {"block_out_channels": [320, 640, 1280, 1280], "layers_per_block": 2,
           "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
           "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3}
    # ComfyUI's SD15 config (supported_models.SD15 / model_detection): the reference values
    assert conv.unet_config_from_diffusers(cfg) == {
        "num_res_blocks": [2, 2, 2, 2], "channel_mult": [1, 2, 4, 4], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
        "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "transformer_depth_middle": 1}


# --------------------------------------------------------------------------- conversion + ComfyUI
def write_tiny_diffusers_sd15(folder: str, seed: int = 0) -> None:
    """An SD1.5-shaped diffusers folder: UNet at SD1.5's widths 320/768 with channel_mult (1,1,1,1)
    (ComfyUI detects SD15 from the state dict), SD's AutoencoderKL and CLIP-L (ComfyUI's configs for
    both are fixed, so they keep their real sizes), fp16 safetensors as on the hub."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, block_out_channels=(320, 320, 320, 320), layers_per_block=2,
                                cross_attention_dim=768, attention_head_dim=8,
                                down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                                up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    unet.half().save_pretrained(os.path.join(folder, "unet"))
    vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
                        layers_per_block=2, down_block_types=("DownEncoderBlock2D",) * 4,
                        up_block_types=("UpDecoderBlock2D",) * 4, sample_size=64)
    vae.half().save_pretrained(os.path.join(folder, "vae"), safe_serialization=False)  # a .bin, as older hub uploads
    clip = CLIPTextModel(CLIPTextConfig(vocab_size=49408, hidden_size=768, intermediate_size=3072, num_hidden_layers=12,
                                        num_attention_heads=12, max_position_embeddings=77, hidden_act="quick_gelu"))
    clip.half().save_pretrained(os.path.join(folder, "text_encoder"))


@pytest.mark.comfy
@pytest.mark.slow
def test_diffusers_folder_converts_to_a_checkpoint_comfyui_loads_and_samples_with(tmp_path, sources, monkeypatch):
    import tiny_models

    tiny_models.import_comfy()  # skips without a ComfyUI
    comfy_dir = tiny_models.comfy_path()
    import comfy.sample
    import comfy.sd
    import huggingface_hub.constants
    from diffusers import AutoencoderKL, UNet2DConditionModel

    repo = "xanderhuang/normal-adapted-sd1.5"
    folder = str(tmp_path / "diffusers")
    write_tiny_diffusers_sd15(folder)
    for dirpath, _, names in os.walk(folder):
        for n in names:
            rel = os.path.relpath(os.path.join(dirpath, n), folder).replace(os.sep, "/")
            sources.hub[(repo, rel)] = os.path.join(dirpath, n)
    monkeypatch.setenv("HF_ENDPOINT", sources.url)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    lock = installer.Lock(str(tmp_path / "lock.json"))
    spec = models.get_spec("normal_sd15")
    dest = str(tmp_path / "checkpoints" / spec.filename)
    installer.install_hf_diffusers(spec, dest, lock, print, comfy_dir)
    # safetensors asked first; the VAE (a .bin here) found by the fallback; no .bin asked where safetensors exist
    bins = sorted({p.rsplit("/resolve/main/", 1)[-1] for _, p, _ in sources.log if p.endswith(".bin")})
    assert bins == ["vae/diffusion_pytorch_model.bin"], bins
    assert os.path.isfile(os.path.join(folder, "vae", "diffusion_pytorch_model.bin"))
    assert lock.entry("normal_sd15")["commit"] == COMMIT and lock.entry("normal_sd15:unet/config.json")["sha256"]

    model, clip, vae, _ = comfy.sd.load_checkpoint_guess_config(dest, output_vae=True, output_clip=True)
    assert type(model.model).__name__ == "BaseModel" and model.model.model_config.__class__.__name__ == "SD15"

    # known answer: ComfyUI's UNet from the converted file computes what the diffusers UNet computes
    ref_unet = UNet2DConditionModel.from_pretrained(os.path.join(folder, "unet"), torch_dtype=torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    x, ctx, t = torch.randn(1, 4, 8, 8, generator=g), torch.randn(1, 7, 768, generator=g), torch.tensor([500.0])
    with torch.no_grad():
        want = ref_unet(x, t, encoder_hidden_states=ctx).sample
        net = model.model.diffusion_model.float()
        got = net(x, timesteps=t, context=ctx)
    assert torch.allclose(got, want, rtol=1e-3, atol=1e-3 * want.abs().max().item()), (got - want).abs().max()

    # ... and the VAE decodes as diffusers' does
    ref_vae = AutoencoderKL.from_pretrained(os.path.join(folder, "vae"), torch_dtype=torch.float32).eval()
    z = torch.randn(1, 4, 8, 8, generator=g)
    with torch.no_grad():
        want_img = ref_vae.decode(z).sample
        got_img = vae.first_stage_model.float().decode(z)
    assert torch.allclose(got_img, want_img, atol=2e-3 * want_img.abs().max().item()), (got_img - want_img).abs().max()

    # ... and every CLIP-L weight reached ComfyUI's text encoder unchanged (none left at its random init)
    from safetensors.torch import load_file

    text_sd = load_file(os.path.join(folder, "text_encoder", "model.safetensors"))
    comfy_clip = clip.cond_stage_model.state_dict()
    for k, v in text_sd.items():
        name = "clip_l.transformer." + (k if k.startswith("text_model.") else "text_model." + k)
        assert torch.equal(comfy_clip[name].to(v.dtype), v), name

    # sampling through ComfyUI with the loaded model, CLIP and VAE
    tokens = clip.tokenize("a head")
    cond = clip.encode_from_tokens_scheduled(tokens)
    latent = torch.zeros(1, 4, 8, 8)
    noise = comfy.sample.prepare_noise(latent, 0)
    samples = comfy.sample.sample(model, noise, 2, 5.0, "euler", "normal", cond, cond, latent, denoise=1.0, seed=0)
    image = vae.decode(samples)
    assert image.shape[-1] == 3 and image.shape[1:3] == (64, 64) and torch.isfinite(image).all()
