#!/usr/bin/env python3
"""Draw a ComfyUI UI-format workflow (what the editor saves: ``nodes``, ``links``, ``groups``) into a PNG.

    python scripts/draw_workflow.py workflows/full.json docs/images/workflow_full.png [--width 1600]

Everything drawn is read from the file: each group's rectangle and title (``bounding``, ``color``),
each node's box at its ``pos``/``size`` with its title bar colour, each link as the editor's bezier
from the origin node's output slot to the target node's input slot, coloured by its type. Nothing is
laid out by hand, so the picture stays true when scripts/make_workflows.py moves a node.

What differs from the editor, and why:
  * text is larger than the canvas' own 14 px (the graph is ~8000 canvas units wide; at README width a
    faithful 14 px would be 3 px): node titles are wrapped and sized to fit their box, group titles are
    drawn in a band above each group;
  * widgets and image previews are not drawn (no values at this size); a node whose title differs
    from its type's name gets the type name in small grey text (a "Reference normal map" is a KSampler);
  * a link into a widget input ends at that input's slot row (the editor draws it at the widget's row).

Node type names come from the ComfyUI ``/object_info`` snapshot beside the workflow
(``api/_object_info.json``, written by scripts/make_workflows.py, or ``_object_info.json``) when there is one,
else the raw type.
Needs only matplotlib (no ComfyUI, no torch).
"""
from __future__ import annotations

import argparse
import colorsys
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from typing import Any, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:  # also when loaded by path (tests)
    sys.path.insert(0, HERE)
from workflow_file import read_workflow  # noqa: E402  (scripts/ sibling)

# LiteGraph's geometry constants (litegraph.core.js / ComfyUI frontend): what turns pos/size/slot index
# into the canvas positions the editor draws.
TITLE_HEIGHT = 30.0   # the title bar sits ABOVE node.pos (pos is the top-left of the body)
SLOT_HEIGHT = 20.0    # slot i's centre is at pos.y + (i + 0.7) * SLOT_HEIGHT
SLOT_INSET = 10.0     # slot centres are this far inside the left (input) / right (output) edge
COLLAPSED_WIDTH = 120.0

# ComfyUI dark palette (frontend "dark" theme): canvas, node defaults, link colours by type.
BACKGROUND = "#202020"
NODE_BG = "#353535"
NODE_TITLE = "#222222"
NODE_OUTLINE = "#000000"
TEXT = "#dddddd"
TYPE_TEXT = "#9a9a9a"
LINK_COLORS = {
    "CLIP": "#FFD500", "CLIP_VISION": "#A8DADC", "CLIP_VISION_OUTPUT": "#ad7452", "CONDITIONING": "#FFA931",
    "CONTROL_NET": "#6EE7B7", "IMAGE": "#64B5F6", "LATENT": "#FF9CF9", "MASK": "#81C784", "MODEL": "#B39DDB",
    "STYLE_MODEL": "#C2FFAE", "VAE": "#FF6E6E", "NOISE": "#B0B0B0", "GUIDER": "#66FFFF", "SAMPLER": "#ECB4B4",
    "SIGMAS": "#CDFFCD", "TAESD": "#DCC274", "STRING": "#7ec8a0", "INT": "#29699c", "FLOAT": "#29699c",
}


# --------------------------------------------------------------------------- reading the file
@dataclass
class Node:
    id: int
    type: str
    title: str
    type_name: str          # the type's display name (from /object_info) or the raw type
    x: float
    y: float
    w: float
    h: float
    color: Optional[str]    # title bar
    bgcolor: Optional[str]  # body
    collapsed: bool
    mode: int               # 0 always, 2 never (muted), 4 bypass
    inputs: list
    outputs: list


@dataclass
class Link:
    id: int
    origin: int
    origin_slot: int
    target: int
    target_slot: int
    type: str


@dataclass
class Group:
    title: str
    x: float
    y: float
    w: float
    h: float
    color: str
    font_size: float


@dataclass
class Workflow:
    nodes: dict
    links: list
    groups: list
    name: str


def _hex(color: Optional[str], default: str) -> str:
    """'#8A8' -> '#88AA88' (the editor stores both forms); anything unreadable -> default."""
    if not isinstance(color, str) or not color.startswith("#"):
        return default
    c = color[1:]
    if len(c) in (3, 4):
        c = "".join(ch * 2 for ch in c)
    if len(c) not in (6, 8) or any(ch not in "0123456789abcdefABCDEF" for ch in c):
        return default
    return "#" + c[:6]


def _display_names(workflow_path: str) -> dict:
    folder = os.path.dirname(os.path.abspath(workflow_path))
    data = None
    for snap in (os.path.join(folder, "api", "_object_info.json"), os.path.join(folder, "_object_info.json")):
        try:
            with open(snap, encoding="utf-8") as fh:
                data = json.load(fh)
            break
        except (OSError, ValueError):
            continue
    if data is None:
        return {}
    entries = data.get("nodes", data) if isinstance(data, dict) else {}
    return {k: v.get("display_name") or k for k, v in entries.items() if isinstance(v, dict)}


def load_workflow(path: str) -> Workflow:
    """Read a UI-format workflow; refuse API-format files with a message saying what to pass instead."""
    kind, data = read_workflow(path)
    if kind == "api":
        raise ValueError(f"{path} is an API-format workflow (no positions): draw its UI twin "
                         f"(e.g. workflows/full.json, not workflows/api/full.json)")
    if kind != "ui":
        raise ValueError(f"{path} is not a ComfyUI UI workflow (no 'nodes' list)")
    names = _display_names(path)
    nodes = {}
    for n in data["nodes"]:
        pos, size = n.get("pos", [0, 0]), n.get("size", [200, 100])
        if isinstance(pos, dict):  # very old files: {"0": x, "1": y}
            pos = [pos.get("0", 0), pos.get("1", 0)]
        if isinstance(size, dict):
            size = [size.get("0", 200), size.get("1", 100)]
        type_name = names.get(n.get("type", ""), n.get("type", "?"))
        nodes[int(n["id"])] = Node(
            id=int(n["id"]), type=n.get("type", "?"), title=n.get("title") or type_name, type_name=type_name,
            x=float(pos[0]), y=float(pos[1]), w=float(size[0]), h=float(size[1]), color=n.get("color"),
            bgcolor=n.get("bgcolor"), collapsed=bool((n.get("flags") or {}).get("collapsed")), mode=int(n.get("mode", 0) or 0),
            inputs=list(n.get("inputs") or []), outputs=list(n.get("outputs") or []))
    links = []
    for l in data.get("links") or []:
        if isinstance(l, dict):  # newer serialisation (schema 1): objects instead of arrays
            l = [l.get("id"), l.get("origin_id"), l.get("origin_slot"), l.get("target_id"), l.get("target_slot"), l.get("type")]
        if l[1] in nodes and l[3] in nodes:
            links.append(Link(int(l[0]), int(l[1]), int(l[2]), int(l[3]), int(l[4]), str(l[5])))
    groups = []
    for g in data.get("groups") or []:
        b = g.get("bounding") or [0, 0, 100, 100]
        groups.append(Group(g.get("title", ""), *map(float, b[:4]), _hex(g.get("color"), "#3f789e"), float(g.get("font_size", 24))))
    return Workflow(nodes, links, groups, os.path.basename(path))


# --------------------------------------------------------------------------- geometry
def slot_pos(node: Node, slot: int, is_input: bool) -> tuple[float, float]:
    """Canvas position of a slot, as LiteGraph's getConnectionPos computes it."""
    if node.collapsed:  # collapsed nodes connect at the middle of their title bar's ends
        y = node.y - TITLE_HEIGHT * 0.5
        return (node.x, y) if is_input else (node.x + COLLAPSED_WIDTH, y)
    y = node.y + (slot + 0.7) * SLOT_HEIGHT
    return (node.x + SLOT_INSET, y) if is_input else (node.x + node.w + 1 - SLOT_INSET, y)


def link_color(link_type: str) -> str:
    """The palette's colour for known types; our own types (IDSCULPT_*) get a stable colour of their own."""
    if link_type in LINK_COLORS:
        return LINK_COLORS[link_type]
    h = int(hashlib.md5(link_type.encode()).hexdigest()[:6], 16) / 0xFFFFFF
    r, g, b = colorsys.hls_to_rgb(h, 0.68, 0.55)
    return "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))


def bounds(wf: Workflow) -> tuple[float, float, float, float]:
    xs, ys = [], []
    for n in wf.nodes.values():
        w = COLLAPSED_WIDTH if n.collapsed else n.w
        h = 0 if n.collapsed else n.h
        xs += [n.x, n.x + w]
        ys += [n.y - TITLE_HEIGHT, n.y + h]
    for g in wf.groups:
        xs += [g.x, g.x + g.w]
        ys += [g.y, g.y + g.h]
    if not xs:
        raise ValueError("the workflow has no nodes and no groups: nothing to draw")
    return min(xs), min(ys), max(xs), max(ys)


# --------------------------------------------------------------------------- text fitting
class _Fitter:
    """Wrap and size text to a box in output pixels, measuring with the figure's own renderer (so the
    fit holds for whatever font matplotlib resolves)."""

    def __init__(self, fig, dpi: float) -> None:
        from matplotlib.font_manager import FontProperties

        self._renderer = fig.canvas.get_renderer()
        self._props = FontProperties
        self._pt = 72.0 / dpi
        self._cache: dict = {}

    def width(self, text: str, px: float, weight: str = "normal", style: str = "normal") -> float:
        key = (text, px, weight, style)
        if key not in self._cache:
            prop = self._props(size=px * self._pt, weight=weight, style=style)
            self._cache[key] = self._renderer.get_text_width_height_descent(text, prop, ismath=False)[0]
        return self._cache[key]

    def wrap(self, text: str, box_w: float, px: float, split_words: bool = True, **font) -> Optional[list[str]]:
        """Greedy word wrap to box_w px; a word wider than the box is split by characters (or, with
        split_words=False, None is returned)."""
        lines: list[str] = []
        cur = ""
        for word in text.split():
            cand = f"{cur} {word}" if cur else word
            if self.width(cand, px, **font) <= box_w:
                cur = cand
                continue
            if cur:
                lines.append(cur)
            cur = ""
            if not split_words and self.width(word, px, **font) > box_w:
                return None
            while self.width(word, px, **font) > box_w and len(word) > 1:
                k = len(word) - 1
                while k > 1 and self.width(word[:k], px, **font) > box_w:
                    k -= 1
                lines.append(word[:k])
                word = word[k:]
            cur = word
        if cur or not lines:
            lines.append(cur)
        return lines

    def fit(self, text: str, box_w: float, box_h: float, max_px: float, min_px: float, **font) -> tuple[list[str], float]:
        """Largest size in [min_px, max_px] (0.5 px steps) at which the text, wrapped at spaces, fits
        box_w x box_h px; at min_px words may be split (and the caller clips what still overflows)."""
        px = max_px
        while px > min_px:
            lines = self.wrap(text, box_w, px, split_words=False, **font)
            if lines is not None and len(lines) * LINE_SPACING * px <= box_h:
                return lines, px
            px = max(min_px, px - 0.5)
        return self.wrap(text, box_w, min_px, **font), min_px


LINE_SPACING = 1.2


# --------------------------------------------------------------------------- drawing
def draw(wf: Workflow, out_path: str, width_px: int = 1600, title: Optional[str] = None, dpi: int = 100):
    """Render the workflow to ``out_path`` (PNG). Returns the matplotlib Figure (closed, texts kept)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyBboxPatch, PathPatch, Rectangle, Circle
    from matplotlib.path import Path

    x0, y0, x1, y1 = bounds(wf)
    margin = 40.0
    cw = (x1 - x0) + 2 * margin
    s = width_px / cw  # output px per canvas unit
    # room above each group for its title band (sized in output px, converted back to canvas units)
    group_px = max(11.0, min(16.0, width_px / 110))
    fig = plt.figure(dpi=dpi, facecolor=BACKGROUND)
    fitter = _Fitter(fig, dpi)
    band_lines = {id(g): fitter.wrap(g.title, g.w * s - 8, group_px, weight="bold") for g in wf.groups}
    band = max((len(v) for v in band_lines.values()), default=0) * 1.25 * group_px / s + (8 / s if wf.groups else 0)
    header_px = 30.0 if title else 0.0
    top = y0 - margin - band - header_px / s
    bottom = y1 + margin
    height_px = int(round((bottom - top) * s))
    fig.set_size_inches(width_px / dpi, height_px / dpi)
    ax = fig.add_axes([0, 0, 1, 1])
    ax.set_xlim(x0 - margin, x1 + margin)
    ax.set_ylim(bottom, top)  # canvas y grows downwards
    ax.set_axis_off()
    ax.set_facecolor(BACKGROUND)
    pt = 72.0 / dpi  # points per output pixel

    if title:
        ax.text(x0 - margin + 12 / s, top + 6 / s, title, color=TEXT, fontsize=15 * pt, va="top", ha="left", fontweight="bold")

    # groups: translucent fill + outline (as LiteGraph), title in a band just above the rectangle
    for g in wf.groups:
        ax.add_patch(Rectangle((g.x, g.y), g.w, g.h, facecolor=g.color, alpha=0.22, edgecolor="none", zorder=1))
        ax.add_patch(Rectangle((g.x, g.y), g.w, g.h, facecolor="none", edgecolor=g.color, lw=1.2, zorder=1))
        lines = band_lines[id(g)]
        ax.text(g.x + 4 / s, g.y - 4 / s, "\n".join(lines), color=_lighten(g.color), fontsize=group_px * pt, va="bottom",
                ha="left", fontweight="bold", linespacing=1.15, zorder=2, gid="group-title")

    # links under the nodes, as the editor draws them: cubic bezier, control points a quarter of the
    # distance out horizontally from each end
    for l in wf.links:
        a = slot_pos(wf.nodes[l.origin], l.origin_slot, False)
        b = slot_pos(wf.nodes[l.target], l.target_slot, True)
        d = 0.25 * ((b[0] - a[0]) ** 2 + (b[1] - a[1]) ** 2) ** 0.5
        path = Path([a, (a[0] + d, a[1]), (b[0] - d, b[1]), b], [Path.MOVETO, Path.CURVE4, Path.CURVE4, Path.CURVE4])
        ax.add_patch(PathPatch(path, facecolor="none", edgecolor=link_color(l.type), lw=max(0.6, 3.0 * s), alpha=0.9, zorder=3,
                               gid=f"link-{l.id}"))

    title_px_max = max(7.0, min(12.0, width_px / 150))
    for n in sorted(wf.nodes.values(), key=lambda n: n.id):
        w = COLLAPSED_WIDTH if n.collapsed else n.w
        alpha = 0.45 if n.mode in (2, 4) else 1.0  # muted / bypassed nodes are faded in the editor too
        body = _hex(n.bgcolor, NODE_BG)
        head = _hex(n.color, NODE_TITLE)
        if n.mode == 4:
            body = head = "#7a3a8a"
        r = 8.0
        if not n.collapsed:
            ax.add_patch(FancyBboxPatch((n.x, n.y - TITLE_HEIGHT), w, n.h + TITLE_HEIGHT, boxstyle=f"round,pad=0,rounding_size={r}",
                                        facecolor=body, edgecolor=NODE_OUTLINE, lw=0.6, alpha=alpha, zorder=4))
        ax.add_patch(FancyBboxPatch((n.x, n.y - TITLE_HEIGHT), w, TITLE_HEIGHT, boxstyle=f"round,pad=0,rounding_size={r}",
                                    facecolor=head, edgecolor=NODE_OUTLINE, lw=0.6, alpha=alpha, zorder=5))
        # slot dots in their link's colour (connected slots only: unconnected ones are clutter at this size)
        if not n.collapsed:
            for i, inp in enumerate(n.inputs):
                if inp.get("link") is not None:
                    ax.add_patch(Circle(slot_pos(n, i, True), 6.0, color=link_color(str(inp.get("type", ""))), zorder=6))
            for i, out in enumerate(n.outputs):
                if out.get("links"):
                    ax.add_patch(Circle(slot_pos(n, i, False), 6.0, color=link_color(str(out.get("type", ""))), zorder=6))
        # the title, wrapped and sized to the whole node (title bar + body), then the type name if it fits
        pad = 6.0
        box_h = (TITLE_HEIGHT if n.collapsed else TITLE_HEIGHT + n.h) - 2 * pad
        lines, px = fitter.fit(n.title, (w - 2 * pad) * s, box_h * s, title_px_max, 5.0)
        ty = n.y - TITLE_HEIGHT + pad
        ax.text(n.x + pad, ty, "\n".join(lines), color=TEXT, fontsize=px * pt, va="top", ha="left", linespacing=LINE_SPACING, zorder=7,
                alpha=alpha, gid=f"node-title-{n.id}", clip_on=True)
        used = len(lines) * LINE_SPACING * px / s
        if n.title != n.type_name and not n.collapsed:
            sub_px = max(5.0, px * 0.8)
            room = box_h - used
            sub = fitter.wrap(n.type_name, (w - 2 * pad) * s, sub_px, split_words=False, style="italic")
            if sub is not None and len(sub) * LINE_SPACING * sub_px <= room * s:
                ax.text(n.x + pad, ty + used + 2 / s, "\n".join(sub), color=TYPE_TEXT, fontsize=sub_px * pt, va="top", ha="left",
                        linespacing=LINE_SPACING, style="italic", zorder=7, alpha=alpha, gid=f"node-type-{n.id}")

    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    fig.savefig(out_path, dpi=dpi, facecolor=BACKGROUND, metadata={"Software": "ComfyUI-IDSculpt scripts/draw_workflow.py"})
    plt.close(fig)
    return fig


def _lighten(color: str, amount: float = 0.45) -> str:
    r, g, b = (int(color[i:i + 2], 16) / 255 for i in (1, 3, 5))
    r, g, b = (c + (1 - c) * amount for c in (r, g, b))
    return "#%02x%02x%02x" % (int(r * 255), int(g * 255), int(b * 255))


def main(argv: Optional[list] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("workflow", help="UI-format workflow JSON (what the ComfyUI editor saves)")
    ap.add_argument("out", help="PNG to write")
    ap.add_argument("--width", type=int, default=1600, help="image width in px (default 1600)")
    ap.add_argument("--title", default=None, help="header line (default: file name, node and link counts); '' for none")
    args = ap.parse_args(argv)
    if args.width < 200:
        ap.error("--width must be at least 200 px")
    try:
        wf = load_workflow(args.workflow)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    title = args.title
    if title is None:
        title = f"{wf.name}: {len(wf.nodes)} nodes, {len(wf.links)} links"
    draw(wf, args.out, width_px=args.width, title=title or None)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
