"""When malicious clients attack, and collusion by one shared update.

- ``sleeper``: a malicious client trains like a benign one (on its cover data) until round ``start_round``,
  then on its harmful data: safety built up in the first rounds is spent late, when robust rules that keep
  history (FoolsGold) have learnt to trust it.
- ``intermittent``: it attacks the first time it is sampled and every ``every``-th time after; other times
  it trains like a benign client (a low duty cycle, less for any per-round check to see).
- ``sybil``: every attacking client of a round uploads the same update, the mean of theirs (the sybils of
  FoolsGold's threat model, Fung, Yoon and Beschastnikh, RAID 2020, "The Limitations of Federated Learning
  in Sybil Settings"); with one attacking client the upload is its own.

Each takes ``data`` as ``data_poisoning`` does.

    attack: {name: sleeper, params: {start_round: 3, data: {instructions: seeds, filter: rule}}}
"""

from __future__ import annotations

import torch

from fedsafe.attack.base import RoundView
from fedsafe.attack.poisoning import DataPoisoning
from fedsafe.errors import ConfigError


class Sleeper(DataPoisoning):
    cover = True

    def __init__(self, start_round: int, data: dict | None = None) -> None:
        super().__init__(data)
        if start_round < 0:
            raise ConfigError(f"attack.params.start_round must be >= 0, got {start_round}")
        self.start_round = int(start_round)

    def strikes(self, round_idx: int, times_sampled: int) -> bool:
        return round_idx >= self.start_round


class Intermittent(DataPoisoning):
    cover = True

    def __init__(self, every: int, data: dict | None = None) -> None:
        super().__init__(data)
        if every < 1:
            raise ConfigError(f"attack.params.every must be >= 1 (1 = every time sampled), got {every}")
        self.every = int(every)

    def strikes(self, round_idx: int, times_sampled: int) -> bool:
        return times_sampled % self.every == 0


class Sybil(DataPoisoning):
    def collude(self, view: RoundView) -> dict[int, torch.Tensor]:
        if not view.deltas:
            return {}
        shared = torch.stack(list(view.deltas.values())).mean(dim=0)
        return {cid: shared for cid in view.deltas}
