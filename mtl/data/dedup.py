"""Near-duplicate grouping of perceptual hashes, and joining of group labels.

Two images are near duplicates when the Hamming distance of their 64-bit pHashes is at most
``d``. Comparing every pair is quadratic, so candidate pairs come from multi-index hashing: the
64 bits are cut into ``d + 1`` blocks and, by the pigeonhole principle, two hashes within
distance ``d`` agree exactly on at least one block. Only hashes sharing a block value are
compared. Groups are the connected components of the near-duplicate graph (transitive: if A~B
and B~C, A, B and C form one group), which is what keeping a group inside one split needs.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

__all__ = ["hamming", "join_groups", "near_duplicate_groups", "parse_hashes"]

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


def near_duplicate_groups(hashes: np.ndarray, max_distance: int,
                          block_limit: int = 4096) -> np.ndarray:
    """Component label (smallest member index) per hash; singletons label themselves.

    ``max_distance < 0`` disables grouping. ``block_limit`` bounds the size of the distance
    matrix computed at once, so memory stays flat however large a bucket gets.
    """
    n = len(hashes)
    labels = np.arange(n, dtype=np.int64)
    if max_distance < 0 or n < 2:
        return labels
    hashes = np.asarray(hashes, dtype=np.uint64)
    uniq, inverse = np.unique(hashes, return_inverse=True)
    m = len(uniq)
    # Identical hashes: every member joins the node of its unique value (nodes n..n+m-1).
    rows = [np.arange(n, dtype=np.int64)]
    cols = [n + inverse.astype(np.int64)]
    if max_distance > 0 and m > 1:
        blocks = min(max_distance + 1, 64)
        edges = np.linspace(0, 64, blocks + 1).astype(int)
        found: list[np.ndarray] = []
        for lo, hi in itertools.pairwise(edges):
            mask = np.uint64((1 << (hi - lo)) - 1)
            key = (uniq >> np.uint64(lo)) & mask
            order = np.argsort(key, kind="stable")
            sorted_key = key[order]
            starts = np.flatnonzero(np.r_[True, sorted_key[1:] != sorted_key[:-1]])
            ends = np.r_[starts[1:], m]
            for s, e in zip(starts, ends, strict=True):
                if e - s < 2:
                    continue
                members = order[s:e]
                for c0 in range(0, len(members), block_limit):
                    chunk = members[c0:c0 + block_limit]
                    d = hamming(uniq[chunk][:, None], uniq[members][None, :])
                    ii, jj = np.nonzero(d <= max_distance)
                    i, j = chunk[ii], members[jj]
                    keep = i < j
                    found.append(np.stack([i[keep], j[keep]], axis=1).astype(np.int64))
        if found:
            arr = np.concatenate(found)
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
