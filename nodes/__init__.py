"""Thin ComfyUI adapters for NitroGen: the only place that touches comfy.* / folder_paths.

    NitroGen Loader ──NITROGEN_MODEL──▶ NitroGen Adaptive Sampler ──IMAGE──▶ Preview/Save
                                              └─NITROGEN_COMPUTE──▶ NitroGen Compute Map ──IMAGE──▶ Preview/Save

ComfyUI's modules are imported lazily, on call, through `_comfy` (never at import), and the
library is reached by relative imports (`..nitrogen_core`), since ComfyUI loads the pack by path.
"""
from .compute_map import NitroGenComputeMap
from .loader import NitroGenLoader
from .sampling import NitroGenAdaptiveSampler

NODE_CLASS_MAPPINGS: dict[str, type] = {
    "NitroGenLoader": NitroGenLoader,
    "NitroGenAdaptiveSampler": NitroGenAdaptiveSampler,
    "NitroGenComputeMap": NitroGenComputeMap,
}
NODE_DISPLAY_NAME_MAPPINGS: dict[str, str] = {
    "NitroGenLoader": "NitroGen Loader",
    "NitroGenAdaptiveSampler": "NitroGen Adaptive Sampler",
    "NitroGenComputeMap": "NitroGen Compute Map",
}
