"""Stage 3: UV unwrapping, projection, progressive inpainting and refinement of the head texture."""
from .inpaint import InpaintConfig, Inpainter, InpaintResult, ReferenceView, ViewContext, progressive_inpaint, project_reference, render_textured, shade
from .project import TexelGeometry, TextureState, backproject, fill_holes, project_texels, rasterize_uv
from .refine import Denoiser, RefineConfig, RefineResult, refine_texture, sample_refine_camera
from .unwrap import UnwrapInfo, check_texture_size, decimate, unwrap_uv
from .views import CropBox, TextureView, alpha_crop_box, crop_image, default_view_plan, format_view_plan, normalbae_control, parse_view_plan, plan_cameras

__all__ = [
    "InpaintConfig", "Inpainter", "InpaintResult", "ReferenceView", "ViewContext", "progressive_inpaint", "project_reference",
    "render_textured", "shade", "TexelGeometry", "TextureState", "backproject", "fill_holes", "project_texels", "rasterize_uv",
    "Denoiser", "RefineConfig", "RefineResult", "refine_texture", "sample_refine_camera", "UnwrapInfo", "check_texture_size",
    "decimate", "unwrap_uv", "CropBox", "TextureView", "alpha_crop_box", "crop_image", "default_view_plan", "format_view_plan",
    "normalbae_control", "parse_view_plan", "plan_cameras",
]
