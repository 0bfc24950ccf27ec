"""Several photos, one identity (issue 23): the same-person check, the ID tokens of N photos, the reference
photo through ID Embed -> Apply ID Adapter / PanoHead Invert, and identity against every photo in the evaluation.

The real ArcFace model cannot be had here (the tiny insightface pack's recogniser is random), so the
same-person rule is tested on embeddings with known cosines, and the node path with a stand-in
recogniser whose embedding per photo the test sets (on real portraits: bezos, musk).
"""
from __future__ import annotations

import math
import os
import types

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from idsculpt.core.face.detect import (
    SAME_PERSON_THRESHOLD,
    face_id_from_photos,
    photo_list,
    same_person_check,
)
from idsculpt.core.face.id_adapter import decoupled_cross_attention, load_id_adapter
from tiny_models import write_tiny_faceid_adapter


def _pair(cos: float, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Two unit vectors in R^512 whose cosine is exactly ``cos``."""
    g = torch.Generator().manual_seed(seed)
    a = F.normalize(torch.randn(512, generator=g), dim=0)
    o = torch.randn(512, generator=g)
    o = F.normalize(o - (o @ a) * a, dim=0)
    return a, cos * a + math.sqrt(1 - cos * cos) * o


def _people(n_same: int, cos_same: float, strangers: int, seed: int = 0) -> torch.Tensor:
    """``n_same`` photos of one person (pairwise cosine ``cos_same``: a shared part plus orthogonal noise)
    followed by ``strangers`` photos orthogonal to everything else."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(512, 512, generator=g))
    base, rest = q[:, 0], q[:, 1:]
    rows = [math.sqrt(cos_same) * base + math.sqrt(1 - cos_same) * rest[:, i] for i in range(n_same)]
    rows += [rest[:, n_same + i] for i in range(strangers)]
    return torch.stack(rows)


# ----------------------------------------------------------------------------- the same-person rule
def test_same_person_check_drops_the_stranger_and_names_him() -> None:
    e = _people(3, 0.5, 1)  # photos 0-2 one person (cosine 0.5), photo 3 another
    r = same_person_check(e, 0.3, reference=0)
    assert r.keep == [0, 1, 2] and r.dropped == [3]
    # mean cosine to the others, all photos present: 2*0.5/3 for the person's photos, 0 for the stranger
    assert r.mean_cosine == pytest.approx([1 / 3, 1 / 3, 1 / 3, 0.0], abs=1e-5)
    assert "dropped photo(s) [3]" in r.message


def test_same_person_check_one_at_a_time() -> None:
    """Two photos of the subject (0.5) and a stranger: with all three the subject's means are 0.25 (< 0.3);
    a one-shot rule would drop everything; dropping the worst first keeps both of the subject's photos."""
    e = _people(2, 0.5, 1)
    r = same_person_check(e, 0.3, reference=0)
    assert r.mean_cosine[:2] == pytest.approx([0.25, 0.25], abs=1e-5)
    assert r.keep == [0, 1] and r.dropped == [2]


def test_same_person_check_reference_first_and_kept() -> None:
    e = _people(3, 0.6, 0)
    r = same_person_check(e, SAME_PERSON_THRESHOLD, reference=2)
    assert r.keep == [2, 0, 1] and r.dropped == []
    # two disagreeing photos: the reference stays, the other goes
    a, b = _pair(0.1)
    r2 = same_person_check(torch.stack([a, b]), 0.3, reference=1)
    assert r2.keep == [1] and r2.dropped == [0]
    # a threshold of -1 keeps everyone
    assert same_person_check(_people(2, 0.5, 2), -1.0).dropped == []


def test_same_person_check_refuses_a_stranger_as_reference() -> None:
    e = _people(3, 0.5, 1)  # photo 3 is the stranger, and the user marked it as reference
    with pytest.raises(ValueError, match=r"reference photo #3 does not look like the same person"):
        same_person_check(e, 0.3, reference=3)
    with pytest.raises(ValueError, match="out of range"):
        same_person_check(e, 0.3, reference=4)


def test_photo_list_batches_and_lists() -> None:
    b = torch.rand(3, 8, 8, 3)
    assert len(photo_list(b)) == 3 and torch.equal(photo_list(b)[1], b[1])
    # differently sized photos as a list (an IMAGE batch cannot hold them)
    mixed = photo_list([torch.rand(1, 8, 8, 3), torch.rand(2, 10, 6, 3)])
    assert [tuple(p.shape) for p in mixed] == [(8, 8, 3), (10, 6, 3), (10, 6, 3)]


# ----------------------------------------------------------------------------- N photos -> ID tokens
@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    d = tmp_path_factory.mktemp("multiphoto_adapters")
    return {v: load_id_adapter(write_tiny_faceid_adapter(str(d / f"{v}.bin"), v)) for v in ("faceid-portrait", "faceid")}


def test_portrait_gets_n_times_16_concatenated_tokens(adapters) -> None:
    ad = adapters["faceid-portrait"]
    e = _people(3, 0.5, 0)
    cond, uncond = ad.photo_tokens(e)
    assert cond.shape == (1, 3 * 16, 64) and uncond.shape == (1, 3 * 16, 64)
    for k in range(3):  # photo k's 16 tokens are its own projection, in photo order
        assert torch.allclose(cond[0, 16 * k:16 * (k + 1)], ad.id_tokens(e[k])[0], atol=1e-6)
        assert torch.allclose(uncond[0, 16 * k:16 * (k + 1)], ad.uncond_tokens(1)[0], atol=1e-6)
    one_c, one_u = ad.photo_tokens(e[0])  # one photo: exactly the single-photo tokens
    assert torch.equal(one_c, ad.id_tokens(e[0])) and torch.equal(one_u, ad.uncond_tokens(1))


def test_plain_faceid_gets_the_projection_of_the_mean(adapters) -> None:
    ad = adapters["faceid"]
    e = _people(3, 0.5, 0)
    cond, uncond = ad.photo_tokens(e)
    assert cond.shape == (1, 4, 64) and uncond.shape == (1, 4, 64)
    assert torch.allclose(cond, ad.id_tokens(e.mean(0)), atol=1e-6)
    # the projection is not linear: the projection of the mean is not the mean of the projections
    assert not torch.allclose(cond, ad.id_tokens(e).mean(0, keepdim=True), atol=1e-3)


def test_attention_over_n_photos_is_one_softmax_over_all_tokens(adapters) -> None:
    """Dense reference: the ID branch attends over the N*16 concatenated keys in one softmax; N identical
    negative sets give exactly the single set's output (duplicated keys and values)."""
    ad = adapters["faceid-portrait"]
    cond, uncond = ad.photo_tokens(_people(3, 0.5, 0))
    hidden = ad.info.layer_hidden["1"]
    heads, q = 2, torch.randn(1, 5, hidden, generator=torch.Generator().manual_seed(3))
    k, v = ad.kv("1", cond)
    out = decoupled_cross_attention(q, torch.zeros_like(q), k, v, heads)
    d = hidden // heads
    qh, kh, vh = (t.reshape(1, -1, heads, d).transpose(1, 2).double() for t in (q, k, v))
    ref = (torch.softmax(qh @ kh.transpose(-1, -2) / math.sqrt(d), -1) @ vh).transpose(1, 2).reshape(1, 5, hidden)
    assert torch.allclose(out.double(), ref, atol=1e-5)
    ku, vu = ad.kv("1", uncond)
    k1, v1 = ad.kv("1", ad.uncond_tokens(1))
    assert torch.allclose(decoupled_cross_attention(q, torch.zeros_like(q), ku, vu, heads),
                          decoupled_cross_attention(q, torch.zeros_like(q), k1, v1, heads), atol=1e-5)


# ----------------------------------------------------------------------------- stand-in recogniser
PHOTOS = ("bezos_1", "bezos_2", "musk_1")


def _load(portraits_dir: str, name: str, size: int = 256) -> np.ndarray:
    img = cv2.imread(os.path.join(portraits_dir, f"{name}.jpg"))[:, :, ::-1]
    return cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)


class StandInRecogniser:
    """insightface FaceAnalysis stand-in: one face per photo, in the middle of the image, whose normed
    embedding the test sets per photo (recognised by the nearest registered thumbnail)."""

    def __init__(self, photos: list[np.ndarray], embeddings: torch.Tensor) -> None:
        self.thumbs = [cv2.resize(p, (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32) for p in photos]
        self.embeddings = F.normalize(embeddings.float(), dim=1).numpy()

    def prepare(self, ctx_id: int = 0, det_size=(640, 640)) -> None:
        pass

    def get(self, bgr: np.ndarray) -> list:
        t = cv2.resize(np.ascontiguousarray(bgr[..., ::-1]), (16, 16), interpolation=cv2.INTER_AREA).astype(np.float32)
        k = int(np.argmin([np.abs(t - th).mean() for th in self.thumbs]))
        h, w = bgr.shape[:2]
        box = np.array([0.3 * w, 0.25 * h, 0.7 * w, 0.75 * h], np.float32)
        kps = np.array([[0.42, 0.45], [0.58, 0.45], [0.5, 0.55], [0.44, 0.63], [0.56, 0.63]], np.float32) * [w, h]
        return [types.SimpleNamespace(bbox=box, kps=kps, det_score=0.9, embedding=self.embeddings[k] * 20.0,
                                      normed_embedding=self.embeddings[k])]


@pytest.fixture(scope="module")
def three_photos(portraits_dir):
    photos = [_load(portraits_dir, n) for n in PHOTOS]
    e = _people(2, 0.55, 1)  # the two bezos photos agree (0.55), musk is another person
    batch = torch.from_numpy(np.stack(photos).astype(np.float32) / 255.0)
    return types.SimpleNamespace(photos=photos, emb=e, batch=batch, app=StandInRecogniser(photos, e))


def test_face_id_from_photos_drops_the_other_person(three_photos) -> None:
    pytest.importorskip("insightface")
    fid = face_id_from_photos(three_photos.app, three_photos.batch, reference_index=1)
    assert fid.num_photos == 3 and fid.dropped == [2] and fid.photo_indices == [1, 0]
    assert "dropped photo(s) [2]" in fid.log
    # the reference photo's own face first, then the others kept
    assert torch.allclose(fid.embeddings, three_photos.emb[[1, 0]], atol=1e-5)
    assert torch.allclose(fid.embedding, three_photos.emb[1], atol=1e-5)
    assert fid.reference_index == 1 and fid.photo_crops.shape == (2, 112, 112, 3)
    # a single photo: the one-photo FaceID, as before
    one = face_id_from_photos(three_photos.app, three_photos.batch[:1])
    assert one.embeddings is None and one.all_embeddings().shape == (1, 512)


# ----------------------------------------------------------------------------- through the nodes (ComfyUI)
def test_nodes_id_embed_apply_and_panohead_selection(comfy_inprocess, three_photos, adapters) -> None:
    pytest.importorskip("insightface")
    from idsculpt.nodes.face_nodes import IDEmbed
    from idsculpt.nodes.engines.id_patch import IDAttentionPatch, apply_id_adapter
    from idsculpt.nodes.id_adapter_nodes import face_embedding
    from idsculpt.nodes.panohead_nodes import photo_from_batch
    from tiny_models import tiny_sd15_model

    fid, crops, info = IDEmbed.execute(three_photos.batch, three_photos.app, 0, reference_index=0).args
    assert crops.shape == (2, 112, 112, 3) and "dropped photo(s) [2]" in info
    assert face_embedding(fid).shape == (2, 512)
    model = tiny_sd15_model()
    m = apply_id_adapter(model, adapters["faceid-portrait"], face_embedding(fid))
    patch = next(p for p in m.model_options["transformer_options"]["patches_replace"]["attn2"].values()
                 if isinstance(p, IDAttentionPatch))
    assert patch.cond_tokens.shape == (1, 2 * 16, 64) and patch.uncond_tokens.shape == (1, 2 * 16, 64)
    m2 = apply_id_adapter(model, adapters["faceid"], face_embedding(fid))
    patch2 = next(p for p in m2.model_options["transformer_options"]["patches_replace"]["attn2"].values()
                  if isinstance(p, IDAttentionPatch))
    assert torch.allclose(patch2.cond_tokens, adapters["faceid"].id_tokens(three_photos.emb[:2].mean(0)), atol=1e-5)

    # PanoHead Invert: the reference photo of the batch; a batch without face_id is refused
    fid1 = IDEmbed.execute(three_photos.batch, three_photos.app, 0, reference_index=1).args[0]
    assert photo_from_batch(three_photos.batch, fid1) == 1
    assert photo_from_batch(three_photos.batch[1:2], fid1) == 0
    with pytest.raises(ValueError, match="batch of 3 photos: connect ID Embed's face_id"):
        photo_from_batch(three_photos.batch, None)
    with pytest.raises(ValueError, match="face_id came from 3 photo"):
        photo_from_batch(three_photos.batch[:2], fid1)


# ----------------------------------------------------------------------------- identity against every photo
class MeanColourRecogniser:
    """A recogniser with a closed-form answer: the 'embedding' of an image is its mean RGB colour, so the
    ID cosine of a render to a photo is the cosine of their mean colours."""

    name = "standin"

    def embed(self, image: np.ndarray):
        from idsculpt.core.eval.identity import FaceEmbedding

        m = np.asarray(image, np.float64).reshape(-1, 3).mean(0)
        return FaceEmbedding(m, (0.0, 0.0, float(image.shape[1]), float(image.shape[0])), 1.0)


def test_evaluate_head_reports_identity_against_every_photo() -> None:
    pytest.importorskip("idsculpt.core.render")
    from idsculpt.core.camera import Cameras, eg3d_frontal_label
    from idsculpt.core.eval import evaluate as ev
    from idsculpt.core.eval.identity import to_uint8_rgb
    from idsculpt.core.mesh import HeadMesh

    res_px = 64
    cams = Cameras.from_eg3d_label(eg3d_frontal_label(), res_px)
    half = float(cams.position[0, 2]) * math.tan(math.radians(float(cams.fov[0])) / 2)
    v = torch.tensor([[-half, -half, 0.0], [half, -half, 0.0], [half, half, 0.0], [-half, half, 0.0]])
    f = torch.tensor([[0, 1, 2], [0, 2, 3]])
    tex = torch.zeros(8, 8, 3)
    tex[..., 0], tex[..., 1] = 0.8, 0.3  # an orange billboard
    mesh = HeadMesh(v, f, uvs=torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]]), uv_faces=f.clone(), texture=tex)
    portrait = torch.full((res_px, res_px, 3), 0.5)
    photos = [torch.zeros(32, 32, 3), torch.zeros(48, 40, 3)]  # different sizes: a list is accepted
    photos[0][..., 0] = 1.0  # red
    photos[1][..., 2] = 1.0  # blue
    res = ev.evaluate_head(mesh, portrait, None, recognizers={"standin": MeanColourRecogniser()},
                           config=ev.EvalConfig(sweep_azimuths=(0.0,), id_views=(("front", 0.0), ("left-frontal", 30.0)),
                                                sweep_resolution=res_px, reference_background="plain"),
                           identity_photos=photos)
    rep = res.report["id"]["standin"]["photos"]
    assert rep["count"] == 2 and [p["photo"] for p in rep["per_photo"]] == [0, 1]
    azimuths = [row["azimuth"] for row in res.report["views"]]
    expect = []
    for ph in photos:
        e_ph = torch.from_numpy(to_uint8_rgb(ph).astype(np.float64)).reshape(-1, 3).mean(0)
        per_view = {}
        for name, az in (("front", 0.0), ("left-frontal", 30.0)):
            e_v = torch.from_numpy(to_uint8_rgb(res.view_renders[azimuths.index(az)]).astype(np.float64)).reshape(-1, 3).mean(0)
            per_view[name] = float(F.cosine_similarity(e_ph, e_v, dim=0))
        expect.append(per_view)
    for p, want in zip(rep["per_photo"], expect):
        assert p["detected"] and p["views"] == pytest.approx(want, abs=2e-4)
        assert p["mean"] == pytest.approx(np.mean(list(want.values())), abs=2e-4)
    # the orange head is closer to the red photo than to the blue one, and the mean is over both photos
    assert rep["per_photo"][0]["mean"] > rep["per_photo"][1]["mean"]
    assert rep["mean"] == pytest.approx(np.mean([np.mean(list(w.values())) for w in expect]), abs=2e-4)
