"""ComfyUI-IDSculpt: one portrait in, a textured identity-preserving 3D head (GLB) out.

ComfyUI loads this file as a V3 extension through ``comfy_entrypoint``. Nodes are imported only
there, so ``core/`` stays importable (and testable) without ComfyUI.
"""

WEB_DIRECTORY = "./js"


async def comfy_entrypoint():
    from .nodes import IDSculptExtension

    return IDSculptExtension()


__all__ = ["WEB_DIRECTORY", "comfy_entrypoint"]
