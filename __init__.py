"""ComfyUI entry point of the NitroGen node pack.

ComfyUI imports this file by path; everything inside the pack is reached by
relative imports only (see DESIGN.md §3).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
