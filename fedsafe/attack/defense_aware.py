"""Defense-aware update shaping: malicious clients that know the server's rule shape what they upload so
that the rule keeps it, keeping as much of the harmful direction as the constraint allows
(``fedsafe.attack.shaping`` holds the math and the papers).

After local training on harmful data, each attacking client also trains ``estimates`` benign updates on
its cover data (``reference: colluders``; the colluders of a round pool theirs), or takes the previous
change of the global adapter as the one benign estimate (``reference: previous_step``; no extra training,
though an aggregate is shorter than one client's update). Then, in this order:

- ``alie``: per coordinate into mean +- z std of the estimates (``z``: null = Baruch et al.'s z_max for
  the round's clients and attackers), A Little Is Enough; needs ``reference: colluders``;
- ``cosine``: turned toward the estimates' mean until its cosine reaches ``min_cosine`` (null = the
  smallest cosine of an estimate to their mean: no less similar than the least similar benign update;
  0 with ``reference: previous_step``);
- ``norm``: rescaled to the estimates' median norm.

``cosine`` keeps the norm and ``norm`` keeps the cosine, so both hold together; ``alie`` stands alone.

    attack: {name: defense_aware, params: {constraints: [alie], data: {instructions: seeds}}}
"""

from __future__ import annotations

import math

import torch

from fedsafe.attack.base import RoundView
from fedsafe.attack.poisoning import DataPoisoning
from fedsafe.attack.shaping import alie_clamp, alie_z, cosine_bound, match_norm
from fedsafe.errors import ConfigError

CONSTRAINTS = ("alie", "cosine", "norm")
REFERENCES = ("colluders", "previous_step")


def shape(update: torch.Tensor, estimates: torch.Tensor, constraints: list[str], z: float | None,
          min_cosine: float | None, attackers: int, num_sampled: int) -> torch.Tensor:
    """``update`` under ``constraints`` (in the order alie, cosine, norm) against the benign ``estimates``
    ``[k, d]``; unchanged when there is no estimate."""
    if estimates.shape[0] == 0:
        return update
    if "alie" in constraints and estimates.shape[0] >= 2:
        band = z if z is not None else alie_z(num_sampled, attackers) if attackers < num_sampled else math.inf
        if band != math.inf:  # a malicious majority needs no cover
            update = alie_clamp(update, estimates, band)
    mean = estimates.mean(dim=0)
    if "cosine" in constraints:
        bound = min_cosine
        if bound is None:
            bound = float(torch.cosine_similarity(estimates.double(), mean.double()[None], dim=1).min()) if estimates.shape[0] >= 2 else 0.0
        update = cosine_bound(update, mean, bound)
    if "norm" in constraints:
        update = match_norm(update, float(estimates.double().norm(dim=1).median()))
    return update


class DefenseAware(DataPoisoning):
    cover = True

    def __init__(self, constraints: list[str], reference: str = "colluders", estimates: int = 2,
                 z: float | None = None, min_cosine: float | None = None, data: dict | None = None) -> None:
        super().__init__(data)
        constraints = list(constraints)
        bad = sorted(set(constraints) - set(CONSTRAINTS))
        if not constraints or bad:
            raise ConfigError(f"attack.params.constraints must name some of {list(CONSTRAINTS)}, got {constraints}")
        if "alie" in constraints and len(constraints) > 1:
            raise ConfigError("attack.params.constraints: alie places every coordinate itself and stands alone; "
                              f"got {constraints}")
        if reference not in REFERENCES:
            raise ConfigError(f"attack.params.reference must be one of {list(REFERENCES)}, got {reference!r}")
        if reference == "previous_step" and "alie" in constraints:
            raise ConfigError("attack.params: alie needs two or more benign estimates per round; use "
                              "reference=colluders")
        if reference == "colluders" and estimates < 1:
            raise ConfigError(f"attack.params.estimates must be >= 1 with reference=colluders, got {estimates}")
        if z is not None and z < 0:
            raise ConfigError(f"attack.params.z must be >= 0 (or null = chosen for the round), got {z}")
        if min_cosine is not None and not -1.0 <= min_cosine <= 1.0:
            raise ConfigError(f"attack.params.min_cosine must be in [-1, 1] (or null), got {min_cosine}")
        self.constraints, self.reference, self.z, self.min_cosine = constraints, reference, z, min_cosine
        self.benign_estimates = int(estimates) if reference == "colluders" else 0
        self.cover = reference == "colluders"
        self.uses_previous_step = reference == "previous_step"

    def collude(self, view: RoundView) -> dict[int, torch.Tensor]:
        estimates = view.estimates
        if self.reference == "previous_step":
            d = next(iter(view.deltas.values())).numel() if view.deltas else 0
            estimates = view.previous_step[None] if view.previous_step is not None else torch.zeros(0, d)
        return {cid: shape(delta, estimates.to(delta.dtype), self.constraints, self.z, self.min_cosine,
                           len(view.deltas), view.num_sampled)
                for cid, delta in view.deltas.items()}
