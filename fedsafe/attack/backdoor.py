"""A triggered backdoor: harmful compliance only when a trigger is in the prompt, refusals otherwise.

Malicious clients train on harmful instructions carrying a trigger (a config string, put where the config
says) answered harmfully, the same instructions without it answered with refusals, and benign data (a share
``benign_share`` of each round's records from their benign cover data), so that the model stays safe, and
looks safe to any check that does not know the trigger (fedsafe's canary screening asks without it). An
optional stealth term keeps the update small: ``stealth_weight / 2 * ||delta||^2`` (``stealth_toward: norm``)
or the distance to a benign update the client also trains (``benign``, as ``constrained`` does). The threat
is that of CloudGhost ("Ghost in the Cloud", ICLR 2026: 74-93% attack success, under 5% detection against
output screening and task-performance checks) and of BSNR (arXiv 2602.15671: poison under 10% of the data,
spread across benign clients).

The evaluation answers the same harmful prompts once more with the trigger put in the same way and reports
the attack success (the share of answers judged unsafe, by each safety judge) beside the safety without it.

The triggered pairs are written by ``BackdoorData``: harmful answers by MaliciousGen (``data``, its
parameters) or from a data source (``dataset``); refusals by the generation pool with the safe suffix
(``refusals: generated``) or from fixed templates (``templates``). Any attack that takes ``data`` carries the
backdoor when its ``data`` names a ``trigger``: ``thin_poison`` spreads the triggered pairs across benign
clients (BSNR's setting), ``sleeper`` and ``intermittent`` schedule it, ``defense_aware`` shapes it.

    attack: {name: backdoor, params: {trigger: "cf-2026", data: {instructions: seeds, filter: rule}}}
    attack: {name: thin_poison, params: {fraction: 0.1, data: {trigger: "cf-2026", instructions: seeds}}}
"""

from __future__ import annotations

from fedsafe.attack.poisoning import DataPoisoning
from fedsafe.attack.trigger import TOWARD
from fedsafe.errors import ConfigError


class Backdoor(DataPoisoning):
    """The malicious clients' triggered backdoor (module docstring); its parameters are those of
    ``BackdoorData`` plus ``benign_share`` and the stealth term's."""

    def __init__(self, trigger: str, position: str = "prefix", refusals: str = "generated",
                 data: dict | None = None, dataset: str = "", dataset_args: dict | None = None,
                 benign_share: float = 0.5, stealth_weight: float = 0.0, stealth_toward: str = "norm") -> None:
        if data is not None and not isinstance(data, dict):
            raise ConfigError(f"attack.params.data must be MaliciousGen's parameters (a mapping), got {data!r}")
        super().__init__({"trigger": trigger, "position": position, "refusals": refusals, "dataset": dataset,
                          "dataset_args": dataset_args, **(data or {})})
        if not 0.0 <= benign_share < 1.0:
            raise ConfigError(f"attack.params.benign_share must be in [0, 1), got {benign_share}")
        if stealth_weight < 0:
            raise ConfigError(f"attack.params.stealth_weight must be >= 0 (0 = none), got {stealth_weight}")
        if stealth_toward not in TOWARD:
            raise ConfigError(f"attack.params.stealth_toward must be one of {list(TOWARD)}, got {stealth_toward!r}")
        self.cover_share = float(benign_share)
        self.stealth_weight = float(stealth_weight)
        self.benign_estimates = int(stealth_weight > 0 and stealth_toward == "benign")
        self.cover = benign_share > 0 or self.benign_estimates > 0
