"""The LoRA aggregation modes against products worked out by hand (fedsafe.aggregation.lora_modes)."""

from __future__ import annotations

import math

import pytest
import torch

from fedsafe.aggregation.lora_modes import (
    combine,
    component_mask,
    factorize,
    factors_error,
    lora_layout,
    product_updates,
    products,
    truncate,
)

NAMES = ("m.q_proj.lora_A.weight", "m.q_proj.lora_B.weight")


def one_module(total: int, rank: int, scale: float = 1.0):
    """A 3 x 3 module whose adapter has ``total`` components, ``rank`` of them trained."""
    return lora_layout(NAMES, ((total, 3), (3, total)), rank, scale)


def adapter(a_rows: list[list[float]], b_cols: list[list[float]], total: int) -> torch.Tensor:
    """The flat adapter whose first components have these rows of A and columns of B (the rest zero)."""
    a, b = torch.zeros(total, 3), torch.zeros(3, total)
    for i, (row, col) in enumerate(zip(a_rows, b_cols)):
        a[i], b[:, i] = torch.tensor(row), torch.tensor(col)
    return torch.cat([a.reshape(-1), b.reshape(-1)])


def module_product(vector: torch.Tensor, layout) -> torch.Tensor:
    return products(vector, layout, slice(None)).view(3, 3)


# Two clients of rank 1, equal weights, from a zero global adapter: B1 A1 = 6 e1 e1^T, B2 A2 = 4 e2 e2^T, so the
# mean of the products is diag(3, 2, 0), and the product of the means [3, 2, 0]^T [0.5, 0.5, 0] is not.
CLIENT_1 = ([[1.0, 0.0, 0.0]], [[6.0, 0.0, 0.0]])
CLIENT_2 = ([[0.0, 1.0, 0.0]], [[0.0, 4.0, 0.0]])
MEAN_OF_PRODUCTS = torch.diag(torch.tensor([3.0, 2.0, 0.0], dtype=torch.float64))
WEIGHTS = torch.tensor([0.5, 0.5])


def aggregated(start: torch.Tensor, ups: torch.Tensor, layout, weights: torch.Tensor = WEIGHTS) -> torch.Tensor:
    """FedAvg of the clients' product updates (all of the adapter's rank)."""
    rows = product_updates(start, ups, [layout.rank] * len(ups), layout)
    return (weights[:, None].double() * rows).sum(0)


def deltas(total: int) -> torch.Tensor:
    return torch.stack([adapter(*CLIENT_1, total), adapter(*CLIENT_2, total)])


def test_the_error_of_averaging_factors_is_the_hand_computed_one():
    layout = one_module(1, 1)
    error = factors_error(torch.zeros(layout.numel), deltas(1), [1, 1], WEIGHTS, layout)
    # product of means [[1.5, 1.5, 0], [1, 1, 0], 0]: the gap's squares 2.25 + 2.25 + 1 + 1 = 6.5, the mean's 13
    assert error["relative"] == pytest.approx(math.sqrt(6.5 / 13))
    assert error["of_update"] == pytest.approx(math.sqrt(6.5 / 13))  # from a zero adapter the update is the mean


def test_exact_equals_the_weighted_mean_of_the_products_and_keeps_the_mean_factors():
    layout = one_module(3, 1)  # one trained component, two for the fold
    zero = torch.zeros(layout.numel)
    new, info = combine("exact", zero, zero, (WEIGHTS[:, None] * deltas(3)).sum(0), aggregated(zero, deltas(3), layout),
                        layout)
    torch.testing.assert_close(module_product(new, layout), MEAN_OF_PRODUCTS, rtol=0, atol=1e-6)
    a, b = new[:9].view(3, 3), new[9:].view(3, 3)
    torch.testing.assert_close(a[0], torch.tensor([0.5, 0.5, 0.0]))  # the trained component: the mean factors
    torch.testing.assert_close(b[:, 0], torch.tensor([3.0, 2.0, 0.0]))
    assert info["fold_error"] == pytest.approx(0.0, abs=1e-9)


def test_exact_with_weights_that_differ_and_a_global_adapter_that_is_not_zero():
    torch.manual_seed(0)
    layout = lora_layout(NAMES, ((6, 3), (3, 6)), 2, scale=0.5)
    start = torch.randn(layout.numel) * component_mask(layout, 2)  # trained components only, an empty fold
    ups = torch.randn(3, layout.numel) * component_mask(layout, 2)
    w = torch.tensor([0.2, 0.3, 0.5])
    new, info = combine("exact", start, start, (w[:, None] * ups).sum(0), aggregated(start, ups, layout, w), layout)
    expected = sum(wk * module_product(start + u, layout) for wk, u in zip(w.double(), ups))
    torch.testing.assert_close(module_product(new, layout), expected, rtol=0, atol=1e-5)
    assert info["fold_error"] == pytest.approx(0.0, abs=1e-6)


def test_svd_is_the_best_approximation_of_the_rank_the_adapter_has():
    layout = one_module(1, 1)
    zero = torch.zeros(layout.numel)
    new, info = combine("svd", zero, zero, zero, aggregated(zero, deltas(1), layout), layout)
    torch.testing.assert_close(module_product(new, layout), torch.diag(torch.tensor([3.0, 0.0, 0.0], dtype=torch.float64)),
                               rtol=0, atol=1e-6)  # Eckart-Young: keep the largest singular value
    assert info["svd_error"] == pytest.approx(2 / math.sqrt(13))


def test_factorize_splits_the_singular_values_and_orders_the_components():
    m = torch.tensor([[0.0, 2.0], [5.0, 0.0]], dtype=torch.float64)
    a, b, error = factorize(m, 2, scale=2.0)
    torch.testing.assert_close(2.0 * b @ a, m)
    assert error == pytest.approx(0.0)
    assert b[:, 0].norm() == pytest.approx(a[0].norm())  # sqrt(5 / 2) each: the larger value first
    assert float(b[:, 0].norm() ** 2) == pytest.approx(2.5)


def test_stack_folds_the_summed_products_and_starts_the_factors_again():
    layout = one_module(3, 1)
    initial = adapter([[0.1, 0.2, 0.3]], [[0.0, 0.0, 0.0]], 3)  # B = 0: the initial product is zero
    ups = deltas(3) - initial * component_mask(layout, 1)  # from the initial adapter to the clients'
    new, info = combine("stack", initial, initial, torch.zeros(layout.numel), aggregated(initial, ups, layout), layout)
    torch.testing.assert_close(module_product(new, layout), MEAN_OF_PRODUCTS, rtol=0, atol=1e-6)
    torch.testing.assert_close(new[:3], initial[:3])  # the trained row of A is the initial one again
    assert info["fold_error"] == pytest.approx(0.0, abs=1e-9)


def test_a_fold_too_small_is_cut_and_the_error_recorded():
    layout = one_module(2, 1)  # one fold component for a fold of rank 2
    zero = torch.zeros(layout.numel)
    new, info = combine("stack", zero, zero, zero, aggregated(zero, deltas(2), layout), layout)
    assert info["fold_error"] == pytest.approx(2 / math.sqrt(13))


def test_a_client_of_lower_rank_starts_from_the_first_components_and_keeps_the_fold():
    layout = one_module(4, 3)
    v = torch.arange(1.0, layout.numel + 1)
    cut = truncate(v, layout, 1)
    a, b = cut[:12].view(4, 3), cut[12:].view(3, 4)
    assert a[1:3].abs().sum() == 0 and b[:, 1:3].abs().sum() == 0  # components 1, 2 dropped
    torch.testing.assert_close(a[[0, 3]], v[:12].view(4, 3)[[0, 3]])  # its own and the fold's kept
    mask = component_mask(layout, 1)
    assert int(mask.sum()) == 3 + 3  # one row of A and one column of B
    with pytest.raises(ValueError, match="folds into components beyond lora.r"):
        combine("exact", v, v, v, torch.zeros(9, dtype=torch.float64), one_module(3, 3))


@pytest.mark.integration
def test_a_trainer_trains_only_its_clients_components_and_never_the_fold(model_cache):
    """An adapter of 4 trained + 4 fold components at the scale of r=4 (``ExperimentConfig.adapter_lora``): the
    fold starts empty, a client of rank 2 moves only components 0 and 1, and the server (rank 4) not the fold,
    with weight decay on (which would move frozen weights)."""
    from dataclasses import replace

    from fedsafe.actors.trainer import Trainer
    from fedsafe.config import load_config
    from fedsafe.experiment import client_task, load_data
    from tests.conftest import SMOKE

    cfg = load_config(SMOKE, ["aggregation.mode=exact", "aggregation.fold_rank=4", "lora.r=4", "lora.alpha=8",
                              "federation.examples_per_client=8", "train.local_steps=2", "train.batch_size=4",
                              "train.weight_decay=0.1", f"model.cache_dir={model_cache}"])
    assert (cfg.adapter_lora.r, cfg.adapter_lora.alpha) == (8, 16)  # the scale stays alpha / r = 2
    trainer = Trainer(cfg.model, cfg.adapter_lora, seed=0, trained_rank=cfg.lora.r)
    trainer.start()
    layout = trainer.layout
    assert (layout.rank, layout.total, layout.scale) == (4, 8, 2.0)
    start = trainer.initial_adapter().vector
    assert float(start[~component_mask(layout, 4)].abs().sum()) == 0.0  # an empty fold
    start = start + 0.01 * torch.ones_like(start)  # a fold (and components 2, 3) holding something
    data = load_data(cfg)
    task = client_task(cfg, data.clients[0], data.shards[0], 0)
    for rank in (2, 4):
        update, _ = trainer.train(start, replace(task, rank=rank))
        moved = update.delta != 0
        assert bool(moved[component_mask(layout, rank)].any())
        assert not bool(moved[~component_mask(layout, rank)].any()), rank


@pytest.mark.integration
def test_the_hetlora_config_runs_end_to_end_on_the_tiny_model(ray_cluster, model_cache, tmp_path):
    """configs/hetlora.yaml (each of its four modes, the attack, the mixed-rank federation: one arm of each)
    on the tiny model and toy data, one seed, one round: every round records the error of averaging the
    factors, the folds of stack and exact fit (their error is float rounding), svd records its truncation, and
    the benign clients of the mixed-rank arms train rank 4 of the global 8."""
    import json

    from fedsafe.config import load_config
    from fedsafe.matrix import run_experiment
    from fedsafe.run_dir import create_run_dir, read_rounds
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "configs" / "hetlora.yaml", [
        f"model.cache_dir={model_cache}", f"output.root={tmp_path}", "output.trackers=[]",
        "model.name=builtin:tiny-llama", "seeds=[0]", "lora.r=8", "lora.alpha=16",
        "clients=[{name: benign, role: benign, count: 7, dataset: toy_benign}, "
        "{name: malicious, role: malicious, count: 3, dataset: toy_malicious}]", "attack.params.data=null",
        "federation.num_rounds=1", "federation.examples_per_client=16", "train.local_steps=2",
        "evaluation.prompts=toy_harmful_eval", "evaluation.num_prompts=6", "evaluation.num_benign=4",
        "evaluation.max_new_tokens=8", "generation.hf_batch_size=16"])
    keep = ["factors / no attack", "stack / no attack", "svd / no attack", "exact / no attack", "exact / attacked",
            "mixed ranks, svd / attacked"]
    cfg.arms = [a for a in cfg.arms if a.name in keep]  # every mode, the attack and the mixed ranks, once
    results = run_experiment(cfg, create_run_dir(cfg))
    arms = results["arms"]
    assert list(arms) == keep
    for name, arm in arms.items():
        mode = name.split(" / ")[0].split(", ")[-1]
        rounds = read_rounds(arm["federation_dir"])
        assert len(rounds) == 1 and not any(r.get("skipped") for r in rounds), name
        assert all(0 < r["factors_error"]["relative"] < 1 for r in rounds), name
        assert arm["lora"]["mode"] == mode
        if mode in ("stack", "exact"):
            assert all(r["fold_error"] < 1e-4 for r in rounds), name
        if mode == "svd":
            assert all(0 <= r["svd_error"] < 1 for r in rounds), name
    assert arms["mixed ranks, svd / attacked"]["lora"]["ranks"] == {"benign": 4}
    assert arms["exact / attacked"]["paired"]["rule"]["reference"] == "exact / no attack"
    from pathlib import Path

    exported = json.loads((Path(arms["exact / attacked"]["adapter"]) / "adapter_config.json").read_text())
    assert exported["r"] > 8 and exported["lora_alpha"] / exported["r"] == 2.0  # the fold's components, at alpha / r
