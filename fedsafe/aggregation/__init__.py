"""Aggregation rules over client updates, behind one registry, usable on plain tensors.

    from fedsafe.aggregation import aggregate
    result = aggregate("krum", updates, num_malicious=2)      # updates: Tensor[n, d]
    result.vector   # [d]   the aggregated update
    result.weights  # [n]   effective weight per client (0 = discarded)

Rules: fedavg, median, trimmed_mean, krum, multi_krum, krum_paper, bulyan, geometric_median, norm_bound,
centered_clipping, foolsgold, residual, dnc, fltrust, flame, dp_fedavg. Server optimizers after any rule:
``fedsafe.aggregation.server_opt``.
"""

from __future__ import annotations

__all__ = ["AggregationContext", "AggregationResult", "RuleSpec", "aggregate", "available_rules", "get_rule",
           "register_rule"]


def __getattr__(name: str):
    """The rules register when first asked for, so that ``fedsafe.aggregation.config`` (read while loading a
    config) imports no torch."""
    if name in __all__:
        from fedsafe.aggregation import clipping, coordinatewise, dnc, fedavg, krum, registry, residual, similarity  # noqa: F401

        return getattr(registry, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
