"""The ID-Sculpt method as a plain torch library. Nothing in core/ imports ComfyUI."""
