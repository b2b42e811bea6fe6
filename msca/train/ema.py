"""An exponential moving average of a model's weights, kept as a state_dict.

    ema = ModelEMA(G, decay=0.999); ...; ema.update(G)   # after each optimiser step
    G_eval.load_state_dict(ema.state_dict())

Parameters are averaged (ema = decay * ema + (1 - decay) * w, with the decay warmed up as
min(decay, (1 + n) / (10 + n)) over the first updates so early weights do not dominate);
buffers (spectral-norm power-iteration vectors, running statistics) are copied, since an
average of power-iteration vectors means nothing. Stored as plain tensors, so it lives in the
training checkpoint and loads with torch.load(weights_only=True).
"""
from __future__ import annotations

import torch
import torch.nn as nn


class ModelEMA:
    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 < decay < 1.0:
            raise ValueError(f"ema_decay: expected a number in (0, 1), got {decay!r}")
        self.decay = float(decay)
        self.updates = 0
        self._params = {name for name, _ in model.named_parameters()}
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        for k, v in model.state_dict().items():
            s = self.shadow[k]
            if k in self._params and v.is_floating_point():
                s.lerp_(v.detach(), 1.0 - d)
            else:
                s.copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "updates": self.updates, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state: missing {sorted(missing)[:3]}...")
        self.decay = float(state["decay"])
        self.updates = int(state["updates"])
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)
