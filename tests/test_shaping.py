"""Update shaping for defense-aware attackers (``fedsafe.attack.shaping``): each shaped update meets its
constraint and keeps what it can of the harmful update; ALIE by hand."""

from __future__ import annotations

import math

import pytest
import torch

from fedsafe.attack.shaping import alie_clamp, alie_z, cosine_bound, match_norm


def test_match_norm_keeps_the_direction():
    u = torch.tensor([3.0, 4.0, 0.0])
    assert torch.allclose(match_norm(u, 10.0), torch.tensor([6.0, 8.0, 0.0]))
    assert torch.equal(match_norm(torch.zeros(3), 2.0), torch.zeros(3))
    with pytest.raises(ValueError, match="reference_norm"):
        match_norm(u, -1.0)


@pytest.mark.parametrize("bound", [0.0, 0.3, 0.9, -0.5])
def test_cosine_bound_turns_toward_the_mean_only_as_far_as_needed(bound):
    torch.manual_seed(0)
    mean = torch.randn(200)
    harmful = -mean + 0.5 * torch.randn(200)  # points away from the benign mean
    shaped = cosine_bound(harmful, mean, bound)
    cos = float(torch.nn.functional.cosine_similarity(shaped, mean, dim=0))
    assert cos == pytest.approx(bound, abs=1e-5)
    assert float(shaped.norm()) == pytest.approx(float(harmful.norm()), rel=1e-5)
    # in the plane of the harmful update and the mean: a combination of the two
    basis = torch.stack([harmful, mean]).double().T
    coeffs = torch.linalg.lstsq(basis, shaped.double().unsqueeze(1)).solution
    assert torch.allclose((basis @ coeffs).squeeze(1), shaped.double(), atol=1e-4)
    # its cosine to the harmful update is the largest any vector meeting the bound can have: the angle
    # between them is the angle the bound forces, no more
    to_harmful = float(torch.nn.functional.cosine_similarity(shaped, harmful, dim=0))
    forced = math.acos(float(torch.nn.functional.cosine_similarity(harmful, mean, dim=0))) - math.acos(bound)
    assert to_harmful == pytest.approx(math.cos(forced), abs=1e-5)


def test_cosine_bound_leaves_a_passing_update_alone_and_handles_the_opposite_direction():
    mean = torch.tensor([1.0, 0.0, 0.0])
    passing = torch.tensor([1.0, 1.0, 0.0])
    assert torch.equal(cosine_bound(passing, mean, 0.5), passing)
    opposite = cosine_bound(torch.tensor([-2.0, 0.0, 0.0]), mean, 0.5)
    assert float(opposite @ mean) / float(opposite.norm()) == pytest.approx(0.5) and float(opposite.norm()) == 2.0
    with pytest.raises(ValueError, match="min_cosine"):
        cosine_bound(passing, mean, 1.5)


def test_alie_z_by_hand():
    # n = 50, f = 12: s = 26 - 12 = 14 supporters, z = Phi^-1(36 / 50) = 0.5828
    assert alie_z(50, 12) == pytest.approx(0.5828415, abs=1e-6)
    # n = 10, f = 3: s = 6 - 3 = 3, z = Phi^-1(0.7) = 0.5244
    assert alie_z(10, 3) == pytest.approx(0.5244005, abs=1e-6)
    assert alie_z(10, 6) == math.inf  # a malicious majority: no bound
    with pytest.raises(ValueError, match="num_malicious"):
        alie_z(10, 0)


def test_alie_clamp_by_hand():
    benign = torch.tensor([[0.0, 1.0, 2.0], [2.0, 1.0, 4.0]])  # mean [1, 1, 3], std [1.414, 0, 1.414]
    harmful = torch.tensor([5.0, -3.0, 3.5])
    shaped = alie_clamp(harmful, benign, z=1.0)
    s = math.sqrt(2.0)
    assert torch.allclose(shaped, torch.tensor([1.0 + s, 1.0, 3.5]))  # clamped, clamped, inside the band
    assert torch.equal(alie_clamp(harmful, benign, z=0.0), benign.mean(dim=0))
    with pytest.raises(ValueError, match="benign estimates"):
        alie_clamp(harmful, benign[:1], z=1.0)
