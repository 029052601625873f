"""Thin ComfyUI adapters for NitroGen: the only place that imports comfy.* / folder_paths.

Empty for now. The three nodes (NitroGen Loader, NitroGen Adaptive Sampler,
NitroGen Compute Map) land with the ComfyUI-nodes issue; until then the pack
loads in ComfyUI and registers nothing.
"""

NODE_CLASS_MAPPINGS: dict[str, type] = {}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {}
