"""Seeded, group-aware train / validation / test split for the benchmark.

Images of one group (a patient, a video sequence, a near-duplicate cluster)
always land in the same part, so the test set never holds a picture that
training has seen in another frame or under another name. Groups come from a
CSV (``id,group``), from ``Sample.group``, and from
:func:`near_duplicate_groups`, which clusters images whose small thumbnails
are almost identical (BUSI holds the same picture under two class names).

This module is numpy-only.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Split",
    "merge_groups",
    "near_duplicate_groups",
    "read_groups_csv",
    "split_ids",
    "thumbnail",
]

PARTS = ("train", "val", "test")


@dataclass
class Split:
    """Ids per part, in a seeded order, and the groups that decided it."""

    train: list[str]
    val: list[str]
    test: list[str]
    seed: int
    groups: dict[str, str] = field(default_factory=dict)  # id -> group (only ids that share a group)

    def part_of(self, sample_id: str) -> str:
        for name in PARTS:
            if sample_id in getattr(self, name):
                return name
        raise KeyError(f"{sample_id!r} is in no part of the split")

    def to_dict(self) -> dict:
        return {"seed": self.seed, "train": list(self.train), "val": list(self.val), "test": list(self.test),
                "groups": dict(self.groups)}

    @classmethod
    def from_dict(cls, data: Mapping) -> Split:
        return cls(train=list(data["train"]), val=list(data["val"]), test=list(data["test"]),
                   seed=int(data["seed"]), groups=dict(data.get("groups", {})))


def read_groups_csv(path: str | Path) -> dict[str, str]:
    """Read ``id,group`` rows (a header row is allowed) into ``{id: group}``.

    The first column is the image id (or file stem), the second its group
    (patient, video). Blank lines and lines starting with ``#`` are skipped.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: groups CSV not found (expected rows 'image_id,group')")
    out: dict[str, str] = {}
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for lineno, row in enumerate(csv.reader(fh), start=1):
            if not row or not row[0].strip() or row[0].lstrip().startswith("#"):
                continue
            if len(row) < 2:
                raise ValueError(f"{path}:{lineno}: expected 'image_id,group', got {row!r}")
            key, group = row[0].strip(), row[1].strip()
            if lineno == 1 and key.lower() in ("id", "image_id", "image", "sample", "sample_id"):
                continue  # header
            out[key] = group
    if not out:
        raise ValueError(f"{path}: no 'image_id,group' rows found")
    return out


def thumbnail(image: np.ndarray, size: int = 24) -> np.ndarray:
    """A ``size x size`` greyscale block-mean thumbnail, zero mean and unit norm.

    Cheap and robust to resizing and JPEG noise: what near-duplicate
    detection needs, not a visual preview.
    """
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 3:
        arr = arr[..., :3].mean(axis=2)
    h, w = arr.shape
    rows = (np.arange(h) * size // h).astype(int)
    cols = (np.arange(w) * size // w).astype(int)
    # block sums with bincount (np.add.at did the same 20x slower: 28 s of a Kvasir-SEG benchmark run)
    cells = (rows[:, None] * size + cols[None, :]).ravel()
    sums = np.bincount(cells, weights=arr.ravel().astype(np.float64), minlength=size * size).reshape(size, size)
    counts = np.outer(np.bincount(rows, minlength=size), np.bincount(cols, minlength=size)).astype(np.float64)
    t = sums / np.maximum(counts, 1.0)
    t = t - t.mean()
    norm = np.linalg.norm(t)
    return (t / norm if norm > 0 else t).astype(np.float32).ravel()


def _find(parent: list[int], i: int) -> int:
    """The root of ``i`` in a union-find forest (with path halving)."""
    while parent[i] != i:
        parent[i] = parent[parent[i]]
        i = parent[i]
    return i


def near_duplicate_groups(thumbs: Mapping[str, np.ndarray], threshold: float = 0.985) -> dict[str, str]:
    """Cluster ids whose thumbnails correlate at ``threshold`` or more.

    Parameters
    ----------
    thumbs : mapping of id -> 1D array
        Outputs of :func:`thumbnail` (zero mean, unit norm), all the same size.
    threshold : float
        Pearson correlation above which two images count as the same picture.
        Default 0.985: re-saved or re-labelled copies score above 0.99, distinct
        ultrasound frames of similar anatomy rarely above 0.95.

    Returns
    -------
    dict
        ``{id: group}`` for the ids that have at least one near-duplicate; the
        group is named after the cluster's first id in sorted order.
    """
    ids = sorted(thumbs)
    if len(ids) < 2:
        return {}
    mat = np.stack([np.asarray(thumbs[i], np.float32) for i in ids])
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        return _find(parent, i)

    # blocks of rows keep memory flat for large collections
    for start in range(0, len(ids), 512):
        corr = mat[start:start + 512] @ mat.T
        rows, cols = np.nonzero(corr >= threshold)
        for r, c in zip(rows + start, cols):
            if c > r:
                ra, rb = find(int(r)), find(int(c))
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
    clusters: dict[int, list[str]] = {}
    for i, sid in enumerate(ids):
        clusters.setdefault(find(i), []).append(sid)
    return {sid: f"dup:{members[0]}" for members in clusters.values() if len(members) > 1 for sid in members}


def merge_groups(ids: Iterable[str], *groupings: Mapping[str, str]) -> dict[str, str]:
    """Combine several ``{id: group}`` maps: ids linked by any of them share one group.

    Ids that appear in no map get their own singleton group. The result maps
    every id to a canonical group name (the smallest id of its component).
    """
    ids = list(ids)
    index = {sid: i for i, sid in enumerate(ids)}
    parent = list(range(len(ids)))

    def find(i: int) -> int:
        return _find(parent, i)

    for grouping in groupings:
        first: dict[str, int] = {}
        for sid, group in grouping.items():
            if sid not in index or group is None or group == "":
                continue
            key = str(group)
            if key in first:
                ra, rb = find(first[key]), find(index[sid])
                if ra != rb:
                    parent[max(ra, rb)] = min(ra, rb)
            else:
                first[key] = index[sid]
    members: dict[int, list[str]] = {}
    for sid in ids:
        members.setdefault(find(index[sid]), []).append(sid)
    return {sid: min(m) for m in members.values() for sid in m}


def split_ids(
    ids: Sequence[str],
    *,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2),
    groups: Mapping[str, str] | None = None,
    strata: Mapping[str, str] | None = None,
) -> Split:
    """Split ids into train / validation / test, keeping each group whole.

    Parameters
    ----------
    ids : sequence of str
        The sample ids (order does not matter: they are sorted first, so the
        split depends only on the set of ids, the seed and the groups).
    seed : int
        Seed of the shuffle. Default 0.
    fractions : (float, float, float)
        Target fractions of train, validation and test. Default 70/10/20.
    groups : mapping id -> group, optional
        Ids sharing a group go to the same part. Ids absent from the map are
        their own group.
    strata : mapping id -> stratum, optional
        E.g. the class tag: each stratum is split 70/10/20 on its own, so the
        test set holds every class in proportion. A group belongs to the
        stratum of most of its members.

    Returns
    -------
    Split
        Exact target counts when every group is a single image; otherwise
        as close as whole groups allow (groups are dealt in a seeded order to
        the part furthest below its target).
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or sum(fractions) <= 0:
        raise ValueError(f"fractions must be three non-negative numbers (train, val, test), got {fractions}")
    ids = sorted(set(ids))
    n = len(ids)
    if n < 3:
        raise ValueError(f"need at least 3 images to split into train/validation/test, got {n}")
    frac = np.asarray(fractions, float) / float(sum(fractions))

    def targets_for(count: int) -> np.ndarray:
        n_test, n_val = int(round(frac[2] * count)), int(round(frac[1] * count))
        if frac[2] > 0 and count >= 3:
            n_test = max(n_test, 1)
        if frac[1] > 0 and count >= 3:
            n_val = max(n_val, 1)
        return np.array([count - n_val - n_test, n_val, n_test], float)

    canon = merge_groups(ids, groups or {})
    members: dict[str, list[str]] = {}
    for sid in ids:
        members.setdefault(canon[sid], []).append(sid)
    names = sorted(members)
    rng = np.random.default_rng(seed)
    order = [names[i] for i in rng.permutation(len(names))]
    # large groups first (in seeded order among equals) so they cannot overshoot a small part at the end
    order.sort(key=lambda g: -len(members[g]))

    by_stratum: dict[str, list[str]] = {}
    for g in order:
        labels = [str((strata or {}).get(sid, "")) for sid in members[g]]
        by_stratum.setdefault(max(sorted(set(labels)), key=labels.count), []).append(g)

    parts: list[list[str]] = [[], [], []]
    for stratum in sorted(by_stratum):
        chunk = by_stratum[stratum]
        targets = targets_for(sum(len(members[g]) for g in chunk))
        counts = np.zeros(3)
        for g in chunk:
            deficit = targets - counts
            # ties go to the part with the larger target (train first), so rounding is stable
            k = int(np.lexsort((-targets, -deficit))[0])
            parts[k].extend(members[g])
            counts[k] += len(members[g])
    shared = {sid: canon[sid] for sid in ids if len(members[canon[sid]]) > 1}
    return Split(train=parts[0], val=parts[1], test=parts[2], seed=int(seed), groups=shared)
