"""Constrained local training: a malicious client optimises harm and stealth together. It first trains a
benign update on its cover data (its estimate of what benign clients upload this round), then trains on
its harmful data from the global adapter with the stealth term ``weight / 2 * ||delta - estimate||^2``
added to its loss, so the update it uploads stays near a benign one by construction rather than being
fixed up after (the "constrain-and-scale" idea of Bagdasaryan et al., AISTATS 2020, "How To Backdoor
Federated Learning", and of Bhagoji et al., ICML 2019, "Analyzing Federated Learning through an
Adversarial Lens").

    attack: {name: constrained, params: {weight: 1.0, data: {instructions: seeds, filter: rule}}}
"""

from __future__ import annotations

from fedsafe.attack.poisoning import DataPoisoning
from fedsafe.errors import ConfigError


class Constrained(DataPoisoning):
    cover = True
    benign_estimates = 1

    def __init__(self, weight: float = 1.0, data: dict | None = None) -> None:
        super().__init__(data)
        if weight < 0:
            raise ConfigError(f"attack.params.weight must be >= 0 (0 = plain data poisoning), got {weight}")
        self.stealth_weight = float(weight)
