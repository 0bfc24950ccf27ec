"""Acceptance (issue 18, item 9): the portrait's own head mask decides where it is projected.

A real portrait (shared/data/portraits/jolie_1.jpg, MIT-licensed deepface test photo) is aligned into
PanoHead's crop; a smooth head (an ellipsoid placed on the portrait by the template head's keypoint fit)
is textured by core.texture's progressive inpainting whose "denoiser" returns noise, and the generated
normal/depth maps are noise too (what random-weight models give). Because the head mask comes from the
portrait, the portrait still paints the face oval at the reference view, and the re-rendered reference
view matches the portrait there. The same chain with the head mask read off the noise maps (the old
estimate) leaves holes in the face: the check can fail.
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.slow  # ~15 s on an idle 2-core machine

PLAN = "-15, 0; -15, 90; -15, -90"  # a front view (where noise could overwrite the face) and the sides


class NoiseInpainter:
    """The stand-in for a random-weight denoiser: every generated pixel is uniform noise."""

    def __init__(self, seed: int = 0) -> None:
        self.gen = torch.Generator().manual_seed(seed)

    def inpaint(self, image, generate_mask, normal_control, context):
        return torch.rand(image.shape, generator=self.gen)


@pytest.fixture(scope="module")
def chain(portraits_dir):
    pytest.importorskip("mediapipe")
    cv2 = pytest.importorskip("cv2")
    pytest.importorskip("xatlas")
    import trimesh

    from idsculpt.core.face.landmarks import detect_landmarks
    from idsculpt.core.face.segment import MediaPipeSelfieSegmenter, SegmenterUnavailable
    from idsculpt.core.mesh import HeadMesh
    from idsculpt.core.panohead.align import align_portrait
    from idsculpt.core.panohead.template import place_template
    from idsculpt.core.texture.unwrap import unwrap_uv

    try:
        MediaPipeSelfieSegmenter()
    except SegmenterUnavailable as e:
        pytest.skip(f"no MediaPipe selfie segmentation here: {e}")
    src = cv2.cvtColor(cv2.imread(os.path.join(portraits_dir, "jolie_1.jpg")), cv2.COLOR_BGR2RGB)
    aligned = align_portrait(src)
    cam = aligned.cameras
    portrait = torch.from_numpy(aligned.image).float() / 255.0
    lm = detect_landmarks(aligned.image)
    # a smooth head in the template's frame (cranium-sized ellipsoid), placed where the template's eyes,
    # nose and mouth project onto the portrait's landmarks
    placement = place_template(aligned.landmarks, cam)
    s = trimesh.creation.icosphere(subdivisions=3)
    v = torch.tensor(s.vertices, dtype=torch.float32) * torch.tensor([0.2, 0.28, 0.22]) + torch.tensor([0.0, -0.03, 0.0])
    mesh, _ = unwrap_uv(HeadMesh(v * placement.scale + torch.tensor(placement.translation), torch.tensor(s.faces)), 512)
    g = torch.Generator().manual_seed(1)
    noise_normal = torch.rand(1, 512, 512, 3, generator=g)
    noise_depth = torch.rand(1, 512, 512, 3, generator=g)
    return portrait, cam, lm, mesh, noise_normal, noise_depth


def _texture(chain, head_mask_source: str):
    from idsculpt.core.geo_supervision import build_reference_geometry
    from idsculpt.core.texture.inpaint import InpaintConfig, ReferenceView, progressive_inpaint
    from idsculpt.core.texture.views import parse_view_plan

    portrait, cam, lm, mesh, noise_normal, noise_depth = chain
    ref = build_reference_geometry(portrait[None], cam, noise_normal, noise_depth, landmarks=lm if head_mask_source == "portrait" else None,
                                   head_mask_source=head_mask_source)
    view = ReferenceView(portrait, cam, mask=ref.mask[..., 0])
    res = progressive_inpaint(mesh, NoiseInpainter(), plan=parse_view_plan(PLAN), reference=view,
                              config=InpaintConfig(render_resolution=128, resolution=128), texture_size=512)
    return ref, res


def _reference_view(chain, res):
    """The re-rendered reference view, and per pixel the share of its colour that comes from texels the
    portrait painted (the 'locked' map continued across chart gutters like the colours are)."""
    from idsculpt.core.texture.inpaint import render_textured
    from idsculpt.core.texture.project import fill_holes

    portrait, cam, lm, *_ = chain
    from_portrait = fill_holes(res.state.locked.float()[..., None].expand(-1, -1, 3).contiguous(), res.texels.covered)[..., :1]
    out, share = render_textured(res.mesh, res.mesh.texture, cam, extra=from_portrait)
    return out.color[0], share[0, ..., 0], out.mask[0, ..., 0]


def test_portrait_paints_the_face_despite_noise(chain):
    from idsculpt.core.face.segment import face_oval_mask

    portrait, cam, lm, *_ = chain
    ref, res = _texture(chain, "portrait")
    assert ref.sources["mask"].startswith("portrait: MediaPipe selfie segmentation ∪ face oval")
    oval = torch.from_numpy(face_oval_mask(lm, 512, 512))
    color, share, cover = _reference_view(chain, res)
    assert float(cover[oval].min()) > 0.5  # the placed head covers the whole face oval
    painted = float((share[oval] >= 0.5).float().mean())
    assert painted >= 0.95, f"the portrait painted only {100 * painted:.1f}% of the face oval"
    mse = float(((color - portrait)[oval] ** 2).mean())
    psnr = 10 * np.log10(1.0 / max(mse, 1e-12))
    assert psnr >= 25.0, f"reference view vs portrait inside the face oval: {psnr:.1f} dB"


def test_mask_from_noise_maps_leaves_holes(chain):
    """The old estimate (valid normals ∧ non-zero depth of the generated maps) on noise maps: the same
    chain no longer paints 95% of the face from the portrait."""
    from idsculpt.core.face.segment import face_oval_mask

    _, _, lm, *_ = chain
    ref, res = _texture(chain, "generated_maps")
    assert ref.sources["mask"].startswith("generated maps")
    oval = torch.from_numpy(face_oval_mask(lm, 512, 512))
    _, share, _ = _reference_view(chain, res)
    assert float((share[oval] >= 0.5).float().mean()) < 0.95
