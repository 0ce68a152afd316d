"""The server rule's typed config (``aggregation``): a registered rule, its parameters (checked by probing
the rule in the preflight), the server optimizer and the coordinator's bounds. Plain data: no torch."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fedsafe.errors import check as _check
from fedsafe.specs import ServerOptConfig

FACTORS = "factors"  # the default: the A and B factors averaged separately
MODES = (FACTORS, "stack", "svd", "exact")  # how LoRA adapters combine (fedsafe.aggregation.lora_modes)
PRODUCT_MODES = MODES[1:]  # the rule acts on the products of the factors
FOLD_MODES = ("stack", "exact")  # they fold into frozen components beyond lora.r


@dataclass
class AggregationConfig:
    """Server rule by registered name (``fedsafe.aggregation``), its keyword parameters, and the server
    optimizer applied after it (``server_opt``).

    ``num_malicious``: the f the rule is told; -1 = round(clients_per_round * malicious / K), as in
    docs/method.md#aggregation-rules.
    ``root_dataset``: the server's root data (rules that need a server update, such as FLTrust).
    ``mode``: how the clients' LoRA adapters combine (docs/method.md#lora-aggregation-modes): ``factors`` (A and B averaged separately, as FedIT; padded where ranks differ), ``stack``
    (FLoRA), ``svd`` (FlexLoRA), ``exact`` (FedEx-LoRA). ``fold_rank``: components beyond lora.r that hold what
    ``stack`` and ``exact`` fold into the frozen weights (0 = auto: rounds x (clients_per_round + 1) x lora.r, at
    most 512 - lora.r); a fold of higher rank is cut to its best approximation and the error recorded.
    ``max_update_norm``: the coordinator rejects an update whose L2 norm exceeds it (0 = no bound); updates
    with NaN/Inf or the wrong shape are always rejected. ``min_updates``: a round whose accepted updates
    are fewer leaves the global adapter unchanged (recorded in the round's metrics).
    """

    rule: str = "fedavg"
    params: dict[str, Any] = field(default_factory=dict)
    num_malicious: int = -1
    server_opt: ServerOptConfig = field(default_factory=ServerOptConfig)
    root_dataset: str = ""
    root_dataset_args: dict[str, Any] = field(default_factory=dict)
    root_examples: int = 100
    max_update_norm: float = 0.0
    min_updates: int = 1
    mode: str = FACTORS
    fold_rank: int = 0

    def __post_init__(self) -> None:
        _check(self.mode in MODES, f"aggregation.mode must be one of {list(MODES)}, got {self.mode!r}")
        _check(self.fold_rank >= 0, f"aggregation.fold_rank must be >= 0 (0 = auto), got {self.fold_rank}")
        _check(self.max_update_norm >= 0, f"aggregation.max_update_norm must be >= 0 (0 = no bound), got "
                                          f"{self.max_update_norm}")
        _check(self.min_updates >= 1, f"aggregation.min_updates must be >= 1, got {self.min_updates}")

        _check(self.num_malicious >= -1, f"aggregation.num_malicious must be >= 0 (or -1 = auto), got {self.num_malicious}")
        _check(self.root_examples >= 1, f"aggregation.root_examples must be >= 1, got {self.root_examples}")
