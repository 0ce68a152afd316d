"""Data poisoning (the paper's attack model) and model replacement by a scaled update.

``data_poisoning``: malicious clients run the same local SFT as benign ones on unaligned data, which their
group's data source supplies (``clients[].dataset``, e.g. ``beavertails`` or ``toy_malicious``); every hook
is neutral. ``scale_update``: the same, and the uploaded delta is multiplied by ``factor`` (model
replacement, Bagdasaryan et al. 2020, "How To Backdoor Federated Learning").
"""

from __future__ import annotations

import torch

from fedsafe.attack.base import NoHooks
from fedsafe.errors import ConfigError


class DataPoisoning(NoHooks):
    pass


class ScaleUpdate(NoHooks):
    def __init__(self, factor: float = 10.0) -> None:
        if factor <= 0:
            raise ConfigError(f"attack.params.factor must be > 0, got {factor}")
        self.factor = float(factor)

    def on_update(self, delta: torch.Tensor) -> torch.Tensor:
        return delta * self.factor
