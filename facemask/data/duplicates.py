"""Exact and near-duplicate pairs among perceptual hashes, and the duplicate groups they form.

Near pairs are found by multi-index hashing (Norouzi et al., "Fast Search in Hamming Space with
Multi-Index Hashing", CVPR 2012): the hash is cut into `max_distance + 1` segments, and two hashes
within `max_distance` bits of each other must agree exactly on at least one segment (pigeonhole).
So only hashes sharing a segment value are compared, and the pairs found are exactly those of
the all-pairs comparison, in time that grows with the number of candidates instead of N^2.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from facemask.data.inspection import Inspection
from facemask.data.sources import PreparedData
from facemask.data.storage import stored_images


def pack(hashes: np.ndarray) -> np.ndarray:
    """(N, bits) booleans as (N, words) uint64, zero-padded to whole words."""
    hashes = np.asarray(hashes, dtype=bool)
    words = -(-hashes.shape[1] // 64)
    padded = np.zeros((hashes.shape[0], words * 64), dtype=bool)
    padded[:, : hashes.shape[1]] = hashes
    return np.packbits(padded, axis=1).view(np.uint64).reshape(hashes.shape[0], words)


def hamming(packed: np.ndarray, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    return np.bitwise_count(packed[i] ^ packed[j]).sum(axis=1, dtype=np.int64)


def _segment_ids(hashes: np.ndarray, start: int, stop: int) -> np.ndarray:
    """An integer id per hash for its bits [start, stop): equal ids exactly when the bits are equal."""
    segment = hashes[:, start:stop]
    if stop - start <= 63:
        weights = np.left_shift(np.uint64(1), np.arange(stop - start, dtype=np.uint64))
        return (segment.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)
    rows = np.ascontiguousarray(np.packbits(segment, axis=1))
    return np.unique(rows.view(np.dtype((np.void, rows.shape[1]))).ravel(), return_inverse=True)[1]


def _same_key_pairs(ids: np.ndarray) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
    """Every pair of positions whose ids are equal, in chunks; work is proportional to the pairs."""
    order = np.argsort(ids, kind="stable")
    ordered = ids[order]
    # Positions (in sorted order) that have a partner `offset` further on with the same id.
    active = np.flatnonzero(ordered[1:] == ordered[:-1])
    offset = 1
    while active.size:
        yield order[active], order[active + offset]
        offset += 1
        ahead = active + offset
        keep = ahead < len(ordered)
        active = active[keep]
        active = active[ordered[active + offset] == ordered[active]]


def near_pairs(hashes: np.ndarray, max_distance: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of rows of `hashes` ((N, bits) booleans) at Hamming distance <= max_distance,
    with their distances, sorted by (i, j)."""
    hashes = np.asarray(hashes, dtype=bool)
    n, bits = hashes.shape
    empty = np.empty(0, dtype=np.int64)
    if n < 2:
        return empty, empty, empty
    segments = min(max_distance + 1, bits)
    if bits // segments < 8:
        # Segments this short put most hashes in the same buckets: comparing all pairs is faster.
        return brute_force_pairs(hashes, max_distance)
    packed = pack(hashes)
    edges = [bits * s // segments for s in range(segments + 1)]
    found: List[np.ndarray] = []
    for start, stop in zip(edges[:-1], edges[1:]):
        ids = _segment_ids(hashes, start, stop)
        for a, b in _same_key_pairs(ids):
            i, j = np.minimum(a, b), np.maximum(a, b)
            close = hamming(packed, i, j) <= max_distance
            found.append(i[close].astype(np.int64) * n + j[close])
    keys = np.unique(np.concatenate(found)) if found else empty
    i, j = keys // n, keys % n
    return i, j, hamming(packed, i, j)


def brute_force_pairs(hashes: np.ndarray, max_distance: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The all-pairs comparison `near_pairs` must equal (for tests and the benchmark)."""
    packed = pack(hashes)
    out_i, out_j = [], []
    for i in range(len(packed) - 1):
        distance = np.bitwise_count(packed[i] ^ packed[i + 1:]).sum(axis=1)
        close = np.flatnonzero(distance <= max_distance)
        out_i.append(np.full(len(close), i, dtype=np.int64))
        out_j.append(close.astype(np.int64) + i + 1)
    if not out_i:
        empty = np.empty(0, dtype=np.int64)
        return empty, empty, empty
    i, j = np.concatenate(out_i), np.concatenate(out_j)
    return i, j, hamming(packed, i, j)


def groups(n: int, pairs: Sequence[Tuple[int, int]]) -> np.ndarray:
    """Connected components of the duplicate graph: one group id per item, singletons included."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if not len(pairs):
        return np.arange(n)
    i, j = np.asarray(pairs, dtype=np.int64).T
    graph = coo_matrix((np.ones(len(i), dtype=np.int8), (i, j)), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def image_records(given: PreparedData, inspections: Dict[str, List[Inspection]]) -> List[Dict[str, Any]]:
    """One record per stored image of the given splits, in split and row order."""
    out = []
    for split, ds in given.splits.items():
        paths: List[Optional[str]] = []
        for chunk in stored_images(ds, given.image_column):
            paths.extend(chunk.field("path").to_pylist())
        for index, (path, label, found) in enumerate(zip(paths, ds[given.label_column], inspections[split])):
            out.append({"split": split, "index": index, "file": path or f"{split}[{index}]",
                        "label": given.labels[label], "inspection": found})
    return out


def duplicate_pairs(recs: List[Dict[str, Any]], max_distance: int) -> Tuple[List[Dict], List[Dict]]:
    """Exact (same bytes) and near (perceptual-hash distance <= max_distance) pairs, by record position."""
    ok = [k for k, r in enumerate(recs) if r["inspection"].status == "ok"]  # bad files are reported as such
    by_hash = defaultdict(list)
    for k in ok:
        by_hash[recs[k]["inspection"].sha256].append(k)
    exact = [{"i": g[a], "j": g[b], "distance": 0} for g in by_hash.values()
             for a in range(len(g)) for b in range(a + 1, len(g))]
    hashed = [k for k in ok if recs[k]["inspection"].phash is not None]
    near = []
    if len(hashed) > 1:
        i, j, distance = near_pairs(np.stack([recs[k]["inspection"].phash for k in hashed]), max_distance)
        for a, b, d in zip(i.tolist(), j.tolist(), distance.tolist()):
            a, b = hashed[a], hashed[b]
            if recs[a]["inspection"].sha256 != recs[b]["inspection"].sha256:  # listed as exact already
                near.append({"i": a, "j": b, "distance": int(d)})
    return exact, near
