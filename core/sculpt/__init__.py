"""Stage 2 of ID-Sculpt: DMTet sculpting against GAN views, the reference view and ISD guidance."""
from .losses import depth_losses, mask_iou, mask_loss, masked_mse, normal_cosine_loss
from .stages import Guidance, NonFiniteError, SculptConfig, Sculptor, SculptResult, preview_cameras, render_previews, sculpt
from .views import GanViews, RandomViewRanges, ReferenceGeometry, random_views

__all__ = [
    "depth_losses", "mask_iou", "mask_loss", "masked_mse", "normal_cosine_loss",
    "Guidance", "NonFiniteError", "SculptConfig", "Sculptor", "SculptResult", "preview_cameras", "render_previews", "sculpt",
    "GanViews", "RandomViewRanges", "ReferenceGeometry", "random_views",
]
