"""Evaluation of a textured head against its portrait: LPIPS, CLIP-I, ID (ArcFace + an independent
recogniser), per-view face detection and an ID-versus-azimuth curve (see evaluate.py)."""
from .evaluate import (
    DEFAULT_SWEEP,
    PAPER_ID_VIEWS,
    EvalConfig,
    EvalResult,
    evaluate_head,
    orbit_like,
    resolve_reference_camera,
)
from .identity import DlibFaceRecognizer, FaceEmbedding, InsightFaceRecognizer, cosine, load_insightface
from .lpips import LPIPSAlex, load_lpips_alex, lpips_distance

__all__ = [
    "DEFAULT_SWEEP", "PAPER_ID_VIEWS", "EvalConfig", "EvalResult", "evaluate_head", "orbit_like",
    "resolve_reference_camera", "DlibFaceRecognizer", "FaceEmbedding", "InsightFaceRecognizer", "cosine",
    "load_insightface", "LPIPSAlex", "load_lpips_alex", "lpips_distance",
]
