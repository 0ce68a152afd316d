"""Per-coordinate order statistics near memory speed: a sorting network on cache-sized column blocks.

    from fedsafe.aggregation.order import order_window
    vector, counts = order_window(updates, "median")           # updates: Tensor[n, d]
    vector, counts = order_window(updates, "trim", k=2)        # mean of each column without 2 per side
    vector, counts = order_window(updates, "closest", k=30, rows=rows)   # Bulyan's step on a row subset

A sorting network is a fixed list of compare-exchange steps (i, j), i < j: afterwards wire i holds the
smaller value and wire j the larger. Because the list does not depend on the data, each step is a vector
min/max over a block of columns; a block of n rows x 64 columns stays in the L1 cache through all steps,
so the matrix is read once from memory. numba compiles the loops to SIMD code; contiguous ranges of blocks
run side by side in threads (as many as torch may use; the kernels release the GIL). Client indices travel
with the values, so a rule knows whose values it kept.

The network is Batcher's odd-even merge sort (Knuth, TAOCP vol. 3, 5.3.4, exercise 32) on n wires padded to
the next power of two; steps touching a padding wire are dropped (a padding wire would hold +inf, which no
step moves), and steps that cannot reach a wanted output position are pruned (the median needs two).

Windows over each sorted column (positions 0..t-1 of the t rows used):
- ``median``: (s[(t-1)//2] + s[t//2]) / 2 in the input dtype (``lower``: s[(t-1)//2]); the same arithmetic as
  ``torch.median`` plus the upper middle, so the same bits.
- ``trim``: mean of s[k : t-k], summed in float64.
- ``closest``: mean of the k values closest to the median, summed in float64 (Bulyan): the farthest value
  is always at an end of the sorted column, so t - k steps drop an end each.
Ties between equal values go to one of the tied clients; ties in distance (``closest``) drop the upper end.
On a CUDA tensor (or without numba) the same windows are taken from ``torch.sort``.
"""

from __future__ import annotations

import functools
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

try:
    import numba

    njit = numba.njit
except ImportError:  # a machine with torch alone (e.g. a GPU box): every tensor takes the torch.sort path
    numba = None

    def njit(**_):
        return lambda fn: fn

BLOCK = 64  # columns per block: 50 clients x 64 columns x (4-byte value + 4-byte index) = 25.6 KB, in L1
MODES = {"median": 0, "lower": 1, "trim": 2, "closest": 3}


@functools.cache
def batcher_pairs(n: int) -> tuple[tuple[int, int], ...]:
    """Compare-exchange steps (i, j), i < j, of Batcher's odd-even merge sort of n wires, in order."""
    size = 1 << max(0, (n - 1).bit_length())
    pairs = []
    p = 1
    while p < size:
        k = p
        while k >= 1:
            for j in range(k % p, size - k, 2 * k):
                for i in range(min(k, size - j - k)):
                    a, b = i + j, i + j + k
                    if a // (2 * p) == b // (2 * p) and b < n:
                        pairs.append((a, b))
            k //= 2
        p *= 2
    return tuple(pairs)


@functools.cache
def network(n: int, wanted: tuple[int, ...] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Batcher's steps for n wires, pruned to those that can affect the ``wanted`` output positions
    (None: all): (first wires, second wires) as int64 arrays."""
    pairs = batcher_pairs(n)
    if wanted is not None:
        live, kept = set(wanted), []
        for a, b in reversed(pairs):  # a step matters if it writes a wire that is read later
            if a in live or b in live:
                kept.append((a, b))
                live.update((a, b))
        pairs = tuple(reversed(kept))
    first = np.array([a for a, _ in pairs], dtype=np.int64)
    second = np.array([b for _, b in pairs], dtype=np.int64)
    return first, second


@njit(cache=True, nogil=True)
def sort_rows(vals, first, second):
    """Apply the network's steps to the rows of vals [t, width] (each column sorted on its own)."""
    for p in range(first.shape[0]):
        i, j = first[p], second[p]
        for c in range(vals.shape[1]):
            a, b = vals[i, c], vals[j, c]
            vals[i, c] = min(a, b)
            vals[j, c] = max(a, b)


@njit(cache=True, nogil=True)
def sort_block(x, rows, start, vals, idx, first, second):
    """Load columns [start, start + BLOCK) of the ``rows`` of x into vals/idx (zeros past the end) and sort
    each column by the network, carrying row indices."""
    t, width = vals.shape
    d = x.shape[1]
    stop = min(width, d - start)
    for r in range(t):
        src = rows[r]
        for c in range(stop):
            vals[r, c] = x[src, start + c]
            idx[r, c] = src
        for c in range(stop, width):
            vals[r, c] = 0
            idx[r, c] = src
    for p in range(first.shape[0]):
        i, j = first[p], second[p]
        for c in range(width):
            a, b = vals[i, c], vals[j, c]
            ia, ib = idx[i, c], idx[j, c]
            swap = b < a
            vals[i, c] = b if swap else a
            vals[j, c] = a if swap else b
            idx[i, c] = ib if swap else ia
            idx[j, c] = ia if swap else ib
    return stop


@njit(cache=True, nogil=True)
def _block_window(vals, idx, stop, mode, k, out, start, tally, acc, med):
    """The window statistic of the first ``stop`` sorted columns of a block, into out[start:start + stop].
    ``tally`` counts rows used (median) or dropped (trim, closest); ``acc`` (float64) and ``med`` (the
    values' dtype) are scratch of the block's width."""
    t, width = vals.shape
    mid_lo, mid_hi = (t - 1) // 2, t // 2
    if mode == 1:
        mid_hi = mid_lo
    if mid_lo == mid_hi:
        med[:] = vals[mid_lo]
    else:
        for c in range(width):  # the sum of the middles in the dtype; halving is exact, so storing rounds nothing
            med[c] = 0.5 * (vals[mid_lo, c] + vals[mid_hi, c])
    if mode <= 1:  # median / lower median: count the rows used
        for c in range(stop):
            out[start + c] = med[c]
            tally[idx[mid_lo, c]] += 1
            if mid_hi != mid_lo:
                tally[idx[mid_hi, c]] += 1
        return
    acc[:] = 0.0
    if mode == 2:  # trim: the middle t - 2k, summed row by row; count the 2k dropped
        for r in range(k, t - k):
            for c in range(width):
                acc[c] += vals[r, c]
        for c in range(stop):
            out[start + c] = acc[c] / (t - 2 * k)
            for r in range(k):
                tally[idx[r, c]] += 1
                tally[idx[t - 1 - r, c]] += 1
        return
    for r in range(t):  # closest k to the median: the sum of all, less the farther end, t - k times
        for c in range(width):
            acc[c] += vals[r, c]
    for c in range(stop):
        lo, hi, m = 0, t - 1, med[c]
        for _ in range(t - k):  # branch-free: the data decide, so a branch would mispredict half the time
            low_end = abs(vals[lo, c] - m) > abs(vals[hi, c] - m)
            r = lo if low_end else hi
            acc[c] -= vals[r, c]
            tally[idx[r, c]] += 1
            lo += low_end
            hi -= not low_end
        out[start + c] = acc[c] / k


@njit(cache=True, nogil=True)
def _window_kernel(x, rows, first, second, mode, k, out, tally, block, b0, b1):
    """out[col] = the window statistic of column col over ``rows`` of x, for the columns of blocks
    [b0, b1); tally[row] += how many of them used (median) or dropped (trim, closest) that row."""
    t = rows.shape[0]
    vals = np.empty((t, block), dtype=x.dtype)
    idx = np.empty((t, block), dtype=np.int32)
    med = np.empty(block, dtype=x.dtype)
    acc = np.empty(block, dtype=np.float64)
    for b in range(b0, b1):
        start = b * block
        stop = sort_block(x, rows, start, vals, idx, first, second)
        _block_window(vals, idx, stop, mode, k, out, start, tally, acc, med)


def block_parts(d: int, block: int) -> list[tuple[int, int]]:
    """The column blocks of d columns as contiguous ranges [b0, b1), one per thread torch may use."""
    num_blocks = -(-d // block)
    per = -(-num_blocks // max(1, min(torch.get_num_threads(), num_blocks)))
    return [(b, min(num_blocks, b + per)) for b in range(0, num_blocks, per)]


def run_parts(kernel, parts: list[tuple[int, int]]) -> None:
    """``kernel(part_index, b0, b1)`` for every part, side by side in threads (the numba kernels release
    the GIL)."""
    if len(parts) == 1:
        kernel(0, *parts[0])
        return
    with ThreadPoolExecutor(len(parts)) as threads:
        list(threads.map(lambda item: kernel(item[0], *item[1]), enumerate(parts)))


def wanted_positions(mode: str, t: int) -> tuple[int, ...] | None:
    """Sorted positions a window reads at fixed places (None: it may read any)."""
    if mode in ("median", "lower"):
        return tuple(sorted({(t - 1) // 2, t // 2 if mode == "median" else (t - 1) // 2}))
    return None


def window_bounds(mode: str, t: int, k: int) -> None:
    if mode not in MODES:
        raise ValueError(f"order window mode must be one of {sorted(MODES)}, got {mode!r}")
    if mode == "trim" and not (k >= 0 and t - 2 * k >= 1):
        raise ValueError(f"trimming {k} per side of {t} values leaves none: needs t > 2k")
    if mode == "closest" and not 1 <= k <= t:
        raise ValueError(f"keeping the {k} values closest to the median of {t}: needs 1 <= k <= t")


def order_window(updates: torch.Tensor, mode: str, k: int = 0, rows: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """Per column of ``updates`` [n, d] (restricted to ``rows`` [t], sorted ascending, if given): the window
    statistic of ``mode`` (module docstring). Returns (vector [d] in the updates' dtype, counts [n] float64:
    how many columns used each row's value)."""
    n, d = updates.shape
    rows = torch.arange(n) if rows is None else rows.to("cpu", torch.int64)
    t = int(rows.numel())
    window_bounds(mode, t, k)
    if updates.device.type != "cpu" or numba is None:
        return _torch_window(updates.index_select(0, rows.to(updates.device)), rows, n, mode, k)
    if updates.dtype not in (torch.float32, torch.float64):  # half precisions: the kernel runs in float32
        vector, counts = order_window(updates.float(), mode, k, rows)
        return vector.to(updates.dtype), counts
    x = updates.contiguous().numpy()
    first, second = network(t, wanted_positions(mode, t))
    parts = block_parts(d, BLOCK)
    out = np.empty(d, dtype=x.dtype)
    tally = np.zeros((len(parts), n), dtype=np.int64)
    picked = rows.numpy()
    run_parts(lambda i, b0, b1: _window_kernel(x, picked, first, second, MODES[mode], k, out, tally[i], BLOCK, b0, b1),
              parts)
    counts = torch.from_numpy(tally.sum(axis=0).astype(np.float64))
    if mode in ("trim", "closest"):  # the tally counted dropped values: every row of ``rows`` had d
        counts = torch.zeros(n, dtype=torch.float64).index_fill_(0, rows, float(d)) - counts
    return torch.from_numpy(out), counts


def value_shares(counts: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Effective client weights from ``order_window``'s counts: each row's share of the values used, in the
    dtype and on the device of ``like``."""
    return (counts / counts.sum()).to(device=like.device, dtype=like.dtype)


def _torch_window(block: torch.Tensor, rows: torch.Tensor, n: int, mode: str, k: int
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same windows from ``torch.sort`` (for CUDA tensors): block [t, d] is the row subset."""
    t, d = block.shape
    s, order = block.sort(dim=0)
    used = rows.to(block.device)[order]  # original row of each sorted value
    mid_lo, mid_hi = (t - 1) // 2, t // 2
    counts = torch.zeros(n, dtype=torch.float64, device=block.device)
    if mode in ("median", "lower"):
        if mode == "lower" or mid_lo == mid_hi:
            positions, vector = [mid_lo], s[mid_lo]
        else:
            positions, vector = [mid_lo, mid_hi], (s[mid_lo] + s[mid_hi]) / 2
        for p in positions:
            counts += torch.bincount(used[p], minlength=n).to(torch.float64)
        return vector, counts.cpu()
    cols = torch.arange(d, device=block.device)
    lo = torch.full((d,), k if mode == "trim" else 0, device=block.device)
    hi = torch.full((d,), t - k - 1 if mode == "trim" else t - 1, device=block.device)
    if mode == "closest":
        med = s[mid_lo] if mid_lo == mid_hi else (s[mid_lo] + s[mid_hi]) / 2
        for _ in range(t - k):
            drop_lo = (s[lo, cols] - med).abs() > (s[hi, cols] - med).abs()
            lo, hi = lo + drop_lo.long(), hi - (~drop_lo).long()
    position = torch.arange(t, device=block.device)[:, None]
    keep = (position >= lo) & (position <= hi)  # [t, d]
    total = torch.where(keep, s, torch.zeros_like(s)).sum(dim=0, dtype=torch.float64)
    counts += torch.bincount(used[keep], minlength=n).to(torch.float64)
    return (total / (hi - lo + 1)).to(block.dtype), counts.cpu()
