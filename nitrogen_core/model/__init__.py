"""NitroGen's networks: the backbones (slimmable U-Net, slimmable transformer) and the gating predictor."""
from __future__ import annotations

import torch.nn as nn

from ..config import NitroGenConfig
from ..errors import NitroGenInputError
from .dit import DiT
from .gate import Gate
from .ops import DenseOps, MacCounter, Ops
from .unet import UNet


class NitroGenModel(nn.Module):
    """Everything a checkpoint holds: the backbone named by `config.backbone` (`unet.*` or `dit.*`)
    and the gate (`gate.*`)."""

    def __init__(self, config: NitroGenConfig):
        super().__init__()
        self.config = config
        if config.backbone == "dit":
            self.dit = DiT(config)
        else:
            self.unet = UNet(config)
        self.gate = Gate(config)

    @property
    def net(self) -> nn.Module:
        """The backbone, whichever it is: forward(x, t, labels, width) -> prediction (B, C, H, W)."""
        return self.dit if self.config.backbone == "dit" else self.unet

    def executor(self, record: bool, kv_forecast: float = 0.0):
        """The sampler's executor for this backbone (sparse.UNetExecutor's interface): dense and
        sparse forwards over its units, with its activation cache (none when `record` is False).
        kv_forecast: the transformer's forecast of the keys/values of tokens a step leaves out."""
        if self.config.backbone == "dit":
            from ..token_sparse import DiTExecutor     # built on model/: imported when used
            return DiTExecutor(self.dit, record, kv_forecast)
        if kv_forecast:
            raise NitroGenInputError(f"kv_forecast={kv_forecast} applies to the transformer backbone; "
                                     f"this model is a {self.config.backbone!r} (use 0)")
        from ..sparse import UNetExecutor
        return UNetExecutor(self.unet, record)


__all__ = ["NitroGenModel", "UNet", "DiT", "Gate", "Ops", "DenseOps", "MacCounter"]
