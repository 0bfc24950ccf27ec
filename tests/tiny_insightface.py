"""Tiny insightface model packs for tests: real ONNX signatures, random recogniser, planted detector.

insightface's ``FaceAnalysis`` routes every ``*.onnx`` in ``<root>/models/<name>/`` by its
signature (insightface ``model_zoo.ModelRouter``): >= 5 outputs -> SCRFD detector; square input
>= 112 px -> ArcFace recogniser. We write files with exactly the signatures of ``buffalo_l``'s
``det_10g.onnx`` (input [1,3,H,W] dynamic, 9 outputs: scores [N,1], box distances [N,4], keypoint
offsets [N,10] for strides 8/16/32 with 2 anchors per cell, no batch dim) and ``w600k_r50.onnx``
(input [N,3,112,112], output [N,512]).

A detector with random weights "finds" thousands of faces (its scores hover around 0.5), so the
test detector's output is *planted*: one anchor per planted face gets logit +20, every other anchor
about -20, with a fixed box and the ArcFace 5-point template inside it. Planted faces are given as
fractions of the detector input (the letterboxed image), so for a square portrait a face at
(cx, cy, w, h) is found at (cx*W, cy*H) with size (w*W, h*H) in image pixels.

Two gates make the planted detector behave like a detector where tests need it:
  * content gate: a blank (uniform) input finds nothing (std of the input below ``min_std``);
  * size gate (``max_input``): faces are found only when the detector input width <= max_input,
    which exercises the retry over detector sizes.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

# insightface's ArcFace template (arcface_dst, 112x112 crop): eyes, nose tip, mouth corners.
ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]], np.float32
)
STRIDES = (8, 16, 32)
FILE_NAMES = {
    "buffalo_l": ("det_10g.onnx", "w600k_r50.onnx"),
    "antelopev2": ("scrfd_10g_bnkps.onnx", "glintr100.onnx"),
}


@dataclass
class PlantedFace:
    """A face the tiny detector reports: centre and size as fractions of the detector input."""

    cx: float
    cy: float
    w: float
    h: float
    stride: int = 32
    score_logit: float = 20.0


class PlantedSCRFD(nn.Module):
    """SCRFD-shaped detector whose output is planted (see module docstring)."""

    def __init__(self, faces: list[PlantedFace], min_std: float = 0.02, max_input: int | None = None, seed: int = 0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.faces = faces
        self.min_std = min_std
        self.max_input = max_input
        # A random conv that really reads the image: it perturbs the background logits a little
        # (never enough to pass the 0.5 threshold), so the graph is a model, not a constant.
        self.feat = nn.Conv2d(3, 2, 3, padding=1)
        with torch.no_grad():
            self.feat.weight.copy_(torch.randn(self.feat.weight.shape, generator=g) * 0.1)
            self.feat.bias.zero_()

    def forward(self, x: torch.Tensor):
        plane = torch.ones_like(x[0, 0])  # [H,W], sizes stay dynamic in the exported graph
        width = plane[0].sum()
        height = plane[:, 0].sum()
        gate = torch.clamp((x.std() - self.min_std) * 1e4, -1.0, 1.0)
        if self.max_input is not None:
            gate = torch.minimum(gate, torch.clamp((self.max_input + 0.5 - width) * 1e4, -1.0, 1.0))
        scores, boxes, kpss = [], [], []
        template = torch.as_tensor(ARCFACE_TEMPLATE_112 / 112.0)
        for s in STRIDES:
            feat = F.avg_pool2d(x, s)  # [1,3,h,w]
            ones = torch.ones_like(feat[0, 0])  # [h,w]
            row = ones.cumsum(0) - 1
            col = ones.cumsum(1) - 1
            base = -20.0 + 0.5 * torch.tanh(self.feat(feat)[0])  # [2,h,w]
            logit0, logit1 = base[0], base[1]
            box0 = [ones * 1.0 for _ in range(4)]
            kps0 = [ones * 0.0 for _ in range(10)]
            for f in self.faces:
                if f.stride != s:
                    continue
                fx, fy = f.cx * width, f.cy * height
                bw, bh = f.w * width, f.h * height
                ci, ri = torch.floor(fx / s), torch.floor(fy / s)
                m = ((col == ci) & (row == ri)).float()
                ax, ay = ci * s, ri * s  # the anchor centre (insightface: index * stride)
                logit0 = logit0 + m * (f.score_logit + 20.0) * (gate + 1.0) / 2 - m * 40.0 * (1.0 - gate) / 2
                x1, y1 = fx - bw / 2, fy - bh / 2
                d = [(ax - x1) / s, (ay - y1) / s, (x1 + bw - ax) / s, (y1 + bh - ay) / s]
                box0 = [b * (1 - m) + m * dv for b, dv in zip(box0, d)]
                for k in range(5):
                    kx = x1 + template[k, 0] * bw
                    ky = y1 + template[k, 1] * bh
                    kps0[2 * k] = kps0[2 * k] * (1 - m) + m * (kx - ax) / s
                    kps0[2 * k + 1] = kps0[2 * k + 1] * (1 - m) + m * (ky - ay) / s
            logits = torch.stack([logit0, logit1], -1)  # [h,w,2]: anchor index fastest, as insightface
            scores.append(torch.sigmoid(logits).reshape(-1, 1))
            b_anchor0 = torch.stack(box0, -1)
            boxes.append(torch.stack([b_anchor0, torch.ones_like(b_anchor0)], 2).reshape(-1, 4))
            k_anchor0 = torch.stack(kps0, -1)
            kpss.append(torch.stack([k_anchor0, torch.zeros_like(k_anchor0)], 2).reshape(-1, 10))
        return (*scores, *boxes, *kpss)


class TinyArcFace(nn.Module):
    """Random-weight recogniser with ArcFace's signature: [N,3,112,112] -> [N,512]."""

    def __init__(self, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 4, stride=4)
        self.conv2 = nn.Conv2d(8, 16, 4, stride=4)
        self.fc = nn.Linear(16 * 7 * 7, 512)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.relu(self.conv2(x))
        return self.fc(x.flatten(1))


def write_tiny_insightface(
    root: str,
    name: str = "buffalo_l",
    faces: list[PlantedFace] | None = None,
    max_input: int | None = None,
    seed: int = 0,
) -> str:
    """Write ``<root>/models/<name>/`` with a planted detector and a random recogniser.

    Default: one square face centred slightly above the middle, 40% of the width. Returns the model folder.
    """
    if faces is None:
        faces = [PlantedFace(0.5, 0.45, 0.4, 0.4)]
    det_name, rec_name = FILE_NAMES.get(name, FILE_NAMES["buffalo_l"])
    folder = os.path.join(root, "models", name)
    os.makedirs(folder, exist_ok=True)
    det = PlantedSCRFD(faces, max_input=max_input, seed=seed).eval()
    outs = [f"score_{s}" for s in STRIDES] + [f"bbox_{s}" for s in STRIDES] + [f"kps_{s}" for s in STRIDES]
    dyn = {"input.1": {2: "height", 3: "width"}}
    dyn.update({o: {0: f"n_{o}"} for o in outs})
    torch.onnx.export(det, (torch.randn(1, 3, 640, 640),), os.path.join(folder, det_name), input_names=["input.1"],
                      output_names=outs, dynamic_axes=dyn, opset_version=17, dynamo=False)
    rec = TinyArcFace(seed).eval()
    torch.onnx.export(rec, (torch.randn(1, 3, 112, 112),), os.path.join(folder, rec_name), input_names=["input.1"],
                      output_names=["embedding"], dynamic_axes={"input.1": {0: "batch"}, "embedding": {0: "batch"}}, opset_version=17,
                      dynamo=False)
    return folder
