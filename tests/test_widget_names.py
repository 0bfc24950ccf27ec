"""Widget names equal config field names (issue 21).

Saved ComfyUI workflows match a node's inputs by name, so the widgets keep their names and the config fields
carry them: a widget that sets one field of its stage's config has that field's name, and passes its value
through unchanged. The few widgets that set a field under another name are commented at the field as
``# widget(s) a, b: why``; this test holds the nodes to that list.

Each stage node runs in-process (ComfyUI, CPU) up to the core call, which is replaced by one that keeps the
config the node built and stops (the ComfyUI sampling engines are stand-ins: no model runs). Known answer:
every widget is set alone to a value other than its default, and exactly the config entries the table below
names change, to that value.
"""
from __future__ import annotations

import dataclasses
import inspect
import re
import sys
from typing import Any

import pytest
import torch
import trimesh

pytestmark = pytest.mark.comfy

# widget -> the config entries (field, field.sub, field[i]) that carry its value. Unlisted: a widget named
# as a field carries into that field; any other widget touches no config entry.
CARRIES: dict[str, dict[str, set[str]]] = {
    "IDSculptDMTetSculpt": {
        "render_resolution": {"views.resolution"},
        "ref_depth_weight": {"ref_depth_weight", "ref_depth_pearson_weight"},
        "normal_consistency_start": {"lambda_normal_consistency[1]"},
        "normal_consistency_end": {"lambda_normal_consistency[2]"},
        "laplacian_start": {"lambda_laplacian[1]"},
        "laplacian_end": {"lambda_laplacian[2]"},
    },
    "IDSculptProgressiveInpaint": {},
    "IDSculptTextureRefine": {"t_min": {"t_range[0]"}, "t_max": {"t_range[1]"}},
}
# entries a widget moves besides those it carries (derived, not equal to its value)
ALSO_MOVES: dict[str, dict[str, set[str]]] = {
    # the regulariser schedules switch after step gan_steps: [gan_steps, a, b, gan_steps + 1]
    "IDSculptDMTetSculpt": {"gan_steps": {"lambda_normal_consistency[0]", "lambda_normal_consistency[3]",
                                          "lambda_laplacian[0]", "lambda_laplacian[3]"}},
    # views are rendered at twice the crop size (min(2·resolution, 2048))
    "IDSculptProgressiveInpaint": {"resolution": {"render_resolution"}},
    "IDSculptTextureRefine": {},
}
# the node's defaults build the config's defaults, except these entries
DEFAULTS_DIFFER: dict[str, dict[str, Any]] = {
    "IDSculptDMTetSculpt": {},
    "IDSculptProgressiveInpaint": {"render_resolution": 1024},
    "IDSculptTextureRefine": {},
}
# every widget that reaches the config (known answer: the nodes' schemas as of issue 21)
REACH_CONFIG: dict[str, set[str]] = {
    "IDSculptDMTetSculpt": {"steps", "gan_steps", "grid_resolution", "lr", "render_resolution", "guidance_views",
                            "guidance_weight", "ref_normal_weight", "ref_depth_weight", "ref_mask_weight",
                            "normal_consistency_start", "normal_consistency_end", "laplacian_start", "laplacian_end",
                            "seed"},
    "IDSculptProgressiveInpaint": {"resolution", "erode_iterations", "cos_threshold", "policy"},
    "IDSculptTextureRefine": {"refine_steps", "denoise_batch", "t_min", "t_max", "learning_rate", "resolution", "seed"},
}
# widgets whose perturbed value must be valid for the node (no generic choice)
PERTURBED = {"view_plan": "0, 0; 0, 180"}


class _Stop(Exception):
    pass


class _StandInSampling:
    """Takes ComfySampling's arguments; no model runs before the core call."""

    on_step = None

    def __init__(self, *args, **kwargs):
        pass

    def close(self) -> None:
        pass


def _flatten(x, prefix: str = "") -> dict[str, Any]:
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        out: dict[str, Any] = {}
        for f in dataclasses.fields(x):
            out.update(_flatten(getattr(x, f.name), f"{prefix}.{f.name}" if prefix else f.name))
        return out
    if isinstance(x, (tuple, list)):
        out = {}
        for i, v in enumerate(x):
            out.update(_flatten(v, f"{prefix}[{i}]"))
        return out
    return {prefix: x}


def _documented(config_cls: type) -> set[str]:
    """Widget names in the config's ``# widget a: why`` / ``# widgets a, b: why`` comments."""
    names: set[str] = set()
    for m in re.finditer(r"#\s*widgets?\s+(\w+(?:\s*,\s*\w+)*)\s*:", inspect.getsource(config_cls)):
        names.update(n.strip() for n in m.group(1).split(","))
    return names


#: widgets that pick a file from the user's model folders (what the sandbox holds depends on earlier tests)
FILE_CHOOSERS = {"perceptual_model", "lpips_weights", "landmarker_model"}


def _other_value(inp, default):
    if inp.id in PERTURBED:
        return PERTURBED[inp.id]
    options = getattr(inp, "options", None)
    if options is not None:
        others = [o for o in options if o != default]
        return others[0] if others else None
    if isinstance(default, bool):
        return not default
    if isinstance(default, int):
        step = getattr(inp, "step", None) or 1
        hi = getattr(inp, "max", None)
        return default + step if hi is None or default + step <= hi else default - step
    if isinstance(default, float):
        v = default * 2 if default else 0.5
        hi = getattr(inp, "max", None)
        return v if hi is None or v <= hi else default / 2
    return None


@pytest.fixture(scope="module")
def env(comfy_inprocess):
    from idsculpt.core.mesh import HeadMesh
    from tiny_models import tiny_conditioning

    nodes = comfy_inprocess.load_pack_nodes()
    s = trimesh.creation.icosphere(1)
    v = torch.tensor(s.vertices, dtype=torch.float32) * 0.9
    f = torch.tensor(s.faces)
    uv = (v[:, :2] * 0.5 + 0.5).clamp(0, 1)
    textured = HeadMesh(v, f, uv, f.clone(), torch.full((16, 16, 3), 0.5))
    models = dict(model=object(), positive=tiny_conditioning(3), negative=tiny_conditioning(4), vae=object())
    sockets = {
        "IDSculptDMTetSculpt": dict(head_mesh=HeadMesh(v, f), reference_geometry=None),
        "IDSculptProgressiveInpaint": dict(head=textured, **models),
        "IDSculptTextureRefine": dict(head=textured, **models),
    }
    return comfy_inprocess, nodes, sockets


def _widgets(node_cls) -> dict:
    from comfy_api.latest import io

    kinds = (io.Int.Input, io.Float.Input, io.Combo.Input, io.Boolean.Input, io.String.Input)
    return {i.id: i for i in node_cls.GET_SCHEMA().inputs if isinstance(i, kinds)}


def _config_of(ci, node_cls, sockets: dict, values: dict, monkeypatch) -> Any:
    """The config ``node_cls`` builds from these widget values (its core call stopped at the entry)."""
    module = sys.modules[node_cls.__module__]
    config_cls, core_fn = {
        "IDSculptDMTetSculpt": ("SculptConfig", "sculpt"),
        "IDSculptProgressiveInpaint": ("InpaintConfig", "progressive_inpaint"),
        "IDSculptTextureRefine": ("RefineConfig", "refine_texture"),
    }[node_cls.GET_SCHEMA().node_id]
    config_cls = getattr(module, config_cls)
    seen: list = []

    def stop(*args, **kwargs):
        seen.extend(a for a in (*args, *kwargs.values()) if isinstance(a, config_cls))
        raise _Stop

    monkeypatch.setattr(module, core_fn, stop)
    for engine in ("ComfySampling", "ComfyInpainter", "ComfyDenoiser"):
        if hasattr(module, engine):
            monkeypatch.setattr(module, engine, _StandInSampling)
    with pytest.raises(_Stop):
        ci.run_node(node_cls, **sockets, **values)
    assert len(seen) == 1, f"{node_cls.__name__} handed its core call {len(seen)} configs"
    return seen[0], config_cls


@pytest.mark.parametrize("node_id", sorted(CARRIES))
def test_widgets_pass_through_to_the_config_fields_of_their_name(env, node_id, monkeypatch):
    ci, nodes, sockets = env
    node_cls = nodes[node_id]
    widgets = _widgets(node_cls)
    defaults = {name: i.default for name, i in widgets.items()}
    base, config_cls = _config_of(ci, node_cls, sockets[node_id], defaults, monkeypatch)
    flat0 = _flatten(base)
    fields = {f.name for f in dataclasses.fields(config_cls)}

    # the node at its defaults builds the config's defaults
    own = _flatten(config_cls())
    assert {k: v for k, v in flat0.items() if own[k] != v} == DEFAULTS_DIFFER[node_id]

    carried_somewhere = set()
    for name, inp in widgets.items():
        if name in FILE_CHOOSERS:  # a model file the node loads, never a config field; other tests' files may sit there
            assert name not in fields and name not in CARRIES[node_id], name
            continue
        value = _other_value(inp, defaults[name])
        if value is None:  # e.g. a model list with only "none" in the sandbox: nothing to change it to
            assert name not in fields and name not in CARRIES[node_id], name
            continue
        cfg, _ = _config_of(ci, node_cls, sockets[node_id], {**defaults, name: value}, monkeypatch)
        flat = _flatten(cfg)
        moved = {k for k in flat if flat[k] != flat0[k]}
        carries = CARRIES[node_id].get(name, {name} if name in fields else set())
        assert moved == carries | ALSO_MOVES[node_id].get(name, set()), f"{node_id} widget {name} = {value!r}"
        for path in carries:
            assert flat[path] == value, f"{node_id} widget {name} = {value!r} reached {path} as {flat[path]!r}"
            assert flat0[path] == defaults[name], f"{node_id} widget {name}: default {defaults[name]!r}, config {flat0[path]!r}"
        if carries:
            carried_somewhere.add(name)

    assert carried_somewhere == REACH_CONFIG[node_id]
    differ = {w for w in carried_somewhere if w not in fields}
    assert differ == set(CARRIES[node_id]) - fields  # the table's exceptions are the ones the node has
    assert differ == _documented(config_cls), f"{config_cls.__name__}'s '# widget(s) …:' comments"
