"""The model table: every weight file the pack's workflows load, where it goes and where it comes from.

The data only (one :class:`ModelSpec` per file) and its two queries, :func:`get_spec` (by key) and
:func:`lookup_spec` (by key, role word or file name). What is done with it lives beside it: finding the files
and the loaders' "not found" message in core/models.py (the entry point every caller imports), docs/MODELS.md
in core/model_docs.py.

A model may be found under several names (``.safetensors`` / ``.pth`` / ``.bin`` variants, fp16
re-uploads, the diffusers layout): each accepted location is a ``(folder_key, pattern)`` pair, the
pattern a path relative to one of the folder's directories, with ``fnmatch`` wildcards, matched
case-insensitively against every file below that directory (ComfyUI's file lists recurse too).
The first location is the canonical one, shown in tables and messages.

Pure Python (no torch, no ComfyUI): scripts/check_models.py loads it without the pack.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass
from typing import Optional

#: Workflows the table knows. "geometry" = portrait -> sculpted untextured head (workflows/geometry.json);
#: "full" = geometry + texture (workflows/full.json); "eval" = the evaluation node's metric models.
WORKFLOWS = ("geometry", "full", "eval")
REQUIRED, OPTIONAL = "required", "optional"


@dataclass(frozen=True)
class ModelSpec:
    """One model file (or one file of a multi-file pack) a workflow loads."""

    key: str  # short stable id (used by missing_model_message and tests)
    role: str  # what the pipeline uses it for, in the paper's terms
    locations: tuple[tuple[str, str], ...]  # accepted (ComfyUI folder key, relative name or glob); first = canonical
    source: str  # where to download it
    licence: str
    need: str  # REQUIRED or OPTIONAL (within ``workflows``)
    workflows: tuple[str, ...]  # which workflows load it
    note: str = ""  # fallback / what happens without it / conversion hints
    #: this optional model becomes required when the named model is present (VGG16 with PanoHead)
    required_with: Optional[str] = None
    #: ... and in these workflows whatever else is present (VGG16 in "full": the texture refinement's LPIPS-VGG)
    required_in: tuple[str, ...] = ()
    #: file-name globs that never count for this row (a catch-all must not match another row's model)
    exclude: tuple[str, ...] = ()
    #: how scripts/install_models.py gets it (nothing here runs at ComfyUI run time):
    #:   "hf:<owner>/<repo>:<path in repo>"  one file from the Hugging Face hub (huggingface_hub, its cache);
    #:   "hf-diffusers:<owner>/<repo>"       a diffusers SD1.5 folder, converted to one LDM-layout checkpoint;
    #:   "url:<https URL>"                   one file over HTTPS (resumable);
    #:   "zip:<https URL>:<member>"          a release zip unpacked into the canonical file's folder;
    #:   "lpips:<path in the lpips wheel>"   copied from the installed ``lpips`` package or its PyPI wheel;
    #:   "manual"                            the installer prints the steps (no script may fetch it); "" = not fetchable
    fetch: str = ""
    #: pinned hub revision (a commit); "" = the branch "main", and the commit seen goes into the lock file
    revision: str = ""
    #: SHA-256 of the file (hex), or the prefix its publisher put in its name (torchvision's hub convention);
    #: "" = not known yet: the installer records the digest it saw in the lock file and checks later installs against it
    sha256: str = ""
    size: int = 0  # byte size when known (0 = unknown)
    #: the ``--accept-licence NAME`` a non-commercial licence needs before the installer fetches the file
    licence_gate: str = ""

    @property
    def folder(self) -> str:
        return self.locations[0][0]

    @property
    def filename(self) -> str:
        return self.locations[0][1]

    def accepted_names(self) -> list[str]:
        """Accepted names as ``folder/pattern`` strings (for messages)."""
        return [f"{f}/{p}" for f, p in self.locations]


def _sd15_ckpt(stem: str, *globs: str) -> tuple[tuple[str, str], ...]:
    """A single-file SD1.5 checkpoint in checkpoints/ (any of the usual extensions), or the
    diffusers folder layout ComfyUI's DiffusersLoader reads from models/diffusers/<name>/."""
    locs: list[tuple[str, str]] = [("checkpoints", stem + ".safetensors")]
    for g in (stem, *globs):
        for ext in (".safetensors", ".ckpt", ".pt", ".pth", ".bin"):
            locs.append(("checkpoints", g + ext))
    for g in (stem, *globs):
        for ext in (".safetensors", ".bin"):
            locs.append(("diffusers", f"{g}/unet/diffusion_pytorch_model{ext}"))
    seen, out = set(), []
    for loc in locs:
        if loc not in seen:
            seen.add(loc)
            out.append(loc)
    return tuple(out)


def _controlnet(stem: str, *extra: str, first: str = ".safetensors") -> tuple[tuple[str, str], ...]:
    """``first``: the extension of the official release (lllyasviel's v1.1: .pth; CrucibleAI: .safetensors)."""
    names = [stem + first] + [n for n in (stem + ".safetensors", stem + ".pth", stem + "_fp16.safetensors", stem + ".bin")
                              if n != stem + first] + list(extra)
    return tuple(("controlnet", n) for n in names)


#: insightface's release zip of the buffalo_l pack (its model_zoo downloads the same file)
_BUFFALO_L = "zip:https://github.com/deepinsight/insightface/releases/download/v0.7/buffalo_l.zip"
LLLYASVIEL = "Hugging Face `lllyasviel/ControlNet-v1-1` (fp16 safetensors: `comfyanonymous/ControlNet-v1-1_fp16_safetensors`)"

MODEL_TABLE: tuple[ModelSpec, ...] = (
    ModelSpec(
        key="normal_sd15", role="geometry guidance UNet + reference normal (HumanNorm normal-adapted SD1.5)",
        locations=_sd15_ckpt("normal-adapted-sd1.5", "*normal-adapted*", "*normal_adapted*"),
        source="Hugging Face `xanderhuang/normal-adapted-sd1.5` (diffusers layout: put the folder in models/diffusers, "
               "or save it as one .safetensors checkpoint in models/checkpoints)",
        licence="see the model card (SD1.5 CreativeML OpenRAIL-M base)", need=REQUIRED, workflows=("geometry", "full"),
        fetch="hf-diffusers:xanderhuang/normal-adapted-sd1.5",
    ),
    ModelSpec(
        key="depth_sd15", role="reference depth (HumanNorm depth-adapted SD1.5)",
        locations=_sd15_ckpt("depth-adapted-sd1.5", "*depth-adapted*", "*depth_adapted*"),
        source="Hugging Face `xanderhuang/depth-adapted-sd1.5` (diffusers layout, as above)",
        licence="see the model card (SD1.5 CreativeML OpenRAIL-M base)", need=REQUIRED, workflows=("geometry", "full"),
        fetch="hf-diffusers:xanderhuang/depth-adapted-sd1.5",
    ),
    ModelSpec(
        key="vae_ft_mse", role="VAE for ISD and decoding (sd-vae-ft-mse)",
        locations=(("vae", "vae-ft-mse-840000-ema-pruned.safetensors"), ("vae", "vae-ft-mse-840000-ema-pruned.ckpt"),
                   ("vae", "*sd-vae-ft-mse*"), ("vae", "*vae-ft-mse*")),
        source="Hugging Face `stabilityai/sd-vae-ft-mse-original`", licence="MIT", need=REQUIRED, workflows=("geometry", "full"),
        note="the authors encode the ISD renders and code the texture views with it; the shipped workflows load it",
        fetch="hf:stabilityai/sd-vae-ft-mse-original:vae-ft-mse-840000-ema-pruned.safetensors",
    ),
    ModelSpec(
        key="controlnet_mediapipe_face", role="landmark ControlNet for ISD (MediaPipe face, SD1.5)",
        locations=_controlnet("control_v2p_sd15_mediapipe_face", "*mediapipe_face*sd15*", "*sd15*mediapipe_face*"),
        source="Hugging Face `CrucibleAI/ControlNetMediaPipeFace`", licence="CreativeML OpenRAIL-M", need=REQUIRED,
        workflows=("geometry", "full"),
        fetch="hf:CrucibleAI/ControlNetMediaPipeFace:control_v2p_sd15_mediapipe_face.safetensors",
    ),
    ModelSpec(
        key="controlnet_canny", role="canny ControlNet for the reference normal and depth",
        locations=_controlnet("control_v11p_sd15_canny", first=".pth"), source=LLLYASVIEL, licence="CreativeML OpenRAIL-M",
        need=REQUIRED, workflows=("geometry", "full"),
        fetch="hf:lllyasviel/ControlNet-v1-1:control_v11p_sd15_canny.pth",
    ),
    ModelSpec(
        key="controlnet_normalbae", role="texture ControlNet (normal map conditioning)",
        locations=_controlnet("control_v11p_sd15_normalbae", first=".pth"), source=LLLYASVIEL, licence="CreativeML OpenRAIL-M",
        need=REQUIRED, workflows=("full",),
        fetch="hf:lllyasviel/ControlNet-v1-1:control_v11p_sd15_normalbae.pth",
    ),
    ModelSpec(
        key="texture_sd15", role="texture base model (any SD1.5 checkpoint; the paper: Realistic Vision 4.0)",
        locations=(("checkpoints", "Realistic_Vision_V4.0.safetensors"), ("checkpoints", "*realistic*vision*"),
                   ("checkpoints", "*.safetensors"), ("checkpoints", "*.ckpt")),
        exclude=("*normal-adapted*", "*normal_adapted*", "*depth-adapted*", "*depth_adapted*"),
        source="Civitai / Hugging Face `SG161222/Realistic_Vision_V4.0` (swapping it is how stylisation works)",
        licence="its own (CreativeML OpenRAIL-M for Realistic Vision)", need=REQUIRED, workflows=("full",),
        note="any SD1.5 checkpoint in models/checkpoints works (pick it in the workflow): this row is satisfied by Realistic "
             "Vision or, failing that, any other checkpoint file except the HumanNorm ones; it cannot tell SD1.5 from SDXL by name",
        fetch="hf-diffusers:SG161222/Realistic_Vision_V4.0",
    ),
    ModelSpec(
        key="id_adapter", role="ID adapter (IP-Adapter FaceID Portrait v11, 16 ID tokens)",
        locations=(("ipadapter", "ip-adapter-faceid-portrait-v11_sd15.bin"), ("ipadapter", "ip-adapter-faceid-portrait-v11_sd15.safetensors"),
                   ("ipadapter", "*faceid-portrait-v11*sd15*"), ("ipadapter", "*faceid-portrait*sd15*")),
        source="Hugging Face `h94/IP-Adapter-FaceID`", licence="non-commercial research (insightface embeddings)",
        need=REQUIRED, workflows=("geometry", "full"),
        fetch="hf:h94/IP-Adapter-FaceID:ip-adapter-faceid-portrait-v11_sd15.bin", licence_gate="ipadapter-faceid",
    ),
    ModelSpec(
        key="insightface_det", role="face detector (insightface buffalo_l SCRFD)",
        locations=(("insightface", "models/buffalo_l/det_10g.onnx"), ("insightface", "models/buffalo_l/buffalo_l/det_10g.onnx")),
        source="insightface model zoo `buffalo_l.zip` (unzip into models/insightface/models/buffalo_l/)",
        licence="non-commercial research", need=REQUIRED, workflows=("geometry", "full", "eval"),
        fetch=_BUFFALO_L + ":det_10g.onnx", licence_gate="insightface",
    ),
    ModelSpec(
        key="insightface_rec", role="face recogniser (insightface buffalo_l ArcFace R50)",
        locations=(("insightface", "models/buffalo_l/w600k_r50.onnx"), ("insightface", "models/buffalo_l/buffalo_l/w600k_r50.onnx")),
        source="insightface model zoo `buffalo_l.zip` (same folder as the detector)",
        licence="non-commercial research", need=REQUIRED, workflows=("geometry", "full", "eval"),
        fetch=_BUFFALO_L + ":w600k_r50.onnx", licence_gate="insightface",
    ),
    ModelSpec(
        key="panohead", role="3D GAN for the ID-aware initialisation (PanoHead)",
        locations=(("idsculpt", "easy-khair-180-gpc0.8-trans10-025000.pkl"), ("idsculpt", "easy-khair-180-gpc0.8-trans10-025000.safetensors"),
                   ("idsculpt", "*panohead*.safetensors"), ("idsculpt", "*panohead*.pkl")),
        source="PanoHead release (`SizheAn/PanoHead`, Google Drive link in its README)", licence="CC BY-NC 4.0",
        need=OPTIONAL, workflows=("geometry", "full"),
        note="without it the initialisation starts from the built-in head template (lower identity); "
             "the .pkl is converted once to .safetensors + .json beside it, without running code from the pickle",
        fetch="manual", licence_gate="panohead",
    ),
    ModelSpec(
        key="vgg16", role="perceptual loss of the PanoHead inversion and the texture refinement (VGG16 / LPIPS-VGG)",
        locations=(("idsculpt", "vgg16-397923af.pth"), ("idsculpt", "vgg16.pth"), ("idsculpt", "vgg16.safetensors"), ("idsculpt", "*vgg16*")),
        source="torchvision model zoo (`https://download.pytorch.org/models/vgg16-397923af.pth`)", licence="BSD-3-Clause",
        need=OPTIONAL, workflows=("geometry", "full"), required_with="panohead", required_in=("full",),
        note="needed when PanoHead is used, and by the texture refinement's LPIPS term (the full workflows load it)",
        fetch="url:https://download.pytorch.org/models/vgg16-397923af.pth", sha256="397923af",
    ),
    ModelSpec(
        key="lpips_vgg", role="learned LPIPS v0.1 channel weights for the VGG16 perceptual loss (inversion, texture refinement)",
        locations=(("idsculpt", "lpips/vgg.pth"), ("idsculpt", "vgg.pth")),
        source="PyPI `lpips` package, file `lpips/weights/v0.1/vgg.pth`", licence="BSD-2-Clause",
        need=OPTIONAL, workflows=("geometry", "full"),
        note="without it every VGG channel weighs 1, which is not the authors' LPIPS-VGG loss (the nodes say so in their info)",
        fetch="lpips:lpips/weights/v0.1/vgg.pth", size=7289,
        sha256="a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
    ),
    ModelSpec(
        key="realesrgan_x2", role="texture deblur after inpainting (RealESRGAN x2)",
        locations=(("upscale_models", "RealESRGAN_x2.pth"), ("upscale_models", "RealESRGAN_x2plus.pth"),
                   ("upscale_models", "*RealESRGAN*x2*")),
        source="Hugging Face `ai-forever/Real-ESRGAN` (`RealESRGAN_x2.pth`, the file the authors' code loads; "
               "`xinntao/Real-ESRGAN`'s `RealESRGAN_x2plus.pth` also loads)",
        licence="BSD-3-Clause (Real-ESRGAN code and weights)",
        need=REQUIRED, workflows=("full",),
        note="the authors' deblur of the inpainted texture (half-size bicubic, then x2 super-resolution) before refinement",
        fetch="hf:ai-forever/Real-ESRGAN:RealESRGAN_x2.pth",
    ),
    ModelSpec(
        key="mediapipe_task", role="landmarks for mediapipe > 0.10.21 (MediaPipe Face Landmarker)",
        locations=(("mediapipe", "face_landmarker.task"), ("mediapipe", "*face_landmarker*.task")),
        source="Google MediaPipe model card `face_landmarker.task`", licence="Apache-2.0",
        need=OPTIONAL, workflows=("geometry", "full"),
        note="not needed with mediapipe==0.10.21, whose wheel carries FaceMesh (478 points)",
        fetch="url:https://storage.googleapis.com/mediapipe-models/face_landmarker/face_landmarker/float16/1/face_landmarker.task",
    ),
    ModelSpec(
        key="lpips_alex", role="evaluation: LPIPS backbone (AlexNet)",
        locations=(("idsculpt", "alexnet-owt-7be5be79.pth"), ("idsculpt", "lpips/alexnet-owt-7be5be79.pth"), ("idsculpt", "*alexnet*")),
        source="torchvision model zoo (`https://download.pytorch.org/models/alexnet-owt-7be5be79.pth`)", licence="BSD-3-Clause",
        need=OPTIONAL, workflows=("eval",), note="LPIPS is skipped (reported) without it",
        fetch="url:https://download.pytorch.org/models/alexnet-owt-7be5be79.pth", sha256="7be5be79",
    ),
    ModelSpec(
        key="lpips_lin", role="evaluation: LPIPS v0.1 linear layers",
        locations=(("idsculpt", "lpips/alex.pth"), ("idsculpt", "alex.pth")),
        source="PyPI `lpips` package, file `lpips/weights/v0.1/alex.pth`", licence="BSD-2-Clause",
        need=OPTIONAL, workflows=("eval",), required_with="lpips_alex",
        fetch="lpips:lpips/weights/v0.1/alex.pth", size=6009,
        sha256="df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
    ),
    ModelSpec(
        key="clip_vision", role="evaluation: CLIP-I image embedder (CLIP ViT-L/14)",
        locations=(("clip_vision", "clip-vit-large-patch14.safetensors"), ("clip_vision", "*clip*vit*l*14*"),
                   ("clip_vision", "*clip-vit-large*")),
        source="Hugging Face `openai/clip-vit-large-patch14`", licence="MIT", need=OPTIONAL, workflows=("eval",),
        note="CLIP-I is skipped (reported) without it",
        fetch="hf:openai/clip-vit-large-patch14:model.safetensors",
    ),
)

_BY_KEY = {m.key: m for m in MODEL_TABLE}


def get_spec(key: str) -> ModelSpec:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise KeyError(f"no model {key!r} in the table; known: {', '.join(_BY_KEY)}") from None


def lookup_spec(role_or_filename: str, folder: Optional[str] = None) -> Optional[ModelSpec]:
    """The table entry for a key, a role (or a word of it), or a file name / path (glob match).

    ``folder``: the ComfyUI folder key the file was looked for in; when given, file-name matches only
    count for entries accepted in that folder (so "my_lora.safetensors" in loras/ is not taken for the
    catch-all "*.safetensors" checkpoint row).
    """
    q = role_or_filename.strip()
    if q in _BY_KEY:
        return _BY_KEY[q]
    base = os.path.basename(q.replace("\\", "/")).lower()
    for spec in MODEL_TABLE:
        for loc_folder, pattern in spec.locations:
            if folder and loc_folder != folder:
                continue
            pat = pattern.lower()
            if base and (fnmatch.fnmatchcase(base, pat.rsplit("/", 1)[-1]) or fnmatch.fnmatchcase(q.lower(), pat)):
                return spec
    low = q.lower()
    for spec in MODEL_TABLE:
        if low and low in spec.role.lower():
            return spec
    return None
