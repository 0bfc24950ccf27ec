"""The ID-versus-azimuth curve as an image, drawn with PIL (matplotlib is not a dependency)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

# One colour per recogniser (RGB); others cycle through the rest.
_PALETTE = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14)]


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has no sized default font
        return ImageFont.load_default()


def draw_id_curve(
    curves: dict[str, Sequence[tuple[float, Optional[float]]]],
    marked_azimuths: Sequence[tuple[float, str]] = (),
    title: str = "identity vs azimuth",
    y_range: tuple[float, float] = (-0.2, 1.0),
    size: tuple[int, int] = (900, 480),
    thumbnails: Optional[Sequence[tuple[float, np.ndarray]]] = None,
) -> Image.Image:
    """Plot cosine similarity to the input against render azimuth.

    curves: recogniser name → [(azimuth°, score or None)]; None = no face detected in that view,
      drawn as an "x" on the x axis (a miss is information, not a gap to interpolate over).
    marked_azimuths: [(azimuth°, label)] drawn as dashed verticals (the paper's four ID views).
    thumbnails: optional [(azimuth°, uint8 RGB image)] drawn in a strip under the plot.
    """
    w, h = size
    strip = 0
    if thumbnails:
        strip = min(110, w // max(len(thumbnails), 1))
    img = Image.new("RGB", (w, h + strip), (255, 255, 255))
    d = ImageDraw.Draw(img)
    f_small, f_title = _font(13), _font(16)
    left, right, top, bottom = 60, 20, 36, 50
    pw, ph = w - left - right, h - top - bottom

    az_all = [a for pts in curves.values() for a, _ in pts] + [a for a, _ in marked_azimuths]
    a_min, a_max = (min(az_all), max(az_all)) if az_all else (-180.0, 180.0)
    if a_max - a_min < 1e-6:
        a_min, a_max = a_min - 1, a_max + 1
    y0, y1 = y_range

    def px(a: float) -> float:
        return left + (a - a_min) / (a_max - a_min) * pw

    def py(s: float) -> float:
        s = min(max(s, y0), y1)
        return top + (y1 - s) / (y1 - y0) * ph

    # axes, grid and ticks
    d.rectangle([left, top, left + pw, top + ph], outline=(0, 0, 0))
    for s in np.arange(np.ceil(y0 * 5) / 5, y1 + 1e-6, 0.2):
        y = py(float(s))
        d.line([left, y, left + pw, y], fill=(225, 225, 225))
        d.text((left - 8, y), f"{s:.1f}", fill=(0, 0, 0), font=f_small, anchor="rm")
    step = 30 if a_max - a_min > 120 else 15
    for a in np.arange(np.ceil(a_min / step) * step, a_max + 1e-6, step):
        x = px(float(a))
        d.line([x, top + ph, x, top + ph + 4], fill=(0, 0, 0))
        d.text((x, top + ph + 6), f"{a:.0f}", fill=(0, 0, 0), font=f_small, anchor="mt")
    d.text((left + pw / 2, top + ph + 24), "azimuth (deg; + = camera on the subject's left)", fill=(0, 0, 0), font=f_small, anchor="mt")
    d.text((left + pw / 2, 8), title, fill=(0, 0, 0), font=f_title, anchor="mt")
    if y0 < 0 < y1:
        d.line([left, py(0.0), left + pw, py(0.0)], fill=(150, 150, 150))

    for a, label in marked_azimuths:
        x = px(a)
        for yy in range(top, top + ph, 8):
            d.line([x, yy, x, min(yy + 4, top + ph)], fill=(120, 120, 120))
        d.text((x + 2, top + 2), label, fill=(90, 90, 90), font=f_small)

    for k, (name, pts) in enumerate(curves.items()):
        col = _PALETTE[k % len(_PALETTE)]
        pts = sorted(pts, key=lambda p: p[0])
        run: list[tuple[float, float]] = []
        for a, s in pts + [(None, None)]:
            if s is None or a is None:
                if len(run) > 1:
                    d.line(run, fill=col, width=2)
                run = []
                if a is not None:  # a miss: cross on the bottom axis
                    x, y = px(a), top + ph - 6
                    d.line([x - 4, y - 4, x + 4, y + 4], fill=col, width=2)
                    d.line([x - 4, y + 4, x + 4, y - 4], fill=col, width=2)
                continue
            x, y = px(a), py(s)
            run.append((x, y))
            d.ellipse([x - 3, y - 3, x + 3, y + 3], fill=col)
        ly = top + 8 + 16 * k
        d.line([left + pw - 150, ly, left + pw - 126, ly], fill=col, width=2)
        d.text((left + pw - 120, ly), name, fill=(0, 0, 0), font=f_small, anchor="lm")

    if thumbnails:
        tw = strip
        for a, t in thumbnails:
            tim = Image.fromarray(np.asarray(t, dtype=np.uint8)).resize((tw - 4, tw - 4), Image.BILINEAR)
            x = int(round(px(a) - tw / 2))
            x = min(max(x, 0), w - tw)
            img.paste(tim, (x + 2, h + 2))
    return img
