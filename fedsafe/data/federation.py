"""Clients, their shards and who trains when (docs/method.md#federated-setup).

Client ids follow the order of the config's groups (benign first in the paper's setting). Each group's
data set is shuffled once and cut into iid shards of ``examples_per_client`` (``make_shards``), or with
``federation.dirichlet_alpha`` into non-iid shards over the records' categories (``dirichlet_shards``);
poison spread thin replaces a share of every shard's records by harmful ones (``spread_poison``); each round the server samples
``sorted(random.sample(range(K), s))``, seeded by (seed, round) (``federation.sampling: seeded``) or by the
round alone, exactly as the authors' code (``paper``: every seed then shares one attack schedule), or
stratified by role (``balanced``, ``sample_balanced``: every round holds the attackers' share of its
clients, and the federation without attackers samples the same benign clients); a sampled client trains
on a fresh random subset of its shard (batch size x local steps examples), drawn with the same seed
(``paper``: the round's, as the authors' code).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import numpy as np

from fedsafe.errors import ConfigError
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


def dirichlet_shards(categories: list[str], num_clients: int, per_client: int, alpha: float,
                     seed: int) -> list[list[int]]:
    """Disjoint shards of ``per_client`` record indices whose category mix is non-iid: client k's shares
    of the categories are drawn from Dirichlet(``alpha`` * the categories' global shares) (Hsu, Qi and
    Brown 2019, "Measuring the Effects of Non-Identical Data Distribution for Federated Visual
    Classification"); large ``alpha`` gives the global mix (iid), small ``alpha`` one category per client.
    Its records are drawn by those shares from what the clients before it left; when a category runs
    out, the rest comes from the others in proportion to the client's shares."""
    need = num_clients * per_client
    if len(categories) < need:
        raise ValueError(f"a group of {num_clients} clients x {per_client} examples needs {need} records, the data "
                         f"set has {len(categories)}; lower federation.examples_per_client or give it more data")
    if alpha <= 0:
        raise ValueError(f"dirichlet alpha must be > 0, got {alpha}")
    rng = np.random.default_rng(seed)
    names = sorted(set(categories))
    pools = [[i for i, c in enumerate(categories) if c == name] for name in names]
    for pool in pools:
        rng.shuffle(pool)
    prior = np.array([len(p) for p in pools], dtype=float) / len(categories)
    shards = []
    for _ in range(num_clients):
        shares = rng.dirichlet(np.maximum(alpha * prior, 1e-300))
        shard: list[int] = []
        while len(shard) < per_client:
            left = np.array([len(p) for p in pools], dtype=float)
            weights = np.where(left > 0, shares, 0.0)
            weights = weights / weights.sum() if weights.sum() > 0 else left / left.sum()
            counts = np.minimum(rng.multinomial(per_client - len(shard), weights), left.astype(int))
            for pool, count in zip(pools, counts):
                shard += [pool.pop() for _ in range(int(count))]
        shards.append(shard)
    return shards


def spread_poison(shards: list[list[dict]], harmful: list[dict], fraction: float, seed: int) -> list[list[dict]]:
    """Each shard with ``round(fraction * len(shard))`` of its records, at random positions, replaced by the
    next records of ``harmful`` (each harmful record used once); the shards given are not changed."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"poison fraction must be in [0, 1], got {fraction}")
    rng = random.Random(seed)
    counts = [round(fraction * len(s)) for s in shards]
    if sum(counts) > len(harmful):
        raise ValueError(f"poisoning {sum(counts)} records needs as many harmful records, got {len(harmful)}")
    poisoned, used = [], 0
    for shard, count in zip(shards, counts):
        shard = list(shard)
        for position in rng.sample(range(len(shard)), count):
            shard[position], used = harmful[used], used + 1
        poisoned.append(shard)
    return poisoned


def sample_clients(num_clients: int, per_round: int, round_idx: int, seed: int | None = None) -> list[int]:
    """The clients of round ``round_idx``: ``sorted(random.sample(range(K), s))`` with ``random.seed(round)``
    (the authors' sampling) when ``seed`` is None, else seeded by (seed, round)."""
    rng = random.Random(round_idx if seed is None else derive_seed(seed, round_idx, Salt.SAMPLING))
    return sorted(rng.sample(range(num_clients), per_round))


def attackers_in_round(round_idx: int, per_round: int, share: float) -> int:
    """How many of round ``round_idx``'s ``per_round`` clients are attackers when the federation's attackers
    are ``share`` of its clients (``sample_balanced``): the running total after each round is the expected
    count rounded half up, so rounds 0..r hold round((r + 1) * per_round * share) attackers in all (with
    3 a round and a share of 0.3: 1, 1, 1, 1, 1, 0, 1, ... ; 9 in 10 rounds)."""
    total = lambda r: math.floor(r * per_round * share + 0.5)  # noqa: E731
    return total(round_idx + 1) - total(round_idx)


def sample_balanced(roles: list[str], per_round: int, round_idx: int, seed: int) -> list[int]:
    """The clients of round ``round_idx``, stratified by role: ``attackers_in_round`` malicious clients drawn
    from the malicious ones, the rest from the benign ones, both orders seeded by (seed, round). A
    federation without malicious clients draws the same benign order, so it samples the same benign clients
    as the attacked one and, where that one has an attacker, the next benign client: an attacked arm and its
    clean arm differ by the attackers' uploads alone (common random numbers)."""
    benign = [i for i, r in enumerate(roles) if r != "malicious"]
    malicious = [i for i, r in enumerate(roles) if r == "malicious"]
    if per_round > len(roles):
        raise ValueError(f"{per_round} clients per round from a federation of {len(roles)}")
    rng = random.Random(derive_seed(seed, round_idx, Salt.SAMPLING))
    benign_order, malicious_order = rng.sample(benign, len(benign)), rng.sample(malicious, len(malicious))
    attackers = min(attackers_in_round(round_idx, per_round, len(malicious) / len(roles)), len(malicious))
    picked = malicious_order[:attackers] + benign_order[:per_round - attackers]
    picked += malicious_order[attackers:attackers + per_round - len(picked)]  # too few benign clients
    return sorted(picked)


def round_subset(shard: list[int], size: int, seed: int | None, round_idx: int, client_id: int) -> list[int]:
    """The records a client trains on this round: ``size`` drawn without replacement from its shard
    (with replacement only when the shard is smaller than ``size``), seeded by (seed, round, client), or
    when ``seed`` is None by the round alone, as the authors' ``random.seed(round)`` before every client's
    draw (clients of one round then take the same positions of their shards)."""
    rng = random.Random(round_idx if seed is None else derive_seed(seed, round_idx, client_id))
    if size <= len(shard):
        return rng.sample(shard, size)
    return [rng.choice(shard) for _ in range(size)]


def check_partition_key(key: str, group: str, records: list[dict]) -> None:
    """With Dirichlet shards, every record of a client group must hold the field ``key``
    (``federation.partition_key``)."""
    if missing := sum(key not in r for r in records):
        raise ConfigError(f"federation.partition_key={key!r}: {missing} record(s) of clients[{group}] have no such "
                          "field; use source (every data source sets it) or a field the records hold")
