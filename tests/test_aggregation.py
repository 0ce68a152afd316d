"""Aggregation rules on plain tensors: the registry, a hand-computed case for every rule (the
arithmetic is in the comments), invariants, the errors raised when a rule's assumption is broken, and the
server optimizers."""

from __future__ import annotations

import math

import pytest
import torch

from fedsafe.aggregation import (
    AggregationContext,
    aggregate,
    available_rules,
    register_rule,
)
from fedsafe.aggregation.server_opt import ServerOptConfig, init_state, server_step


def test_fedavg_by_hand():
    updates = torch.tensor([[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]])
    result = aggregate("fedavg", updates, torch.tensor([1.0, 1.0, 2.0]))
    assert result.vector.tolist() == [3.5, 4.5]  # (1 + 3 + 2*5) / 4, (2 + 4 + 2*6) / 4
    assert result.weights.tolist() == [0.25, 0.25, 0.5]


def test_fedavg_uniform_without_weights_and_inputs_untouched():
    updates = torch.tensor([[1.0, -2.0], [3.0, 8.0]])
    copy = updates.clone()
    assert aggregate("fedavg", updates).vector.tolist() == [2.0, 3.0]
    assert torch.equal(updates, copy)


def test_fedavg_is_permutation_invariant():
    g = torch.Generator().manual_seed(0)
    updates, weights = torch.randn(5, 7, generator=g), torch.rand(5, generator=g) + 0.1
    perm = torch.tensor([3, 0, 4, 1, 2])
    a = aggregate("fedavg", updates, weights).vector
    assert torch.allclose(a, aggregate("fedavg", updates[perm], weights[perm]).vector, atol=1e-6)


def test_unknown_rule_lists_known_ones():
    with pytest.raises(KeyError, match="fedavg"):
        aggregate("krumm", torch.zeros(2, 2))


def test_bad_shapes_and_weights_raise():
    with pytest.raises(ValueError, match=r"\[n, d\]"):
        aggregate("fedavg", torch.zeros(3))
    with pytest.raises(ValueError, match="one per update"):
        aggregate("fedavg", torch.zeros(3, 2), torch.ones(2))
    with pytest.raises(ValueError, match="non-negative"):
        aggregate("fedavg", torch.zeros(2, 2), torch.tensor([1.0, -1.0]))


def test_duplicate_registration_raises():
    assert "fedavg" in available_rules()
    with pytest.raises(ValueError, match="twice"):
        register_rule("fedavg")(lambda u, w: None)


def t(rows):
    return torch.tensor(rows, dtype=torch.float64)


# Five 2-d updates, the last an outlier. Column 0 sorted: 0 1 2 4 30; column 1 sorted: 0 1 3 5 20.
U5 = t([[0, 3], [1, 0], [2, 5], [4, 1], [30, 20]])


def check(result, vector, weights, atol=1e-6):
    assert torch.allclose(result.vector, t(vector), atol=atol), result.vector
    assert torch.allclose(result.weights.to(torch.float64), t(weights), atol=atol), result.weights


def test_median_true_and_lower():
    check(aggregate("median", U5), [2, 3], [0.5, 0, 0.5, 0, 0])  # col 0 -> client 2, col 1 -> client 0
    four = U5[:4]  # col 0: 0 1 2 4 -> 1.5 (lower 1); col 1: 0 1 3 5 -> 2 (lower 1)
    check(aggregate("median", four), [1.5, 2], [0.25, 0.25, 0.25, 0.25])
    check(aggregate("median", four, lower=True), [1, 1], [0, 0.5, 0, 0.5])


def test_trimmed_mean_by_count_and_ratio():
    # drop one per side: col 0 mean(1, 2, 4) = 7/3 (clients 1,2,3); col 1 mean(1, 3, 5) = 3 (clients 3,0,2)
    expected, share = [7 / 3, 3], [1 / 6, 1 / 6, 2 / 6, 2 / 6, 0]
    check(aggregate("trimmed_mean", U5, num_trim=1), expected, share)
    check(aggregate("trimmed_mean", U5, trim_ratio=0.2), expected, share)
    check(aggregate("trimmed_mean", U5, num_malicious=1), expected, share)


# Squared distances of U5: d01=10 d02=8 d03=20 d12=26 d13=10 d23=20; to client 4: 1189 1241 1009 1037.
# Krum scores (2 nearest, n - f - 2 = 2): c0 8+10=18, c1 10+10=20, c2 8+20=28, c3 10+20=30, c4 2046.
def test_krum_returns_the_winner_alone():
    check(aggregate("krum", U5, num_malicious=1), [0, 3], [1, 0, 0, 0, 0])


def test_multi_krum_averages_the_best_m():
    check(aggregate("multi_krum", U5, num_malicious=1, num_selected=2), [0.5, 1.5], [0.5, 0.5, 0, 0, 0])
    check(aggregate("multi_krum", U5, num_malicious=1), [7 / 4, 9 / 4], [0.25] * 4 + [0])  # m = n - f


def test_krum_paper_variant():
    # Euclidean: c0's 3 nearest are sqrt8 + sqrt10 + sqrt20 = 10.46, the lowest score; it and its 3 nearest
    check(aggregate("krum_paper", U5, num_malicious=1), [7 / 4, 9 / 4], [0.25] * 4 + [0])
    # n=3, f=1 as in the paper: the closest pair is averaged, the far one dropped
    check(aggregate("krum_paper", t([[0, 0], [1, 0], [5, 5]]), num_malicious=1), [0.5, 0], [0.5, 0.5, 0])


def test_bulyan():
    # n=7, f=1: theta=5 by repeated Krum: scores (k=4) pick 3 (107), then 7 (k=3: 99), then 2 (k=2: 104),
    # then two of {0, 12, 20}; the beta=3 values closest to the median 3 are 3, 2, 0 either way -> 5/3.
    u = t([[0], [2], [3], [7], [12], [20], [100]])
    check(aggregate("bulyan", u, num_malicious=1), [5 / 3], [1 / 3, 1 / 3, 1 / 3, 0, 0, 0, 0])


def test_geometric_median():
    check(aggregate("geometric_median", t([[0], [1], [10]])), [1], [0, 1, 0], atol=1e-4)  # 1-d: the median
    square = t([[0, 0], [2, 0], [0, 2], [2, 2]])
    assert torch.allclose(aggregate("geometric_median", square).vector, t([1, 1]), atol=1e-6)


def test_norm_bound_and_centered_clipping_and_dp():
    u = t([[3, 4], [0, 0.5]])  # norms 5 and 0.5; clipped to 1: [0.6, 0.8] and [0, 0.5]
    check(aggregate("norm_bound", u, max_norm=1.0), [0.3, 0.65], [0.1, 0.5])
    check(aggregate("centered_clipping", u, tau=1.0), [0.3, 0.65], [0.1, 0.5])
    check(aggregate("dp_fedavg", u, clip_norm=1.0, noise_multiplier=0.0), [0.3, 0.65], [0.1, 0.5])
    # second clipping iteration from v1 = [0.3, 0.65]: u0 - v1 = [2.7, 3.35] is clipped to unit norm,
    # u1 - v1 = [-0.3, -0.15] is kept; v2 = v1 + mean of the two
    r = math.hypot(2.7, 3.35)
    v2 = [0.3 + (2.7 / r - 0.3) / 2, 0.65 + (3.35 / r - 0.15) / 2]
    assert torch.allclose(aggregate("centered_clipping", u, tau=1.0, num_iters=2).vector, t(v2), atol=1e-9)


def test_dp_noise_has_the_stated_scale_and_is_seeded():
    u = torch.zeros(4, 200_000, dtype=torch.float64)
    a = aggregate("dp_fedavg", u, clip_norm=2.0, noise_multiplier=1.5, seed=3, round_idx=1).vector
    assert float(a.std()) == pytest.approx(1.5 * 2.0 / 4, rel=0.02)
    assert torch.equal(a, aggregate("dp_fedavg", u, clip_norm=2.0, noise_multiplier=1.5, seed=3, round_idx=1).vector)
    assert not torch.equal(a, aggregate("dp_fedavg", u, clip_norm=2.0, noise_multiplier=1.5, seed=3, round_idx=2).vector)


# FoolsGold: clients 0 and 1 are near-copies (cos 0.995), 2 and 3 are honest. After pardoning, the maximum
# similarities are 0.995, 0.995, 0.00995, 0, so wv = 0.005, 0.005, 0.990, 1 -> logit -> 0, 0, 1, 1.
SYBILS = t([[1, 0], [1, 0.1], [0, 1], [-1, 0]])


def test_foolsgold_original_and_paper_variant():
    check(aggregate("foolsgold", SYBILS), [-1, 1], [0, 0, 1, 1])  # sum of a_i u_i
    check(aggregate("foolsgold", SYBILS, variant="paper"), [-0.5, 0.5], [0, 0, 0.5, 0.5])  # mean over a_i > 0
    # with history, similarity is judged on the histories: here clients 1 and 2 look like sybils
    history = SYBILS[[2, 0, 1, 3]]
    check(aggregate("foolsgold", SYBILS, context=AggregationContext(history=history)), [0, 0], [1, 0, 0, 1])


def test_fltrust():
    # g0 = [0, 2]; trust: relu(cos) = 0.8, 0, 0.7071; updates rescaled to norm 2
    u = t([[3, 4], [-1, 0], [1, 1]])
    ts = 0.8 + math.sqrt(0.5)
    expected = [(0.8 * 1.2 + math.sqrt(0.5) * math.sqrt(2)) / ts, (0.8 * 1.6 + math.sqrt(0.5) * math.sqrt(2)) / ts]
    weights = [0.8 * 2 / 5 / ts, 0, math.sqrt(0.5) * 2 / math.sqrt(2) / ts]
    check(aggregate("fltrust", u, server_update=t([0, 2])), expected, weights)


def test_flame_keeps_the_majority_cluster_and_clips_to_the_median_norm():
    # clients 0-3 point nearly the same way (cosine distances < 0.01); 4-6 elsewhere, and apart
    u = t([[1, 0.1], [2, 0.25], [3, 0.2], [4, 0.35], [-5, 1], [1, -5], [-1, -1]])
    # norms 1.005 2.016 3.007 4.015 5.099 5.099 1.414: the median is client 2's; client 3 is clipped to it
    c3 = math.hypot(3, 0.2) / math.hypot(4, 0.35)
    expected = [(1 + 2 + 3 + 4 * c3) / 4, (0.1 + 0.25 + 0.2 + 0.35 * c3) / 4]
    check(aggregate("flame", u, noise_lambda=0.0), expected, [0.25, 0.25, 0.25, c3 / 4, 0, 0, 0])


def test_dnc_drops_the_top_singular_direction():
    u = t([[1, 0], [1.1, 0.1], [0.9, -0.1], [5, 5]])
    check(aggregate("dnc", u, num_malicious=1, b=10), [1, 0], [1 / 3, 1 / 3, 1 / 3, 0])


def test_residual_reweighting():
    # One coordinate 0 1 2 3 100: repeated-median line y = rank (slope 1, intercept 0); residuals 0 0 0 0 96;
    # robust scale ~0, so client 4's confidence ~1e-9 < 0.05: its value is replaced by the line's (4),
    # and its weight squared is ~0. The others have confidence 1. Column 1 permutes clients 0..3.
    u = t([[0, 3], [1, 2], [2, 1], [3, 0], [100, 100]])
    check(aggregate("residual", u), [1.5, 1.5], [0.25, 0.25, 0.25, 0.25, 0])


# --- invariants -------------------------------------------------------------------------------------------

SETTINGS = {  # rule -> parameters for n = 7 updates, f = 1
    "fedavg": {}, "median": {}, "trimmed_mean": {"num_trim": 1}, "krum": {}, "multi_krum": {},
    "krum_paper": {}, "bulyan": {}, "geometric_median": {}, "norm_bound": {"max_norm": 1e9},
    "centered_clipping": {"tau": 1e9}, "dp_fedavg": {"clip_norm": 1e9, "noise_multiplier": 0.0},
    "foolsgold": {}, "residual": {}, "dnc": {"b": 50}, "fltrust": {}, "flame": {"noise_lambda": 0.0},
}


def test_every_registered_rule_is_covered():
    assert sorted(SETTINGS) == available_rules()


def run(rule, u, **extra):
    ctx = AggregationContext(num_malicious=1, server_update=u.mean(dim=0))
    return aggregate(rule, u, context=ctx, **SETTINGS[rule], **extra)


@pytest.mark.parametrize("rule", sorted(SETTINGS))
def test_permutation_invariant_and_inputs_untouched(rule):
    g = torch.Generator().manual_seed(1)
    u = torch.randn(7, 50, generator=g, dtype=torch.float64) + torch.linspace(0, 1, 7, dtype=torch.float64)[:, None]
    before = u.clone()
    result = run(rule, u)
    assert torch.equal(u, before)
    perm = torch.tensor([4, 2, 6, 0, 1, 5, 3])
    permuted = run(rule, u[perm])
    assert torch.allclose(result.vector, permuted.vector, atol=1e-9)
    assert torch.allclose(result.weights[perm], permuted.weights, atol=1e-9)


@pytest.mark.parametrize("rule", sorted(SETTINGS))
def test_result_does_not_depend_on_the_column_chunking(rule, monkeypatch):
    from fedsafe.aggregation import geometry

    g = torch.Generator().manual_seed(3)
    u = torch.randn(7, 50, generator=g, dtype=torch.float64)
    whole = run(rule, u)
    monkeypatch.setattr(geometry, "CHUNK_BYTES", 7 * 8 * 6)  # 6 columns per chunk: 9 chunks
    chunked = run(rule, u)
    assert torch.allclose(whole.vector, chunked.vector, atol=1e-9)
    assert torch.allclose(whole.weights, chunked.weights, atol=1e-9)


@pytest.mark.parametrize("rule", sorted(set(SETTINGS) - {"foolsgold"}))
def test_all_equal_inputs_return_that_input(rule):
    u = t([[0.5, -2.0, 3.0]] * 7)
    assert torch.allclose(run(rule, u).vector, u[0], atol=1e-9)


def test_foolsgold_gives_identical_clients_no_weight():
    assert torch.equal(aggregate("foolsgold", t([[0.5, -2.0]] * 3)).weights, t([0, 0, 0]))


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum", "multi_krum", "krum_paper", "bulyan",
                                  "geometric_median", "residual", "dnc"])
def test_one_huge_outlier_stays_out_of_the_benign_range(rule):
    g = torch.Generator().manual_seed(2)
    u = torch.randn(7, 20, generator=g, dtype=torch.float64)
    u[3] = 1e6
    benign = torch.cat([u[:3], u[4:]])
    out = run(rule, u).vector
    assert bool((out >= benign.min(dim=0).values - 1e-9).all() and (out <= benign.max(dim=0).values + 1e-9).all())


@pytest.mark.parametrize("rule, n, params, message", [
    ("krum", 4, {"num_malicious": 1}, "n >= 2f + 3"),
    ("multi_krum", 6, {"num_malicious": 2}, "n >= 2f + 3"),
    ("bulyan", 6, {"num_malicious": 1}, "n >= 4f + 3"),
    ("krum_paper", 2, {"num_malicious": 1}, "n >= f + 2"),
    ("trimmed_mean", 4, {"num_trim": 2}, "n > 2 * num_trim"),
    ("trimmed_mean", 4, {"trim_ratio": 0.5}, "trim_ratio must be in [0, 0.5)"),
    ("dnc", 3, {"num_malicious": 3}, "lower c or num_malicious"),
    ("residual", 2, {}, "n >= 3"),
    ("fltrust", 3, {}, "context.server_update"),
    ("multi_krum", 7, {"num_malicious": 1, "num_selected": 9}, "num_selected must be in [1, n=7]"),
])
def test_broken_assumptions_raise_and_name_the_parameter(rule, n, params, message):
    with pytest.raises(ValueError, match=re_escape(message)):
        aggregate(rule, torch.randn(n, 5), **params)


def re_escape(text):
    import re

    return re.escape(text)


# --- server optimizers ------------------------------------------------------------------------------------

def test_server_optimizers_by_hand():
    one = torch.ones(1, dtype=torch.float64)
    avgm = ServerOptConfig("fedavgm", lr=1.0, momentum=0.9)
    step, state = server_step(avgm, init_state(avgm, 1), one)
    step, state = server_step(avgm, state, one)
    assert float(step) == pytest.approx(1.9)  # m = 0.9 * 1 + 1
    tau = 1e-3
    for name, v in [("fedadam", 0.99 * tau**2 + 0.01), ("fedyogi", tau**2 + 0.01), ("fedadagrad", tau**2 + 1)]:
        cfg = ServerOptConfig(name, lr=1.0, beta1=0.9, beta2=0.99, tau=tau)
        step, _ = server_step(cfg, {k: s.double() for k, s in init_state(cfg, 1).items()}, one)
        assert float(step) == pytest.approx(0.1 / (math.sqrt(v) + tau)), name
    none = ServerOptConfig("none")
    assert server_step(none, init_state(none, 1), one)[0] is one
    with pytest.raises(ValueError, match="server_opt.name must be one of"):
        ServerOptConfig("sgd")
