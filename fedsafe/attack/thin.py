"""Poison spread thin: no dedicated malicious client; in every client of the poisoned benign groups a
fraction of the records is harmful (the data-poisoning ratio), so every update carries a little harm and
none stands out (the setting of "PEFT-as-an-Attack", Li et al. 2024, and of federated instruction-tuning
poisoning studies). ``fraction``: one share for every benign group, or a mapping group name -> share
(groups not named are clean). The harmful records are written by MaliciousGen (``data``) or drawn from a
data source (``dataset``, with ``dataset_args``); groups of role malicious, if any, get the same data.

    attack: {name: thin_poison, params: {fraction: 0.3, data: {instructions: seeds, filter: rule}}}
"""

from __future__ import annotations

from fedsafe.attack.base import AttackContext
from fedsafe.attack.poisoning import DataPoisoning
from fedsafe.data.sources import load_records
from fedsafe.errors import ConfigError


class ThinPoison(DataPoisoning):
    writes_data = True

    def __init__(self, fraction: float | dict[str, float], data: dict | None = None, dataset: str = "",
                 dataset_args: dict | None = None) -> None:
        super().__init__(data)
        shares = fraction if isinstance(fraction, dict) else {"*": fraction}
        for group, share in shares.items():
            if not isinstance(share, (int, float)) or not 0.0 <= share <= 1.0:
                raise ConfigError(f"attack.params.fraction for {group}: must be a share in [0, 1], got {share!r}")
        if (data is None) == (not dataset):
            raise ConfigError("attack.params: thin_poison takes its harmful records from exactly one of data "
                              "(MaliciousGen's parameters) or dataset (a data source name)")
        self.shares = {g: float(s) for g, s in shares.items()}
        self.dataset, self.dataset_args = dataset, dict(dataset_args or {})
        self.writes_data = True

    def poison_fraction(self, group: str) -> float:
        return self.shares.get(group, self.shares.get("*", 0.0))

    def make_data(self, ctx: AttackContext, num_examples: int, seed: int) -> tuple[list[dict], dict]:
        if self.writer is not None:
            return self.writer.make_data(ctx, num_examples, seed)
        return load_records(self.dataset, num_examples, seed, **self.dataset_args), {}
