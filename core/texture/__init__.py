"""Stage 3: UV unwrapping, projection, progressive inpainting and refinement of the head texture."""
from .frame import HEAD_EXTENT_RANGE, head_frame_warning
from .inpaint import InpaintConfig, Inpainter, InpaintResult, ReferenceView, ViewContext, progressive_inpaint, project_reference, render_textured, shade
from .project import TexelGeometry, TextureState, backproject, fill_holes, project_texels, rasterize_uv
from .refine import Denoiser, RefineConfig, denoise_views, RefineResult, RefineView, random_view_loss, reference_loss, refine_texture, sample_refine_camera, tv_loss
from .unwrap import UnwrapInfo, check_texture_size, decimate, unwrap_uv
from .views import CropBox, TextureView, alpha_crop_box, crop_image, default_view_plan, format_view_plan, normalbae_control, parse_view_plan, plan_cameras

__all__ = [
    "HEAD_EXTENT_RANGE", "head_frame_warning", "RefineView", "random_view_loss", "reference_loss", "tv_loss",
    "InpaintConfig", "Inpainter", "InpaintResult", "ReferenceView", "ViewContext", "progressive_inpaint", "project_reference",
    "render_textured", "shade", "TexelGeometry", "TextureState", "backproject", "fill_holes", "project_texels", "rasterize_uv",
    "Denoiser", "denoise_views", "RefineConfig", "RefineResult", "refine_texture", "sample_refine_camera", "UnwrapInfo", "check_texture_size",
    "decimate", "unwrap_uv", "CropBox", "TextureView", "alpha_crop_box", "crop_image", "default_view_plan", "format_view_plan",
    "normalbae_control", "parse_view_plan", "plan_cameras",
]
