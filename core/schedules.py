"""The two step schedules a head can be made with: the paper's and the fast default (issue 22).

One home for the step counts that differ between them. ``scripts/make_workflows.py`` writes them into
the shipped workflows (``full.json`` runs ``FAST``; ``full_paper.json`` runs ``PAPER``), and the
evidence scripts in ``bench/`` (oracle guidance, the small trained prior, the texture oracle) run the
stages with exactly these numbers, so the evidence is about what ships.

The fast schedule keeps every setting of the method (losses, weights, CFG, timestep ranges,
estimator, regulariser values) and changes only how the work is spread over steps:

* sculpt: several views per ISD step through one batched UNet/ControlNet call (4), stage A a quarter as
  long (250 steps), and 312 ISD steps (1,248 view samples, half the paper's 2,500), the reference steps
  following (stage B alternates them). The regulariser switch stays at the end of stage A (threestudio's C()
  step at 1000 = the authors' stage-A length; the node ties it to ``gan_steps``). At full scale on an H100
  (2026-12-06), Chamfer to the known head over PAPER's: x1.010 under an oracle denoiser (bar 5 %) and x1.024
  with a small trained prior through the real ISD (bar 10 %; 625 steps, the paper's samples: x1.006 and
  x1.028; 400 steps: x1.010 and x1.029). Evidence: bench/results/evidence_oracle_sculpt.json,
  evidence_trained_prior.json, bench/evidence_summary.py.
* texture refinement: the paper's 400 steps (100 steps failed the texture evidence: an oracle denoiser's
  refinement from a degraded texture reached 25.3 dB novel-view PSNR against 38.3 dB after 400 steps on the
  CPU scale; the bar is 0.5 dB), with the SDEdit targets of 4 consecutive random views computed in one
  batched sampler run (``denoise_batch``: one t per batch, each target used by its own later step, so it
  comes from a render up to 6 Adam steps old), each target restored in 10 DDIM steps instead of the authors' 20
  (a small diffusion model trained on renders of a known textured head, driven as the authors' SDEdit: the
  refined texture's novel-view PSNR 23.81 dB at 10 steps against 23.71 dB for the paper's 20 steps, one view a
  run, on an H100; the targets agree with 20 steps' at 43.8 dB latent PSNR). Evidence:
  bench/results/evidence_oracle_texture.json, bench/results/evidence_trained_texture.json.

Whether the result holds is shown by the evidence (docs/PERFORMANCE.md "Schedules and evidence").
"""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Schedule:
    """Step counts of one head. Field names are the config fields they set (SculptConfig, RefineConfig,
    InversionConfig)."""

    name: str
    # stage 1, PanoHead inversion (InversionConfig)
    w_steps: int
    pti_steps: int
    # stage 2, DMTet sculpt (SculptConfig; the node's widgets steps / gan_steps / guidance_views / lr)
    sculpt_steps: int
    gan_steps: int
    guidance_views: int
    sculpt_lr: float
    # stage 3, texture refinement (RefineConfig.refine_steps / denoise_batch, the node's widgets of those names;
    # refine_sampler_steps: the Texture Refine node's ``steps``, its DDIM steps per SDEdit target)
    refine_steps: int
    denoise_batch: int
    refine_sampler_steps: int

    @property
    def isd_steps(self) -> int:
        """Stage-B steps that ask the guidance (every second one)."""
        return (self.sculpt_steps - self.gan_steps) // 2

    @property
    def isd_view_samples(self) -> int:
        return self.isd_steps * self.guidance_views

    def as_dict(self) -> dict:
        return asdict(self)


#: The authors' executed schedule (REFERENCE.md): 6000 sculpt steps (1000 stage A), one view per ISD
#: step, 400 refinement steps, 500 + 500 inversion steps.
PAPER = Schedule(name="paper", w_steps=500, pti_steps=500, sculpt_steps=6000, gan_steps=1000, guidance_views=1,
                 sculpt_lr=0.005, refine_steps=400, denoise_batch=1, refine_sampler_steps=20)

#: The default: 312 ISD steps of 4 views (1,248 view samples), stage A a quarter as long; the paper's 400
#: refinement steps with the targets of 4 random views per sampler run, 10 DDIM steps a target (see the module
#: docstring).
FAST = Schedule(name="fast", w_steps=500, pti_steps=500, sculpt_steps=874, gan_steps=250, guidance_views=4,
                sculpt_lr=0.005, refine_steps=400, denoise_batch=4, refine_sampler_steps=10)

SCHEDULES = {s.name: s for s in (PAPER, FAST)}
