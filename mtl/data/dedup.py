"""Near-duplicate grouping of perceptual hashes, and joining of group labels.

Two images are near duplicates when the Hamming distance of their 64-bit pHashes is at most
``d``. Comparing every pair is quadratic, so candidate pairs come from multi-index hashing: the
64 bits are cut into ``b`` blocks and, by the pigeonhole principle, two hashes within distance
``d`` agree within ``d // b`` bits on at least one block; only hashes whose block values are
that close are compared. ``b = d + 1`` blocks (exact block match) is cheapest for a few
thousand hashes but compares ``~n**2 / 2**(64 / b)`` pairs, quadratic in ``n``; so the number of
blocks is chosen per call from the hashes themselves (``_plan``), wider blocks probed within a
radius once ``n`` makes that cheaper. Groups are the connected components of the
near-duplicate graph (transitive: if A~B and B~C, A, B and C form one group), which is what
keeping a group inside one split needs. The result never depends on the plan.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["NearDuplicateStats", "hamming", "join_groups", "near_duplicate_groups",
           "parse_hashes"]

_BYTE_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _popcount(x: np.ndarray) -> np.ndarray:
    """Number of set bits of each uint64."""
    if hasattr(np, "bitwise_count"):  # numpy >= 2.0
        return np.bitwise_count(x).astype(np.int64)
    b = np.ascontiguousarray(x, dtype=np.uint64).view(np.uint8).reshape(*x.shape, 8)
    return _BYTE_POPCOUNT[b].sum(axis=-1).astype(np.int64)


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Element-wise (broadcast) Hamming distance of uint64 hashes."""
    return _popcount(np.bitwise_xor(a, b))


def parse_hashes(hexes: Sequence[str]) -> np.ndarray:
    """Hex strings (as in the manifest's ``phash`` column) to a uint64 array."""
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


@dataclass
class NearDuplicateStats:
    """Work done by one ``near_duplicate_groups`` call (filled in when passed as ``stats``).

    ``unique_hashes``: distinct hashes searched; ``blocks`` and ``radius``: the plan chosen
    (hashes cut into ``blocks`` blocks, each searched within ``radius`` bits; 0 blocks: all
    pairs compared); ``probes``: block
    values looked up; ``comparisons``: Hamming distances computed (all pairs would be
    ``unique_hashes * (unique_hashes - 1) / 2``); ``pairs``: pairs of distinct hashes within
    the distance.
    """

    unique_hashes: int = 0
    blocks: int = 0
    radius: int = 0
    probes: int = 0
    comparisons: int = 0
    pairs: int = 0


# A probe (two look-ups in a sorted block column) costs about as much as this many
# distance computations; only used to choose between plans, never for correctness.
_PROBE_COST = 2
_MAX_FLIPS = 4096  # plans needing more block values per hash and block are not considered
_PLAN_SAMPLE = 1024  # hashes whose candidates are counted to estimate a plan's cost
_ALL_PAIRS_COST = 0.25  # a distance in the all-pairs plan (contiguous, no gathers), same unit
_TABLE_BITS = 22  # blocks this narrow get a direct table of bucket starts (<= 32 MiB)


def _block_edges(blocks: int) -> list[tuple[int, int]]:
    """Bit ranges ``[lo, hi)`` of ``blocks`` nearly equal blocks of the 64 bits."""
    edges = np.linspace(0, 64, blocks + 1).astype(int)
    return list(itertools.pairwise(int(e) for e in edges))


def _flips(width: int, radius: int) -> np.ndarray:
    """Every ``width``-bit value with at most ``radius`` bits set (0 first), as uint64."""
    out = [0]
    for k in range(1, min(radius, width) + 1):
        out += [sum(1 << b for b in bits) for bits in itertools.combinations(range(width), k)]
    return np.array(out, dtype=np.uint64)


def _n_flips(width: int, radius: int) -> int:
    return sum(math.comb(width, k) for k in range(min(radius, width) + 1))


class _Block:
    """One block of the hashes, sorted by its value, for range look-ups."""

    def __init__(self, uniq: np.ndarray, lo: int, hi: int) -> None:
        self.width = hi - lo
        self.key = (uniq >> np.uint64(lo)) & np.uint64((1 << self.width) - 1)  # [m]
        self.order = np.argsort(self.key, kind="stable")  # sorted position -> hash index
        self.sorted = self.key[self.order]
        self.pos = np.empty_like(self.order)
        self.pos[self.order] = np.arange(len(self.order))  # hash index -> sorted position
        # Narrow blocks: a table of bucket starts per block value ([2**width + 1]), so a
        # look-up is two reads instead of two binary searches at random places.
        self.first: np.ndarray | None = None
        # Only when the table is not much larger than the hashes: building it would cost more
        # than binary searches save on a few thousand hashes.
        if self.width <= _TABLE_BITS and (1 << self.width) <= 16 * len(uniq):
            counts = np.bincount(self.key.astype(np.int64), minlength=1 << self.width)
            self.first = np.concatenate([[0], np.cumsum(counts)])

    def _bounds(self, value: np.ndarray, side: str) -> np.ndarray:
        """Sorted position of the first hash with block value ``value`` (``left``) or after
        the last (``right``)."""
        if self.first is not None:
            return self.first[value.astype(np.int64) + (side == "right")]
        return np.searchsorted(self.sorted, value, side=side)  # type: ignore[call-overload]

    def ranges(self, rows: np.ndarray, flip: np.uint64) -> tuple[np.ndarray, np.ndarray]:
        """Sorted-position ranges ``[start, stop)`` of the hashes whose block value is
        ``key ^ flip`` for each hash in ``rows``, each candidate pair generated once:
        ``flip == 0`` gives only later positions in the same bucket, ``flip != 0`` only rows
        whose probed value is larger than their own (the other row finds the pair otherwise).
        """
        key = self.key[rows]
        if flip == 0:
            start = self.pos[rows] + 1
            stop = self._bounds(key, "right")
        else:
            probe = key ^ flip
            start = self._bounds(probe, "left")
            stop = self._bounds(probe, "right")
            stop = np.where(probe > key, stop, start)
        return start, stop


def _plan(uniq: np.ndarray, max_distance: int) -> tuple[int, int]:
    """Number of blocks and per-block radius that minimise the estimated work; ``(0, 0)``:
    compare all pairs (cheaper than any index for large distances or few hashes).

    Pigeonhole: two hashes within distance ``d`` cut into ``b`` blocks agree within
    ``d // b`` bits on at least one block. ``b = d + 1`` (exact block match) is cheapest for
    few hashes, but its candidate count grows as ``n**2 / 2**(64 / b)``: quadratic. Wider blocks
    (fewer of them, each probed within a radius) cost more look-ups per hash but far fewer
    candidates once ``n`` is large: multi-index hashing (Norouzi et al., "Fast Search in Hamming
    Space with Multi-Index Hashing", CVPR 2012) with the block width grown with ``n``. The
    candidates of each plan are counted on a sample of the hashes, so skewed (real) pHashes
    are costed as they are, not as uniform.
    """
    n = len(uniq)
    sample = np.arange(0, n, max(1, n // _PLAN_SAMPLE))
    best: tuple[float, int, int] = (_ALL_PAIRS_COST * n * (n - 1) / 2, 0, 0)
    for blocks in range(min(max_distance + 1, 64), 0, -1):
        radius = max_distance // blocks
        edges = _block_edges(blocks)
        flips = sum(_n_flips(hi - lo, radius) for lo, hi in edges)  # look-ups per hash
        if max(_n_flips(hi - lo, radius) for lo, hi in edges) > _MAX_FLIPS:
            continue
        cost = float(_PROBE_COST * flips * n)
        if cost >= best[0]:
            continue
        cand = 0
        for lo, hi in edges:
            block = _Block(uniq, lo, hi)
            for flip in _flips(hi - lo, radius):
                start, stop = block.ranges(sample, flip)
                cand += int((stop - start).sum())
        cost += cand * n / len(sample)
        if cost < best[0]:
            best = (cost, blocks, radius)
    return best[1], best[2]


def near_duplicate_groups(hashes: np.ndarray, max_distance: int, chunk: int = 1 << 20,
                          stats: NearDuplicateStats | None = None) -> np.ndarray:
    """Component label (smallest member index) per hash; singletons label themselves.

    ``max_distance < 0`` disables grouping. ``chunk`` bounds the number of distances
    computed at once, so memory stays flat however large a bucket gets. ``stats``, when
    given, receives the work done (see ``NearDuplicateStats``).
    """
    n = len(hashes)
    labels = np.arange(n, dtype=np.int64)
    if max_distance < 0 or n < 2:
        return labels
    hashes = np.asarray(hashes, dtype=np.uint64)
    uniq, inverse = np.unique(hashes, return_inverse=True)
    m = len(uniq)
    if stats is not None:
        stats.unique_hashes += m
    # Identical hashes: every member joins the node of its unique value (nodes n..n+m-1).
    rows = [np.arange(n, dtype=np.int64)]
    cols = [n + inverse.astype(np.int64)]
    if max_distance > 0 and m > 1:
        n_blocks, radius = _plan(uniq, max_distance)
        if stats is not None:
            stats.blocks, stats.radius = n_blocks, radius
        found: list[np.ndarray] = []
        every = np.arange(m)
        step = max(1, chunk // m)
        for a in range(0, m, step) if n_blocks == 0 else ():  # all pairs, rows a..b vs a..m
            d = hamming(uniq[a:a + step, None], uniq[None, a:])  # [rows, m - a]
            if stats is not None:
                stats.comparisons += d.size
            ii, jj = np.nonzero(d <= max_distance)
            keep = jj > ii  # j > i (both offset by a): each pair once, no self-pairs
            found.append(np.stack([ii[keep] + a, jj[keep] + a], axis=1).astype(np.int64))
        for lo, hi in _block_edges(n_blocks) if n_blocks else ():
            block = _Block(uniq, lo, hi)
            for flip in _flips(hi - lo, radius):
                start, stop = block.ranges(every, flip)
                counts = stop - start  # [m] candidates of each hash for this flip
                if stats is not None:
                    stats.probes += m
                # Rows in pieces of at most ``chunk`` candidates (a single row may exceed it).
                ends = np.cumsum(counts)
                cuts = np.searchsorted(ends, np.arange(chunk, ends[-1], chunk), side="left")
                for a, b in itertools.pairwise([0, *(cuts + 1).tolist(), m]):
                    if a >= b:
                        continue
                    c = counts[a:b]
                    total = int(c.sum())
                    if total == 0:
                        continue
                    i = np.repeat(every[a:b], c)  # [total] hash index of each candidate
                    # sorted position of each candidate: its row's start plus its rank
                    offset = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
                    j = block.order[np.repeat(start[a:b], c) + offset]
                    if stats is not None:
                        stats.comparisons += total
                    near = hamming(uniq[i], uniq[j]) <= max_distance
                    pair = np.sort(np.stack([i[near], j[near]], axis=1), axis=1)
                    found.append(pair.astype(np.int64))
        if found:
            arr = np.concatenate(found)
            if stats is not None:  # a pair agreeing on several blocks is found once per block
                stats.pairs += len(np.unique(arr, axis=0))
            rows.append(n + arr[:, 0])
            cols.append(n + arr[:, 1])
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n + m, n + m))
    _, comp = connected_components(graph, directed=False)
    comp = comp[:n]
    first = pd.Series(np.arange(n)).groupby(comp).transform("min").to_numpy()
    return first.astype(np.int64)


def join_groups(*labelings: Sequence[object]) -> np.ndarray:
    """Join several group labelings of the same rows (connected components of their union).

    Each labeling assigns a group key (any hashable, ``None`` = own group) to every row; two
    rows end in one group when any labeling puts them together, directly or through others.
    Returns the smallest row index of each row's joined group.
    """
    n = len(labelings[0]) if labelings else 0
    rows: list[np.ndarray] = [np.arange(n, dtype=np.int64)]
    cols: list[np.ndarray] = [np.arange(n, dtype=np.int64)]
    for lab in labelings:
        keys = pd.Series(list(lab), dtype=object)
        present = keys.notna().to_numpy()
        codes, _ = pd.factorize(keys[present])
        idx = np.flatnonzero(present)
        first = pd.Series(idx).groupby(codes).transform("min").to_numpy()
        rows.append(idx)
        cols.append(first.astype(np.int64))
    r, c = np.concatenate(rows), np.concatenate(cols)
    graph = coo_matrix((np.ones(len(r), dtype=np.int8), (r, c)), shape=(n, n))
    _, comp = connected_components(graph, directed=False)
    return pd.Series(np.arange(n)).groupby(comp).transform("min").to_numpy().astype(np.int64)
