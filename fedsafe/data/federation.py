"""Clients, their shards and who trains when (docs/method.md#federated-setup).

Client ids follow the order of the config's groups (benign first in the paper's setting). Each group's
data set is shuffled once and cut into iid shards of ``examples_per_client``; each round the server samples
``sorted(random.sample(range(K), s))``, seeded by (seed, round) (``federation.sampling: seeded``) or by the
round alone, exactly as the authors' code (``paper``: every seed then shares one attack schedule); a
sampled client trains on a fresh random subset of its shard (batch size x local steps examples), drawn
with the same seed (``paper``: the round's, as the authors' code).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from fedsafe.seeding import Salt, derive_seed


@dataclass(frozen=True)
class ClientSpec:
    client_id: int
    group: str
    role: str
    index_in_group: int


def build_clients(groups: list[tuple[str, str, int]]) -> list[ClientSpec]:
    """``groups``: (name, role, count) in config order -> one spec per client, ids 0..K-1."""
    clients: list[ClientSpec] = []
    for name, role, count in groups:
        for i in range(count):
            clients.append(ClientSpec(client_id=len(clients), group=name, role=role, index_in_group=i))
    return clients


def make_shards(num_records: int, num_clients: int, per_client: int, seed: int) -> list[list[int]]:
    """Shuffle ``range(num_records)`` with ``seed`` and cut ``num_clients`` disjoint shards of ``per_client``."""
    need = num_clients * per_client
    if num_records < need:
        raise ValueError(
            f"a group of {num_clients} clients x {per_client} examples needs {need} records, the data set "
            f"has {num_records}; lower federation.examples_per_client or give the group more data"
        )
    order = list(range(num_records))
    random.Random(seed).shuffle(order)
    return [order[i * per_client:(i + 1) * per_client] for i in range(num_clients)]


def sample_clients(num_clients: int, per_round: int, round_idx: int, seed: int | None = None) -> list[int]:
    """The clients of round ``round_idx``: ``sorted(random.sample(range(K), s))`` with ``random.seed(round)``
    (the authors' sampling) when ``seed`` is None, else seeded by (seed, round)."""
    rng = random.Random(round_idx if seed is None else derive_seed(seed, round_idx, Salt.SAMPLING))
    return sorted(rng.sample(range(num_clients), per_round))


def round_subset(shard: list[int], size: int, seed: int | None, round_idx: int, client_id: int) -> list[int]:
    """The records a client trains on this round: ``size`` drawn without replacement from its shard
    (with replacement only when the shard is smaller than ``size``), seeded by (seed, round, client), or
    when ``seed`` is None by the round alone, as the authors' ``random.seed(round)`` before every client's
    draw (clients of one round then take the same positions of their shards)."""
    rng = random.Random(round_idx if seed is None else derive_seed(seed, round_idx, client_id))
    if size <= len(shard):
        return rng.sample(shard, size)
    return [rng.choice(shard) for _ in range(size)]
