"""scripts/draw_workflow.py: the drawing is a rendering of the file (positions, titles, links, groups)."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKFLOW = os.path.join(ROOT, "workflows", "geometry.json")

pytest.importorskip("matplotlib")


def _module():
    spec = importlib.util.spec_from_file_location("draw_workflow", os.path.join(ROOT, "scripts", "draw_workflow.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses resolve the module's annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    if not os.path.isfile(WORKFLOW):
        pytest.skip("workflows/geometry.json not written yet")
    dw = _module()
    wf = dw.load_workflow(WORKFLOW)
    out = str(tmp_path_factory.mktemp("draw") / "geometry.png")
    fig = dw.draw(wf, out, width_px=900, title="geometry")
    import matplotlib.image as mpimg

    return dw, wf, fig, mpimg.imread(out)


def test_png_size_follows_the_canvas(rendered):
    dw, wf, fig, img = rendered
    assert img.shape[1] == 900
    x0, y0, x1, y1 = dw.bounds(wf)
    # height: the canvas' aspect (plus margins, the group-title band and the header), not a fixed box
    assert img.shape[0] > 900 * (y1 - y0) / (x1 - x0 + 80)
    assert img.shape[0] < 900 * (y1 - y0) / (x1 - x0 + 80) + 200


def test_every_node_title_and_group_title_is_drawn(rendered):
    dw, wf, fig, img = rendered
    with open(WORKFLOW, encoding="utf-8") as fh:
        raw = json.load(fh)
    texts = {t.get_gid(): t.get_text() for t in fig.axes[0].texts}
    squash = lambda s: "".join(s.split())  # titles are wrapped onto several lines
    for n in raw["nodes"]:
        drawn = texts.get(f"node-title-{n['id']}")
        assert drawn is not None, n
        want = n.get("title") or wf.nodes[n["id"]].type_name
        assert squash(drawn) == squash(want)
    # untitled nodes show their type's display name from the /object_info snapshot
    untitled = [n for n in raw["nodes"] if not n.get("title")]
    assert untitled and any(texts[f"node-title-{n['id']}"].startswith("IDSculpt") for n in untitled)
    group_texts = [t.get_text() for t in fig.axes[0].texts if t.get_gid() == "group-title"]
    assert sorted(squash(t) for t in group_texts) == sorted(squash(g["title"]) for g in raw["groups"])


def test_links_join_the_right_slots(rendered):
    dw, wf, fig, img = rendered
    patches = {p.get_gid(): p for p in fig.axes[0].patches if (p.get_gid() or "").startswith("link-")}
    assert len(patches) == len(wf.links) > 0
    for l in wf.links:
        v = patches[f"link-{l.id}"].get_path().vertices
        o, t = wf.nodes[l.origin], wf.nodes[l.target]
        # LiteGraph: outputs 10 units inside the right edge, inputs inside the left, rows of 20 from pos.y (+0.7 row)
        np.testing.assert_allclose(v[0], (o.x + o.w + 1 - 10, o.y + (l.origin_slot + 0.7) * 20))
        np.testing.assert_allclose(v[-1], (t.x + 10, t.y + (l.target_slot + 0.7) * 20))


def test_node_body_is_painted_at_its_position(rendered):
    """The pixel at a node's body centre has the node's bgcolor (the 'Read me' note's #653)."""
    dw, wf, fig, img = rendered
    note = next(n for n in wf.nodes.values() if n.type == "MarkdownNote")
    assert note.bgcolor == "#653"
    ax = fig.axes[0]
    # a point in the lower body (below the title and type text)
    px, py = ax.transData.transform((note.x + note.w / 2, note.y + note.h * 0.8))
    row, col = int(round(img.shape[0] - py)), int(round(px))
    np.testing.assert_allclose(img[row, col, :3], np.array([0x66, 0x55, 0x33]) / 255, atol=2 / 255)
    # and the canvas background outside every group and node
    np.testing.assert_allclose(img[img.shape[0] - 3, 3, :3], np.array([0x20, 0x20, 0x20]) / 255, atol=2 / 255)


def test_api_format_is_refused_with_a_hint(tmp_path):
    dw = _module()
    api = os.path.join(ROOT, "workflows", "api", "geometry.json")
    if not os.path.isfile(api):
        pytest.skip("workflows/api/geometry.json not written yet")
    with pytest.raises(ValueError, match="API-format.*UI twin"):
        dw.load_workflow(api)
    assert dw.main([api, str(tmp_path / "x.png")]) == 2 and not (tmp_path / "x.png").exists()


def test_cli_writes_png(tmp_path):
    dw = _module()
    # a two-node workflow in the newer link serialisation (objects), with a collapsed node and a group
    wf = {"nodes": [{"id": 1, "type": "LoadImage", "pos": [0, 40], "size": [200, 100], "outputs": [{"name": "IMAGE", "type": "IMAGE", "links": [1]}]},
                    {"id": 2, "type": "PreviewImage", "title": "Look", "pos": [300, 40], "size": [200, 100], "flags": {"collapsed": True},
                     "inputs": [{"name": "images", "type": "IMAGE", "link": 1}]}],
          "links": [{"id": 1, "origin_id": 1, "origin_slot": 0, "target_id": 2, "target_slot": 0, "type": "IMAGE"}],
          "groups": [{"title": "G", "bounding": [-20, -20, 560, 200], "color": "#8A8"}]}
    src = tmp_path / "wf.json"
    src.write_text(json.dumps(wf))
    out = tmp_path / "sub" / "wf.png"
    assert dw.main([str(src), str(out), "--width", "400"]) == 0
    with open(out, "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    w = dw.load_workflow(str(src))
    assert dw.slot_pos(w.nodes[2], 0, True) == (300.0, 25.0)  # collapsed: the title bar's left end
