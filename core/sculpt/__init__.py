"""Stage 2 of ID-Sculpt: DMTet sculpting against GAN views, the reference view and ISD guidance."""
from .losses import GAN_NORMAL_BACKGROUND, depth_losses, gan_normal_loss, mask_iou, mask_loss, masked_mse
from .schedule import scheduled_weight, step_schedule
from .stages import Guidance, NonFiniteError, SculptConfig, Sculptor, SculptResult, render_previews, sculpt
from .views import GanViews, RandomViewRanges, ReferenceGeometry, random_views

__all__ = [
    "GAN_NORMAL_BACKGROUND", "depth_losses", "gan_normal_loss", "mask_iou", "mask_loss", "masked_mse",
    "scheduled_weight", "step_schedule",
    "Guidance", "NonFiniteError", "SculptConfig", "Sculptor", "SculptResult", "render_previews", "sculpt",
    "GanViews", "RandomViewRanges", "ReferenceGeometry", "random_views",
]
