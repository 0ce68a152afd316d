"""How a LoRA federation combines its clients' adapters (``aggregation.mode``), and clients of different ranks.

Each target module's adapter is a pair: ``A`` [R, in] and ``B`` [out, R]; the module's weight change is
``s * B @ A`` (``s``: PEFT's scale, alpha / r). Components (rows of A, columns of B) ``0..r-1`` are the ones
clients train, ``r..R-1`` hold the *fold*: what the ``exact`` and ``stack`` modes put into the frozen weights,
kept as a frozen low-rank term of the same adapter so that every part of fedsafe (trainers, generation,
checkpoints) sees one ordinary PEFT adapter. A client of rank ``r_k < r`` trains components ``0..r_k-1``
(``truncate`` gives it the global adapter cut to them: HetLoRA's truncation; after ``svd`` the components are
ordered by singular value, so the cut is the best rank-``r_k`` approximation, FlexLoRA's).

Modes (the clients' full adapters are ``truncate(global, r_k) + delta_k``; ``w`` the rule's weights):

    factors  the rule acts on the factor updates, the new adapter is the global one plus its aggregate
             (FedIT / OpenFedLLM: the A and B matrices averaged separately, zero-padded where ranks differ)
    stack    the rule acts on the product updates; their aggregate is folded into the frozen weights and the
             trained components start again from the initial adapter (FLoRA: stacking the clients'
             adapters is their product sum, merged into the base each round)
    svd      the rule acts on the product updates; the new adapter is the best rank-r approximation of the
             global product plus their aggregate (FlexLoRA)
    exact    the rule acts on the product updates; the new trained components are the factors averaged with
             the rule's weights, and what their product misses of the aggregated product is folded into the
             frozen weights (FedEx-LoRA): with FedAvg the model's weight change is exactly the weighted mean
             of the clients' ``s * B_k @ A_k``

The fold holds at most ``R - r`` components per module; a fold of higher rank is cut to its best
approximation of that rank and the relative error is recorded (``fold_error``, 0 while the fold fits).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from fedsafe.aggregation.config import MODES, PRODUCT_MODES

__all__ = ["MODES", "PRODUCT_MODES", "LoRALayout", "combine", "component_mask", "factorize", "factors_error",
           "lora_layout", "product_updates", "truncate"]


@dataclass(frozen=True)
class Pair:
    """One target module's LoRA pair in the flat adapter: A at ``a`` (shape [R, in]), B at ``b`` ([out, R])."""

    a: slice
    a_shape: tuple[int, int]
    b: slice
    b_shape: tuple[int, int]


@dataclass(frozen=True)
class LoRALayout:
    """The flat adapter's LoRA pairs; ``rank``: the trained components (lora.r), ``total``: R (trained + fold),
    ``scale``: s = alpha / r."""

    pairs: tuple[Pair, ...]
    rank: int
    total: int
    scale: float
    numel: int

    @property
    def fold(self) -> int:
        return self.total - self.rank


def lora_layout(names: tuple[str, ...], shapes: tuple[tuple[int, ...], ...], rank: int = 0,
                scale: float = 1.0) -> LoRALayout:
    """The layout of a flat adapter with these PEFT state-dict ``names`` and ``shapes`` (``AdapterSpec``);
    ``rank`` 0: every component is trained. A vector without LoRA pairs has an empty layout."""
    offsets, at = {}, 0
    for name, shape in zip(names, shapes):
        size = int(torch.Size(shape).numel())
        offsets[name] = (slice(at, at + size), tuple(shape))
        at += size
    pairs = []
    for name in names:
        if ".lora_A." not in name:
            continue
        partner = name.replace(".lora_A.", ".lora_B.")
        if partner not in offsets:
            raise ValueError(f"adapter entry {name} has no lora_B partner {partner}")
        (a, a_shape), (b, b_shape) = offsets[name], offsets[partner]
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[0] != b_shape[1]:
            raise ValueError(f"{name} {list(a_shape)} and {partner} {list(b_shape)} are not a LoRA pair")
        pairs.append(Pair(a, a_shape, b, b_shape))
    if not pairs:
        return LoRALayout((), 0, 0, float(scale), at)
    totals = {p.a_shape[0] for p in pairs}
    if len(totals) != 1 or rank > min(totals):
        raise ValueError(f"LoRA pairs of ranks {sorted(totals)} do not hold {rank} trained components each")
    total = totals.pop()
    return LoRALayout(tuple(pairs), rank or total, total, float(scale), at)


def factors(vector: torch.Tensor, pair: Pair) -> tuple[torch.Tensor, torch.Tensor]:
    """Views of (A [R, in], B [out, R]) of ``pair`` in ``vector``."""
    return vector[pair.a].view(pair.a_shape), vector[pair.b].view(pair.b_shape)


def products(vector: torch.Tensor, layout: LoRALayout, components: slice) -> torch.Tensor:
    """Every module's ``s * B[:, c] @ A[c]`` over ``components`` c, flattened and concatenated."""
    parts = []
    for pair in layout.pairs:
        a, b = factors(vector, pair)
        parts.append((layout.scale * b[:, components].double() @ a[components].double()).reshape(-1))
    return torch.cat(parts)


def trained(layout: LoRALayout) -> slice:
    return slice(0, layout.rank)


def folded(layout: LoRALayout) -> slice:
    return slice(layout.rank, layout.total)


def component_mask(layout: LoRALayout, rank: int) -> torch.Tensor:
    """Bool [numel]: True on the entries of components ``0..rank-1`` (what a client of that rank trains);
    entries outside the LoRA pairs are True."""
    mask = torch.ones(layout.numel, dtype=torch.bool)  # on the CPU, where trainers hold their deltas
    for pair in layout.pairs:
        a, b = factors(mask, pair)
        a[rank:] = False
        b[:, rank:] = False
    return mask


def truncate(vector: torch.Tensor, layout: LoRALayout, rank: int) -> torch.Tensor:
    """``vector`` with trained components ``rank..r-1`` set to zero (the fold kept): what a client of rank
    ``rank`` starts from."""
    if rank >= layout.rank:
        return vector
    out = vector.clone()
    for pair in layout.pairs:
        a, b = factors(out, pair)
        a[rank:layout.rank] = 0
        b[:, rank:layout.rank] = 0
    return out


def factorize(matrix: torch.Tensor, rank: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A [rank, in], B [out, rank], relative error): ``scale * B @ A`` is the best rank-``rank`` approximation
    of ``matrix`` (truncated SVD, Eckart-Young), its components in decreasing singular value, the singular
    values split evenly between the factors; the error is ||matrix - approximation||_F / ||matrix||_F."""
    u, s, vh = torch.linalg.svd(matrix.double(), full_matrices=False)
    k = min(rank, s.numel())
    root = s[:k].sqrt() / scale**0.5
    a = torch.zeros(rank, matrix.shape[1], dtype=torch.float64, device=matrix.device)
    b = torch.zeros(matrix.shape[0], rank, dtype=torch.float64, device=matrix.device)
    a[:k], b[:, :k] = root[:, None] * vh[:k], u[:, :k] * root[None, :]
    total = float(s.square().sum())
    error = (float(s[k:].square().sum()) / total) ** 0.5 if total > 0 else 0.0
    return a, b, error


def set_products(vector: torch.Tensor, layout: LoRALayout, flat: torch.Tensor, components: slice) -> float:
    """Write into ``components`` of every pair of ``vector`` (in place) the factors whose product best
    approximates that module's part of ``flat`` (``products``' layout); returns the relative Frobenius error
    over all modules (0 when every part fits the components' rank)."""
    at, missed, total = 0, 0.0, 0.0
    width = components.stop - components.start
    for pair in layout.pairs:
        out, inner = pair.b_shape[0], pair.a_shape[1]
        matrix = flat[at:at + out * inner].view(out, inner)
        at += out * inner
        a_new, b_new, error = factorize(matrix, width, layout.scale)
        a, b = factors(vector, pair)
        a[components], b[:, components] = a_new.to(a.dtype), b_new.to(b.dtype)
        norm2 = float(matrix.double().square().sum())
        missed, total = missed + error**2 * norm2, total + norm2
    return (missed / total) ** 0.5 if total > 0 else 0.0


def product_updates(global_vector: torch.Tensor, deltas: torch.Tensor, ranks: list[int],
                    layout: LoRALayout) -> torch.Tensor:
    """[n, sum out*in] float64: each client's change of the trained components' product, from ``global_vector``
    to its full adapter ``truncate(global, r_k) + delta_k``."""
    base = products(global_vector, layout, trained(layout))
    rows = [products(truncate(global_vector, layout, r) + d, layout, trained(layout)) - base
            for d, r in zip(deltas, ranks)]
    return torch.stack(rows)


def factors_error(global_vector: torch.Tensor, deltas: torch.Tensor, ranks: list[int], weights: torch.Tensor,
                  layout: LoRALayout) -> dict:
    """What averaging the factors misses of the average of the products over the clients' full adapters
    (weights ``weights``, normalised here): ``relative``, ||s * mean(B) mean(A) - mean(s * B_k A_k)||_F over
    ||mean(s * B_k A_k)||_F (all modules together), and ``of_update``, the same distance over the norm of the
    mean product update (how wrong the round's update is). One module at a time, so memory stays at one
    product per client."""
    w = weights.double() / weights.double().sum()
    full = [truncate(global_vector, layout, r).double() + d.double() for d, r in zip(deltas, ranks)]
    mean = sum(wk * x for wk, x in zip(w, full))
    gap = size = update = 0.0
    comps = trained(layout)
    for pair in layout.pairs:
        def product(x: torch.Tensor) -> torch.Tensor:
            a, b = factors(x, pair)
            return layout.scale * b[:, comps] @ a[comps]

        mean_of_products = sum(wk * product(x) for wk, x in zip(w, full))
        gap += float((product(mean) - mean_of_products).square().sum())
        size += float(mean_of_products.square().sum())
        update += float((mean_of_products - product(global_vector.double())).square().sum())
    return {"relative": (gap / size) ** 0.5 if size > 0 else 0.0,
            "of_update": (gap / update) ** 0.5 if update > 0 else 0.0}


def combine(mode: str, global_vector: torch.Tensor, initial: torch.Tensor, factor_step: torch.Tensor,
            product_step: torch.Tensor | None, layout: LoRALayout) -> tuple[torch.Tensor, dict]:
    """The new global adapter of a product mode (``PRODUCT_MODES``) and what it records.

    ``factor_step``: the clients' factor updates averaged with the rule's weights (``exact``'s new factors);
    ``product_step``: the rule's aggregate of the product updates; ``initial``: the adapter round 0 started
    from (``stack`` starts its trained components from it again)."""
    g = global_vector.double()
    target = products(g, layout, trained(layout)) + product_step
    new = g.clone()
    info: dict = {}
    if mode == "svd":
        info["svd_error"] = set_products(new, layout, target, trained(layout))
        return new.to(global_vector.dtype), info
    if layout.fold == 0:
        raise ValueError(f"aggregation.mode={mode} folds into components beyond lora.r; the adapter has none")
    if mode == "exact":
        new += factor_step.double()
        keep = products(new, layout, trained(layout))
    elif mode == "stack":
        for pair in layout.pairs:
            a, b = factors(new, pair)
            a0, b0 = factors(initial.double(), pair)
            a[: layout.rank], b[:, : layout.rank] = a0[: layout.rank], b0[:, : layout.rank]
        keep = products(new, layout, trained(layout))
    else:
        raise ValueError(f"aggregation.mode must be one of {PRODUCT_MODES} here, got {mode!r}")
    fold = products(g, layout, folded(layout)) + target - keep
    info["fold_error"] = set_products(new, layout, fold, folded(layout))
    return new.to(global_vector.dtype), info
