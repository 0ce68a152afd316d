"""The sorting-network kernels behind the coordinate-wise rules and Residual: the networks sort (0-1
principle), each window equals a straightforward torch computation (bit for bit where the arithmetic is
the same), blocks and padding do not matter, and the torch path used on GPUs agrees with the numba one."""

from __future__ import annotations

import itertools

import pytest
import torch

from fedsafe.aggregation.order import BLOCK, _torch_window, network, order_window
from fedsafe.aggregation.residual import residual_numba, residual_torch


def middle(u: torch.Tensor) -> torch.Tensor:
    """Mean of the two middles per column (torch.median gives the lower one)."""
    lower = u.median(dim=0).values
    return lower if u.shape[0] % 2 else (lower + (-u).median(dim=0).values.neg()) / 2


@pytest.mark.parametrize("n", range(1, 13))
def test_the_network_sorts_every_zero_one_input(n):
    # 0-1 principle (Knuth 5.3.4): a comparator network that sorts all 2^n 0/1 inputs sorts every input
    first, second = network(n)
    for bits in itertools.product([0, 1], repeat=n):
        wires = list(bits)
        for a, b in zip(first, second):
            if wires[b] < wires[a]:
                wires[a], wires[b] = wires[b], wires[a]
        assert wires == sorted(wires)


def test_pruning_keeps_only_steps_that_reach_the_wanted_positions():
    full, pruned = network(50)[0], network(50, (24, 25))[0]
    assert len(pruned) < len(full)
    u = torch.randn(50, 300, generator=torch.Generator().manual_seed(0))
    assert torch.equal(order_window(u, "median")[0], middle(u))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n", [1, 2, 3, 7, 20, 50])
def test_median_and_trim_match_torch(n, dtype):
    g = torch.Generator().manual_seed(n)
    d = 3 * BLOCK + 5  # three full blocks and a padded one
    u = torch.randn(n, d, generator=g, dtype=dtype)
    vector, counts = order_window(u, "median")
    assert torch.equal(vector, middle(u))  # the same arithmetic: the same bits
    assert counts.sum() == d * (1 if n % 2 else 2)
    assert torch.equal(order_window(u, "lower")[0], u.median(dim=0).values)
    ranks = u.argsort(dim=0).argsort(dim=0)
    for k in range((n - 1) // 2 + 1):
        vector, counts = order_window(u, "trim", k=k)
        kept = (ranks >= k) & (ranks < n - k)
        expected = torch.where(kept, u, 0).sum(dim=0, dtype=torch.float64) / (n - 2 * k)
        assert torch.allclose(vector.double(), expected, rtol=1e-6, atol=1e-7)
        assert torch.equal(counts, kept.sum(dim=1).double())


@pytest.mark.parametrize("t", [3, 7, 8, 40])
def test_closest_keeps_the_values_nearest_the_median(t):
    g = torch.Generator().manual_seed(t)
    u = torch.randn(t, 200, generator=g, dtype=torch.float64)
    med = middle(u)
    for k in range(1, t + 1):
        if t % 2 == 0 and k % 2:  # the two middles are equally near their mean: either may stay
            continue
        vector, counts = order_window(u, "closest", k=k)
        keep = torch.ones_like(u, dtype=torch.bool)
        if k < t:
            keep.scatter_(0, (u - med).abs().topk(t - k, dim=0).indices, False)
        assert torch.allclose(vector, torch.where(keep, u, 0).sum(dim=0) / k, atol=1e-12)
        assert torch.equal(counts, keep.sum(dim=1).double())


def test_row_subset_counts_only_those_rows():
    u = torch.tensor([[0.0], [10.0], [1.0], [2.0], [-50.0]])
    vector, counts = order_window(u, "closest", k=2, rows=torch.tensor([0, 2, 3]))
    # rows 0, 2, 3 hold 0 1 2: median 1; the two nearest are 1 and (tie 0 / 2: the upper end drops) 0
    assert vector.tolist() == [0.5]
    assert counts.tolist() == [1, 0, 1, 0, 0]


def test_ties_go_to_one_of_the_tied_clients():
    u = torch.ones(4, 10)
    vector, counts = order_window(u, "trim", k=1)
    assert torch.equal(vector, torch.ones(10))
    assert counts.sum() == 20 and bool((counts >= 0).all())


def test_half_precision_runs_in_float32():
    u = torch.randn(5, 70, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    vector, _ = order_window(u, "median")
    assert vector.dtype == torch.bfloat16
    assert torch.equal(vector, u.float().median(dim=0).values.to(torch.bfloat16))


@pytest.mark.parametrize("mode, k", [("median", 0), ("lower", 0), ("trim", 2), ("closest", 3)])
def test_torch_path_for_gpus_agrees(mode, k):
    u = torch.randn(9, 150, generator=torch.Generator().manual_seed(2))
    rows = torch.arange(9)
    numba_vector, numba_counts = order_window(u, mode, k=k)
    torch_vector, torch_counts = _torch_window(u, rows, 9, mode, k)
    assert torch.allclose(numba_vector, torch_vector, atol=1e-6)
    assert torch.equal(numba_counts, torch_counts)


def test_bad_windows_raise():
    with pytest.raises(ValueError, match="needs t > 2k"):
        order_window(torch.zeros(4, 3), "trim", k=2)
    with pytest.raises(ValueError, match="1 <= k <= t"):
        order_window(torch.zeros(4, 3), "closest", k=5)
    with pytest.raises(ValueError, match="mode must be one of"):
        order_window(torch.zeros(4, 3), "mean")


@pytest.mark.parametrize("n", [3, 4, 7, 20])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_residual_kernel_matches_the_torch_maths(n, dtype):
    u = torch.randn(n, BLOCK + 9, generator=torch.Generator().manual_seed(n), dtype=dtype)
    totals, restricted = residual_numba(u, 2.0, 0.05)
    expected_totals, expected_restricted = residual_torch(u, 2.0, 0.05, shard_size=17)
    assert torch.equal(restricted, expected_restricted)  # kept values and line values: the same bits
    assert torch.allclose(totals, expected_totals, rtol=1e-12, atol=1e-12)  # sums in another order


def test_a_huge_middle_value_is_returned_as_it_is():
    u = torch.tensor([[3e38], [-1.0], [3.1e38]])  # odd n: the median is the middle value itself, not (v + v) / 2
    assert torch.equal(order_window(u, "median")[0], u[0])


def test_without_numba_every_rule_takes_the_torch_path_with_the_same_values():
    """A machine with torch alone (a GPU box) imports the rules and gets the same aggregates."""
    import json
    import subprocess
    import sys

    from fedsafe.aggregation import aggregate
    from tests.conftest import ROOT

    code = """
import json, sys
sys.modules["numba"] = None  # import numba fails
import torch
from fedsafe.aggregation import aggregate
from fedsafe.aggregation import order
assert order.numba is None
u = torch.randn(7, 90, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
print(json.dumps({r: aggregate(r, u, num_malicious=1).vector.tolist()
                  for r in ("median", "trimmed_mean", "bulyan", "residual")}))
"""
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                         check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    without = json.loads(out.stdout)
    u = torch.randn(7, 90, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    for rule, vector in without.items():
        assert torch.allclose(torch.tensor(vector, dtype=torch.float64),
                              aggregate(rule, u, num_malicious=1).vector, atol=1e-12), rule
