"""NitroGen's sparse ops, with the same names on every backend (SIGE-style `load_runtime`).

Import this package only as ``nitrogen_kernels`` (see ``nitrogen_core/_kernels.py``).

- ``gather``: active windows (block + halo) of an NCHW buffer, with optional fused norm + SiLU.
- ``scatter``: block outputs into a cached NCHW buffer, with optional fused residual add.

Backends: ``torch`` (reference, every device) and ``triton`` (CUDA). A backend that cannot be
used here is ``None`` in ``BACKENDS`` and ``UNAVAILABLE`` says why. ``NITROGEN_KERNELS=torch|triton``
overrides the choice by device.
"""
from __future__ import annotations

import os
from types import ModuleType

from . import torch_ref

BACKENDS: dict[str, ModuleType | None] = {"torch": torch_ref, "triton": None}
UNAVAILABLE: dict[str, str] = {"triton": "the Triton kernels are not written yet (sparse-kernels issue)"}


def backend_for(device_type: str) -> ModuleType:
    """The ops module to use for tensors on `device_type` ("cpu", "cuda", ...)."""
    name = os.environ.get("NITROGEN_KERNELS", "").strip().lower()
    if not name:
        name = "triton" if device_type == "cuda" and BACKENDS["triton"] is not None else "torch"
    if name not in BACKENDS:
        raise ValueError(f"NITROGEN_KERNELS={name!r} is not one of {sorted(BACKENDS)}")
    module = BACKENDS[name]
    if module is None:
        raise RuntimeError(f"kernel backend {name!r} is unavailable: {UNAVAILABLE.get(name, 'unknown reason')}")
    return module
