"""The ID patch across ComfyUI's clone semantics (review F5) and the user's attention override (F11).

0.3.64's ``ModelPatcher.clone()`` deep-copies ``model_options``; newer ComfyUI copies only its dicts and
lists (``comfy.utils.deepcopy_list_dict``: "Deep copy limited to dicts and lists (leaves shared)"), so
patch objects are shared between a MODEL and its clones. The fixture ``clone_semantics`` runs each
test under both: for "list_dict", 0.3.64's clone is given that copy in place of ``copy.deepcopy``.
IPAdapter_plus-style ``add()`` on a clone stands for the packs that mutate a patch in place.

Needs COMFYUI_PATH and ComfyUI's Python (skipped otherwise). CPU, tiny models.
"""
from __future__ import annotations

import copy
import types

import pytest
import torch
import torch.nn.functional as F

from tiny_models import tiny_conditioning, tiny_sd15_model, write_tiny_faceid_adapter

pytestmark = pytest.mark.comfy


def _list_dict_copy(obj, memo=None):
    """Newer ComfyUI's clone copy of model_options: new dicts and lists, every other object shared."""
    memo = {} if memo is None else memo
    if id(obj) in memo:
        return memo[id(obj)]
    if isinstance(obj, dict):
        out = {_list_dict_copy(k, memo): _list_dict_copy(v, memo) for k, v in obj.items()}
    elif isinstance(obj, list):
        out = [_list_dict_copy(v, memo) for v in obj]
    else:
        out = obj
    memo[id(obj)] = out
    return out


@pytest.fixture(params=["deepcopy", "list_dict"])
def clone_semantics(request, monkeypatch, comfy_inprocess) -> str:
    import comfy.model_patcher as mp

    if request.param == "list_dict":
        monkeypatch.setattr(mp, "copy", types.SimpleNamespace(deepcopy=_list_dict_copy, copy=copy.copy))
    return request.param


@pytest.fixture(scope="module")
def env(comfy_inprocess, tmp_path_factory):
    from idsculpt.core.face.id_adapter import load_id_adapter
    from idsculpt.nodes.engines.id_patch import apply_id_adapter

    adapter = load_id_adapter(write_tiny_faceid_adapter(str(tmp_path_factory.mktemp("clones") / "faceid.bin"), scale=4.0))
    model = tiny_sd15_model()
    emb = F.normalize(torch.randn(512, generator=torch.Generator().manual_seed(0)), dim=0)
    return types.SimpleNamespace(model=model, adapter=adapter, emb=emb, id_model=apply_id_adapter(model, adapter, emb))


def _attn2(model) -> dict:
    return model.model_options["transformer_options"]["patches_replace"]["attn2"]


def _ipadapter_add(model, weight: float) -> None:
    """What IPAdapter_plus does on a key that already holds a patch: copy the dicts on the path, then
    ``add()`` its callback on the existing object, in place."""
    to = model.model_options["transformer_options"].copy()
    to["patches_replace"] = to["patches_replace"].copy()
    to["patches_replace"]["attn2"] = to["patches_replace"]["attn2"].copy()
    for p in to["patches_replace"]["attn2"].values():
        p.add(lambda out, q, k, v, extra, weight: torch.full_like(out, weight), weight=weight)
    model.model_options["transformer_options"] = to


def _callbacks(model) -> list[int]:
    return sorted({len(p.extra_callbacks) for p in _attn2(model).values()})


def _call(patch, seed: int = 0, **extra) -> torch.Tensor:
    """One attn2 call of ``patch`` on random q/k/v of its layer's width (batch: negative, positive)."""
    width = patch.adapter.layers[patch.key].to_k_ip.weight.shape[0]
    g = torch.Generator().manual_seed(seed)
    q, k, v = torch.randn(2, 6, width, generator=g), torch.randn(2, 77, width, generator=g), torch.randn(2, 77, width, generator=g)
    opts = {"n_heads": 1, "cond_or_uncond": [1, 0], "sigmas": torch.tensor([1.0, 1.0]), "attn_precision": None, **extra}
    with torch.no_grad():
        return patch(q, k, v, opts)


def test_the_stand_in_reproduces_the_leak(env, clone_semantics: str) -> None:
    """Without the pack's ON_CLONE callback, list/dict-only copying shares the patch with the parent."""
    import comfy.patcher_extension

    from idsculpt.nodes.engines.id_patch import ON_CLONE_KEY

    bare = env.id_model.clone()
    bare.remove_callbacks_with_key(comfy.patcher_extension.CallbacksMP.ON_CLONE, ON_CLONE_KEY)
    branch = bare.clone()
    _ipadapter_add(branch, 0.5)
    leaked = _callbacks(bare) != [0]
    assert leaked == (clone_semantics == "list_dict")


def test_no_leak_between_branches_and_no_stacking_over_queues(env, clone_semantics: str) -> None:
    a = env.id_model
    ref = {k: _call(p) for k, p in list(_attn2(a).items())[:3]}
    # three queues: each re-runs an IPAdapter-like node on a fresh clone of the cached ID MODEL
    for _ in range(3):
        b = a.clone()
        _ipadapter_add(b, 0.5)
        assert _callbacks(b) == [1]  # one callback, not one per queue
    assert _callbacks(a) == [0]
    # two branches of the same MODEL: what one adds never reaches the other
    b1, b2 = a.clone(), a.clone()
    _ipadapter_add(b1, 0.25)
    assert _callbacks(b1) == [1] and _callbacks(b2) == [0] and _callbacks(a) == [0]
    for k, want in ref.items():
        assert torch.equal(_call(_attn2(b2)[k]), want)  # branch 2 computes what the ID MODEL does
        assert torch.allclose(_call(_attn2(b1)[k]), want + 0.25, atol=1e-6)  # branch 1: + its callback
    # a clone of a branch keeps the branch's callbacks in a list of its own
    c = b1.clone()
    assert _callbacks(c) == [1]
    _ipadapter_add(c, 1.0)
    assert _callbacks(c) == [2] and _callbacks(b1) == [1]
    # copies share the (read-only) adapter weights and tokens: a clone costs no adapter copy
    for k, p in _attn2(c).items():
        assert p is not _attn2(a)[k] and p.adapter is env.adapter and p.cond_tokens is _attn2(a)[k].cond_tokens


def test_stacked_adapters_and_foreign_patches_across_clones(env, clone_semantics: str) -> None:
    """A second Apply ID Adapter chains over the first (one ON_CLONE callback, both copied on clone); a
    foreign patch under ours is left as the host's clone leaves it."""
    import comfy.patcher_extension

    from idsculpt.core.face.id_adapter import SD15_ATTN2_BLOCKS
    from idsculpt.nodes.engines.id_patch import ON_CLONE_KEY, IDAttentionPatch, apply_id_adapter

    twice = apply_id_adapter(env.id_model, env.adapter, -env.emb)
    cbs = twice.callbacks[comfy.patcher_extension.CallbacksMP.ON_CLONE]
    assert len(cbs.get(ON_CLONE_KEY, [])) == 1
    clone = twice.clone()
    for k, p in _attn2(clone).items():
        assert isinstance(p.previous, IDAttentionPatch) and p.previous is not _attn2(twice)[k].previous
    foreign = env.model.clone()

    def upstream(q, k, v, extra):
        return q

    for (name, number), _ in SD15_ATTN2_BLOCKS:
        foreign.set_model_attn2_replace(upstream, name, number)
    over = apply_id_adapter(foreign, env.adapter, env.emb).clone()
    assert all(p.previous is upstream for p in _attn2(over).values())  # a function: shared in both versions


def test_attention_override_reaches_the_id_blocks(env) -> None:
    """F11: the user's attention override (transformer_options["optimized_attention_override"], what
    ModelPatcher.set_model_optimized_attention sets on newer ComfyUI) runs inside the 16 ID blocks."""
    import comfy.sample

    seen = []

    def override(func, *args, **kwargs):
        to = kwargs.get("transformer_options") or {}
        if args[1].shape[-2] == 77:  # keys from the 77 text tokens: a cross-attention (attn2) call
            seen.append(tuple(to.get("block", ())))
        return func(*args, **kwargs)

    # one direct call: the override runs once, with the extra options passed through
    p = next(iter(_attn2(env.id_model).values()))
    calls = []
    out = _call(p, optimized_attention_override=lambda f, *a, **k: calls.append(k["transformer_options"]) or f(*a, **k))
    assert len(calls) == 1 and calls[0]["cond_or_uncond"] == [1, 0] and torch.equal(out, _call(p))
    # a whole sampling step in ComfyUI
    m = env.id_model.clone()
    m.model_options["transformer_options"]["optimized_attention_override"] = override
    noise = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        comfy.sample.sample(m, noise, 1, 2.0, "euler", "normal", tiny_conditioning(3), tiny_conditioning(4),
                            torch.zeros(1, 4, 8, 8), disable_pbar=True, seed=0)
    assert len(set(seen)) == 16  # every SD1.5 cross-attention block, all of them ID-patched
