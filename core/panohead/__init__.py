"""PanoHead (stage 1 of ID-Sculpt): generator with release-compatible weights, safe checkpoint
reader, portrait alignment, W+ inversion + PTI, density mesh and GAN-view supervision, and a
procedural template head for users without the checkpoint."""
from .align import AlignedPortrait, align_portrait, detect_landmarks, label_from_rotation
from .checkpoint import RELEASE_FILENAME, convert_pickle, load_generator, read_release_pickle
from .extract import GanViews, density_grid, extract_mesh, gan_view_cameras, mesh_from_grid, render_gan_views
from .invert import InversionConfig, InversionResult, invert, pivotal_tuning, project_w
from .perceptual import VGG16Perceptual, find_vgg16, load_vgg16
from .pipeline import Stage1Result, run_stage1
from .template import TemplatePlacement, place_template, template_mesh, template_sdf
from .triplane import TriPlaneGenerator, release_config, tiny_config

__all__ = [
    "AlignedPortrait", "align_portrait", "detect_landmarks", "label_from_rotation",
    "RELEASE_FILENAME", "convert_pickle", "load_generator", "read_release_pickle",
    "GanViews", "density_grid", "extract_mesh", "gan_view_cameras", "mesh_from_grid", "render_gan_views",
    "InversionConfig", "InversionResult", "invert", "pivotal_tuning", "project_w",
    "VGG16Perceptual", "find_vgg16", "load_vgg16",
    "Stage1Result", "run_stage1",
    "TemplatePlacement", "place_template", "template_mesh", "template_sdf",
    "TriPlaneGenerator", "release_config", "tiny_config",
]
