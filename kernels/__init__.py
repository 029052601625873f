"""NitroGen's sparse ops, with the same names on every backend (SIGE-style `load_runtime`).

Import this package only as ``nitrogen_kernels`` (see ``nitrogen_core/_kernels.py``).

- ``gather``: active windows (block + halo) of a bordered (B, H, W, C) buffer (channels-last, or an
  NCHW tensor seen through permute) into (n, C, s, s), with optional fused GroupNorm affine + SiLU.
- ``scatter``: block outputs into a cached (B, H, W, C) buffer, with optional fused residual add.
- ``ln_modulate``: LayerNorm + affine + per-sample adaLN modulation of rows of active tokens.
- ``gated_add``: the transformer's gated residual add, h += (1 + gate[img]) * y, in place.

Backends: ``torch`` (reference, every device; torch_ref.py) and ``triton`` (CUDA; triton_ops.py,
also runnable on CPU tensors under ``TRITON_INTERPRET=1``, which is how the tests verify it). The
default is triton for CUDA tensors when triton is importable, torch otherwise. A backend that
cannot be used here is ``None`` in ``backends()`` and ``UNAVAILABLE`` says why.
``NITROGEN_KERNELS=torch|triton`` overrides the choice by device.
"""
from __future__ import annotations

import os
from types import ModuleType

from . import torch_ref


_loaded: dict[str, ModuleType | None] = {"torch": torch_ref}
UNAVAILABLE: dict[str, str] = {}


def _load_triton() -> ModuleType | None:
    try:
        from . import triton_ops
    except ImportError as err:                      # triton missing (or too old for triton.language)
        UNAVAILABLE["triton"] = f"triton is not importable ({err}); install it with: pip install triton"
        return None
    return triton_ops


def backends() -> dict[str, ModuleType | None]:
    """Every backend by name; None where it cannot be used here (UNAVAILABLE says why).

    Triton is imported on first call, not with this package: loading the pack on a CPU-only
    ComfyUI should not pay for it."""
    if "triton" not in _loaded:
        _loaded["triton"] = _load_triton()
    return dict(_loaded)


def _interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "") not in ("", "0")


def backend_for(device_type: str) -> ModuleType:
    """The ops module to use for tensors on `device_type` ("cpu", "cuda", ...)."""
    name = os.environ.get("NITROGEN_KERNELS", "").strip().lower()
    if not name and device_type != "cuda":
        return torch_ref
    available = backends()
    if not name:
        name = "triton" if available["triton"] is not None else "torch"
    if name not in available:
        raise ValueError(f"NITROGEN_KERNELS={name!r} is not one of {sorted(available)}")
    module = available[name]
    if module is None:
        raise RuntimeError(f"kernel backend {name!r} is unavailable: {UNAVAILABLE.get(name, 'unknown reason')}")
    if name == "triton" and device_type != "cuda" and not _interpreted():
        raise RuntimeError(f"kernel backend 'triton' runs on CUDA tensors, not {device_type!r} ones; set "
                           f"TRITON_INTERPRET=1 (before starting Python) to run it interpreted on the CPU")
    return module
