"""NitroGen's networks: the slimmable U-Net and its gating predictor."""
from __future__ import annotations

import torch.nn as nn

from ..config import NitroGenConfig
from .gate import Gate
from .ops import DenseOps, MacCounter, Ops
from .unet import UNet


class NitroGenModel(nn.Module):
    """Everything a checkpoint holds: `unet.*` and `gate.*`."""

    def __init__(self, config: NitroGenConfig):
        super().__init__()
        self.config = config
        self.unet = UNet(config)
        self.gate = Gate(config)

    def executor(self, record: bool):
        """The sampler's executor for this backbone (sparse.UNetExecutor's interface): dense and
        sparse forwards over its units, with its activation cache (none when `record` is False)."""
        from ..sparse import UNetExecutor          # sparse.py builds on model/: imported when used
        return UNetExecutor(self.unet, record)


__all__ = ["NitroGenModel", "UNet", "Gate", "Ops", "DenseOps", "MacCounter"]
