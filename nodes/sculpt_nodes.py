"""DMTet Sculpt node: stage 2 of ID-Sculpt (GAN-view fit, then reference view + ISD guidance)."""
from __future__ import annotations

import copy
import logging

from comfy_api.latest import io

from ..core.camera import preview_cameras
from ..core.sculpt import RandomViewRanges, SculptConfig, render_previews, sculpt, step_schedule
from .common import progress_callbacks, trainable
from .engines.vram import check_mode, graphs_allowed, optimisation_stage, sculpt_profile_folder, vram_mode_input
from .types import CAMERA, GAN_VIEWS, HEAD_MESH, ISD_GUIDANCE, REFERENCE_GEOMETRY
from .validation import known, verdict

log = logging.getLogger("IDSculpt")


def guidance_for_mode(guidance, vram_mode: str):
    """The guidance the sculpt runs under ``vram_mode``: low_vram replays no CUDA graphs (their memory pools).

    The guidance is ISD Guidance's cached output, which ComfyUI hands to every later run and branch: it is never
    changed here. Where the mode turns the graphs off, the sculpt gets a shallow copy of it with a shallow copy of
    its predictor (weights, conditioning and generator shared; the switch and the per-run state its own)."""
    predictor = getattr(guidance, "predictor", None)
    graphs = getattr(predictor, "cuda_graphs", None)
    if graphs is None or graphs_allowed(graphs, vram_mode) == graphs:
        return guidance
    own_predictor = copy.copy(predictor)
    own_predictor.cuda_graphs = graphs_allowed(graphs, vram_mode)
    own = copy.copy(guidance)
    own.predictor = own_predictor
    return own

class DMTetSculpt(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        d = SculptConfig()
        nc, lap = d.lambda_normal_consistency, d.lambda_laplacian  # (1000, before, after, 1001)
        return io.Schema(
            node_id="IDSculptDMTetSculpt",
            display_name="IDSculpt DMTet Sculpt",
            category="IDSculpt/geometry",
            description="Sculpts the head geometry on a deformable tet grid (DMTet): first fits the PanoHead GAN views' "
            "normals, then alternates reference-view steps (mask, normals, depth) with ISD guidance steps at "
            "random cameras; normal-consistency and Laplacian regularisers in every step. Without guidance it fits "
            "the reference view only. Works in the authors' normalised head frame (vertex mean at the origin, largest "
            "|coordinate| 0.9) and outputs the head and the reference camera in that frame, for the texture stage.",
            inputs=[
                # "head_mesh", not "head": saved prompts name inputs, and ComfyUI 0.3.64 has no input aliases
                HEAD_MESH.Input("head_mesh", tooltip="Initial head mesh (the PanoHead mesh). Its SDF initialises the grid "
                                "after the authors' normalisation: vertex mean to the origin, largest |coordinate| 0.9."),
                REFERENCE_GEOMETRY.Input("reference_geometry", tooltip="Reference-view targets from IDSculpt Geo "
                                         "Supervision (camera, normal map, depth, head and face masks)."),
                GAN_VIEWS.Input("gan_views", optional=True, tooltip="Multi-view normals and masks rendered by PanoHead; "
                                "fitted during the first gan_steps. Without them sculpting starts at stage B."),
                ISD_GUIDANCE.Input("guidance", optional=True, tooltip="ISD guidance from IDSculpt ISD Guidance; used on "
                                   "every other stage-B step. Without it: reference-view-only sculpting."),
                io.Int.Input("steps", default=d.steps, min=1, max=100000, tooltip="Total optimisation steps (authors: 6000)."),
                io.Int.Input("gan_steps", default=d.gan_steps, min=0, max=100000,
                             tooltip="Steps of stage A (GAN-view normals, 10000·(1 − cos)) at the start (authors: 1000). "
                             "Also the last step of the first regulariser weights (authors: step 1000)."),
                io.Int.Input("grid_resolution", default=d.grid_resolution, min=32, max=512, step=32,
                             tooltip="Tet grid resolution (Quartet-equivalent; n = res/2 cubes per side over [-1,1]^3). "
                             "256 matches the authors' 512 over radius 2 in cell size. Memory and time grow with res^3."),
                io.Float.Input("lr", default=d.lr, min=1e-5, max=0.1, step=1e-4, tooltip="Adam learning rate (authors: 0.005)."),
                io.Int.Input("render_resolution", default=d.views.resolution, min=64, max=1024, step=64,
                             tooltip="Resolution of the random guidance views (authors: 512)."),
                io.Int.Input("guidance_views", default=d.guidance_views, min=1, max=8,
                             tooltip="Random views per guidance step (batching views is cheaper per view on a GPU)."),
                io.Float.Input("guidance_weight", default=d.guidance_weight, min=0.0, max=1000.0, step=0.01,
                               tooltip="Multiplier of the guidance loss."),
                io.Float.Input("ref_normal_weight", default=d.ref_normal_weight, min=0.0, max=1e6, step=1.0,
                               tooltip="Reference normal MSE inside the face mask (authors: 10000)."),
                io.Float.Input("ref_depth_weight", default=d.ref_depth_weight, min=0.0, max=1e6, step=1.0,
                               tooltip="Reference depth MSE after least-squares scale/shift; the same weight is used for "
                               "(1 - Pearson) (authors: 100 each)."),
                io.Float.Input("ref_mask_weight", default=d.ref_mask_weight, min=0.0, max=1e6, step=1.0,
                               tooltip="Reference mask MSE (authors: 100)."),
                io.Float.Input("normal_consistency_start", default=nc[1], min=0.0, max=1e7, step=1.0,
                               tooltip="Normal-consistency weight in steps 0 … gan_steps, i.e. during the GAN-view fit and "
                               "the first reference step (authors: 500 up to step 1000)."),
                io.Float.Input("normal_consistency_end", default=nc[2], min=0.0, max=1e7, step=1.0,
                               tooltip="Normal-consistency weight from step gan_steps + 1 on: a step, not a ramp "
                               "(authors: 10000 from step 1001)."),
                io.Float.Input("laplacian_start", default=lap[1], min=0.0, max=1e8, step=1.0,
                               tooltip="Laplacian weight (mean ‖(D − A)v‖, threestudio's form) in steps 0 … gan_steps "
                               "(authors: 1e5 up to step 1000)."),
                io.Float.Input("laplacian_end", default=lap[2], min=0.0, max=1e8, step=1.0,
                               tooltip="Laplacian weight from step gan_steps + 1 on: a step, not a ramp "
                               "(authors: 1.5e5 from step 1001)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFF, control_after_generate=True,
                             tooltip="Seed of the view sampling (and of the guidance noise when it has no own seed)."),
                vram_mode_input(),
            ],
            outputs=[
                HEAD_MESH.Output(display_name="head", tooltip="The sculpted head in the authors' normalised frame "
                                 "(vertex mean of the input mesh at the origin, its largest |coordinate| 0.9, up +y, front "
                                 "+z): the size the texture stage's cameras assume. Use it with reference_camera."),
                io.Image.Output(display_name="preview"),
                CAMERA.Output(display_name="reference_camera", tooltip="The reference (portrait) camera in the same "
                              "normalised frame: it sees head exactly as the input camera saw the input head. "
                              "Connect it to the texture nodes."),
            ],
        )

    @classmethod
    def validate_inputs(cls, steps=None, gan_steps=None) -> bool | str:
        stages = None
        if known(steps) and known(gan_steps) and gan_steps > steps:
            stages = (f"gan_steps ({gan_steps}) is more than steps ({steps}): the GAN-view fit would take every step and "
                      "the reference view and guidance would never run (the authors: 1000 of 6000); lower gan_steps or "
                      "raise steps")
        return verdict(cls, {"steps": steps, "gan_steps": gan_steps}, stages)

    @classmethod
    def execute(cls, head_mesh, reference_geometry, gan_views=None, guidance=None, steps: int = 6000, gan_steps: int = 1000,
                grid_resolution: int = 256, lr: float = 0.005, render_resolution: int = 512, guidance_views: int = 1,
                guidance_weight: float = 1.0, ref_normal_weight: float = 10000.0, ref_depth_weight: float = 100.0,
                ref_mask_weight: float = 100.0, normal_consistency_start: float = 500.0, normal_consistency_end: float = 10000.0,
                laplacian_start: float = 1e5, laplacian_end: float = 1.5e5, seed: int = 0,
                vram_mode: str = "offload") -> io.NodeOutput:
        import comfy.model_management as mm

        device = mm.get_torch_device()
        if check_mode(vram_mode) == "low_vram" and guidance_views > 1:
            log.info("IDSculpt DMTet Sculpt: vram_mode low_vram runs one guidance view per step (asked: %d)", guidance_views)
            guidance_views = 1
        cfg = SculptConfig(
            steps=steps, gan_steps=gan_steps, grid_resolution=grid_resolution, lr=lr, guidance_views=guidance_views,
            guidance_weight=guidance_weight, ref_normal_weight=ref_normal_weight, ref_depth_weight=ref_depth_weight,
            ref_depth_pearson_weight=ref_depth_weight, ref_mask_weight=ref_mask_weight,
            # threestudio's C([1000, a, b, 1001]) with 1000 = gan_steps: a through step gan_steps, b after
            lambda_normal_consistency=step_schedule(normal_consistency_start, normal_consistency_end, gan_steps),
            lambda_laplacian=step_schedule(laplacian_start, laplacian_end, gan_steps), seed=seed,
            views=RandomViewRanges(resolution=render_resolution), profile_folder=sculpt_profile_folder(),
        )
        progress, interrupt = progress_callbacks(steps)
        guidance = guidance_for_mode(guidance, vram_mode)
        with optimisation_stage("DMTet Sculpt", vram_mode) as record:
            mesh = trainable(head_mesh).to(device)
            result = sculpt(mesh, trainable(gan_views), trainable(reference_geometry), guidance, cfg, progress=progress,
                            interrupt=interrupt, device=device)
            record["step_ms"] = result.step_ms  # per step kind: where the stage's time goes (bench_pipeline)
            log.info("IDSculpt DMTet Sculpt: %s", ", ".join(f"{k} steps {v['steps']} x {v['mean_ms']:.1f} ms (median "
                                                           f"{v['median_ms']:.1f})" for k, v in result.step_ms.items()))
            m = result.mesh_normalized.to(device)
            previews = render_previews(m.vertices, m.faces, preview_cameras(8, 512).to(device))
            camera = result.normalization.apply_cameras(reference_geometry.camera.to("cpu"))  # CPU, as the mesh
        return io.NodeOutput(result.mesh_normalized, previews, camera)


NODES = [DMTetSculpt]
