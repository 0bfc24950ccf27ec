"""Texture Refine's batched SDEdit (nodes/engines/sampling.py ``ComfyDenoiser.denoise_batch``) inside a real ComfyUI
(in-process, CPU) with the tiny random-weight SD1.5-shaped models.

Known answer: one batched run of K views equals K single runs made in sequence by a fresh sampling of the same
seed (row i: the noise seed of the i-th single call, its normal hint, its direction's prompt pair), within fp
tolerance; with CUDA graphs on, every UNet / ControlNet call of a run has one batch shape (one graph), a
smaller last batch included. Run with
``COMFYUI_PATH=<ComfyUI> <ComfyUI's python> -m pytest -q tests/test_texture_batch_comfy.py``.
"""
from __future__ import annotations

import types

import pytest
import torch

pytestmark = pytest.mark.comfy

RES = 64  # latents 8x8
T = 600  # a deep SDEdit start: the prompt and the hint matter a lot in the tiny model's 2 steps


@pytest.fixture(scope="module")
def env(comfy_inprocess, tmp_path_factory):
    import torch.nn.functional as F
    from tiny_models import tiny_conditioning, tiny_controlnet, tiny_sd15_model, tiny_vae, write_tiny_faceid_adapter

    from idsculpt.core.face.id_adapter import load_id_adapter
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    comfy_inprocess.load_pack_nodes()
    g = torch.Generator().manual_seed(0)
    model = tiny_sd15_model()
    adapter = load_id_adapter(write_tiny_faceid_adapter(str(tmp_path_factory.mktemp("batch") / "faceid.bin"), scale=4.0))
    emb = F.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    return types.SimpleNamespace(
        model=model, id_model=apply_id_adapter(model, adapter, emb), controlnet=tiny_controlnet(), vae=tiny_vae(), pos=tiny_conditioning(3), neg=tiny_conditioning(4),
        # the back prompts are twice as long (154 tokens): rows are matched by repeating to the LCM length
        conds={"positive_front": tiny_conditioning(20), "negative_front": tiny_conditioning(21),
               "positive_back": tiny_conditioning(22, tokens=154), "negative_back": tiny_conditioning(23, tokens=154)},
        images=torch.rand(3, RES, RES, 3, generator=g), hints=torch.rand(3, RES, RES, 3, generator=g),
    )


FRONT, BACK, SIDE = (types.SimpleNamespace(azimuth=a, elevation=0.0) for a in (10.0, 170.0, 90.0))


def _sampling(env, conds=None, model=None, **kw):
    from idsculpt.core.guidance import TEXTURE_VIEW_THRESHOLDS
    from idsculpt.nodes.engines.sampling import ComfySampling
    from idsculpt.nodes.view_prompts import view_conditioning

    views = view_conditioning(env.pos, env.neg, TEXTURE_VIEW_THRESHOLDS, **(env.conds if conds is None else conds))
    return ComfySampling(env.model if model is None else model, env.pos, env.neg, env.vae, env.controlnet, 1.0, steps=2, cfg=3.0,
                         seed=5, views=views, **kw)


def _singles(env, views, conds=None, model=None):
    from idsculpt.nodes.engines.sampling import ComfyDenoiser

    den = ComfyDenoiser(_sampling(env, conds, model))
    return torch.stack([den.denoise(env.images[i], env.hints[i], v, T) for i, v in enumerate(views)])


@pytest.mark.parametrize("how", ["rows", "grouped", "id_adapter"])
def test_a_batched_run_equals_single_runs_view_by_view(env, how):
    """Views of three directions (front 77 tokens, back 154, side the plain pair) in one run: every row is the single
    run of that view. ``rows``: one CONDITIONING with a row per view; ``grouped``: conds that cannot share rows
    (an area on them) run one sampler call per direction, the rows keep their noise seeds; ``id_adapter``: the
    MODEL carries the ID adapter's attention patch (its tokens broadcast to every row), which changes the result."""
    from idsculpt.nodes.engines.sampling import ComfyDenoiser

    model = env.id_model if how == "id_adapter" else env.model
    conds = dict(env.conds)
    if how == "grouped":  # an area (the whole latent) stops the row merge, and changes nothing else
        conds = {k: [[c[0][0], {**c[0][1], "area": (RES // 8, RES // 8, 0, 0)}]] for k, c in conds.items()}
    views = [FRONT, BACK, SIDE]
    s = _sampling(env, conds, model)
    if how == "rows":
        seen = []
        import comfy.sample

        real = comfy.sample.sample

        def spy(model, noise, *a, **kw):
            seen.append((noise.shape[0], a[4][0][0].shape))  # latent rows, the positive cross-attention tensor
            return real(model, noise, *a, **kw)

        comfy.sample.sample = spy
        try:
            batch = ComfyDenoiser(s).denoise_batch(env.images, env.hints, views, T)
        finally:
            comfy.sample.sample = real
        assert seen == [(3, (3, 154, seen[0][1][2]))]  # one run, one cross-attention row per view, padded to 154
    else:
        batch = ComfyDenoiser(s).denoise_batch(env.images, env.hints, views, T)
    assert s.calls == 3
    single = _singles(env, views, conds, model)
    torch.testing.assert_close(batch, single, atol=2e-4, rtol=0)
    if how == "id_adapter":  # the patch acts in the batched run
        plain = ComfyDenoiser(_sampling(env)).denoise_batch(env.images, env.hints, views, T)
        assert (plain - batch).abs().max() > 1e-2
        return
    # the wiring matters: view 0 with view 1's direction gives another picture
    swapped = _singles(env, [BACK], conds)
    assert (swapped[0] - single[0]).abs().max() > 1e-2


def test_one_graph_shape_for_the_run_a_short_last_batch_padded(env, monkeypatch):
    """With graphs on (forced here on CPU: every call still runs eagerly, through the graph wrappers), a batch of 3
    then a batch of 2: every UNet and ControlNet call sees the batch shape 2 x 3 (one CUDA graph), and the short
    batch's rows equal an unpadded run's."""
    import idsculpt.nodes.engines.cuda_graphs as cg
    from idsculpt.nodes.engines.sampling import ComfyDenoiser

    monkeypatch.setattr(cg, "graphs_off_reason", lambda *a, **k: None)
    monkeypatch.setattr(cg, "not_resident_reason", lambda *a, **k: None)
    s = _sampling(env)
    assert s.graphs.enabled
    shapes = {"unet": [], "control": []}

    def watch(name, call):
        def wrapped(fn, args=(), kwargs=None):
            x = args[0] if args else kwargs.get("x", next(iter(kwargs.values())))
            shapes[name].append(tuple(x.shape))
            return call(fn, args, kwargs)
        return wrapped

    monkeypatch.setattr(s.graphs.unet, "call", watch("unet", s.graphs.unet.call))
    monkeypatch.setattr(s.graphs.control, "call", watch("control", s.graphs.control.call))
    den = ComfyDenoiser(s)
    den.denoise_batch(env.images, env.hints, [FRONT, BACK, SIDE], T)
    short = den.denoise_batch(env.images[:2], env.hints[:2], [BACK, FRONT], T)
    s.close()
    assert short.shape == (2, RES, RES, 3)
    assert len(shapes["unet"]) == 4 and len(shapes["control"]) == 4  # 2 sampler steps x 2 runs
    assert {sh[0] for sh in shapes["unet"]} == {6} == {sh[0] for sh in shapes["control"]}  # CFG x 3 rows, both runs
    assert len(set(shapes["unet"])) == 1 and s.rows == 3
    # the padded run's rows are the unpadded run's (graphs off: no padding), noise seeds 3 and 4 of the seed
    plain = _sampling(env)
    plain.calls = 3
    ref = ComfyDenoiser(plain).denoise_batch(env.images[:2], env.hints[:2], [BACK, FRONT], T)
    torch.testing.assert_close(short, ref, atol=2e-4, rtol=0)


def test_rows_that_cannot_merge_are_reported_as_such(comfy_inprocess):
    """merge_conditioning_rows (nodes/engines/sampling.py imports ComfyUI: the in-process fixture provides it): one row per view for one-entry conds, None where ComfyUI could not batch them."""
    from idsculpt.nodes.engines.sampling import merge_conditioning_rows

    a, b = torch.randn(1, 77, 8), torch.randn(1, 154, 8)
    merged = merge_conditioning_rows([[[a, {"pooled_output": torch.ones(1, 4)}]], [[b, {"pooled_output": torch.zeros(1, 4)}]]])
    assert merged[0][0].shape == (2, 154, 8)
    assert torch.equal(merged[0][0][0], torch.cat([a[0], a[0]])) and torch.equal(merged[0][0][1], b[0])
    assert torch.equal(merged[0][1]["pooled_output"], torch.tensor([[1.0] * 4, [0.0] * 4]))
    assert merge_conditioning_rows([[[a, {}]], [[torch.randn(1, 77 * 5, 8), {}]]]) is None  # LCM over 4x the shortest
    assert merge_conditioning_rows([[[a, {}], [a, {}]], [[a, {}]]]) is None  # several entries
    assert merge_conditioning_rows([[[a, {"strength": 1.0}]], [[a, {"strength": 0.5}]]]) is None  # different settings
    assert merge_conditioning_rows([[[a, {"mask": torch.ones(1, 8, 8)}]], [[a, {"mask": torch.ones(1, 8, 8)}]]]) is None
