"""The ComfyUI-backed engines the nodes hand to core: the ISD noise predictor (``noise_predictor``, built into an
ISD_GUIDANCE by ``isd_guidance``, encoding through ``vae_encoder``), the texture stage's sampling adapter
(``sampling``), the ID adapter's attention patch (``id_patch``), CUDA graphs of the UNet / ControlNet
(``cuda_graphs``) and the VRAM stage with the diagnostic switches (``vram``). No nodes live here: node classes
(schemas and executes) are in nodes/*_nodes.py, and nodes/__init__.py skips this package when it collects them.
"""
