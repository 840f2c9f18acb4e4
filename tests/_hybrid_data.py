"""Tiny synthetic collections for the training-engine tests (in memory, no files).

Each image holds one bright disk on a textured background; strong samples carry
its mask, weak samples a box around it (or, when corrupted, a box moved onto
empty background), tag samples an image-level tag. Built by the package's one
synthetic-collection factory (:mod:`napari_hybridseg.core.data.synthetic`).
"""

from __future__ import annotations

import numpy as np

from napari_hybridseg.core.data.collection import Collection, TagImplies
from napari_hybridseg.core.data.synthetic import (
    Spec,
    box_around,
    box_far_side,
    disk_rgb,
    point_at_centre,
    strong,
    synthetic_collection,
    tagged,
)


def disk_image(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    drawn = disk_rgb(size)(rng)
    return drawn.image, drawn.mask, drawn.disk


def make_collection(n_strong: int = 4, n_weak: int = 8, n_corrupt: int = 0, n_unlabeled: int = 0,
                    size: int = 48, seed: int = 0, points: bool = False, tags: bool = False) -> Collection:
    paint = disk_rgb(size)

    def weak_label(i: int):
        if i < n_corrupt:
            return box_far_side
        if points and i % 2:
            return point_at_centre
        if tags and i % 3 == 0:
            return tagged("lesion")
        return box_around

    specs = [Spec(f"s{i}", paint, strong) for i in range(n_strong)]
    specs += [Spec(f"w{i}", paint, weak_label(i)) for i in range(n_weak)]
    specs += [Spec(f"u{i}", paint) for i in range(n_unlabeled)]
    vocabulary = [("normal", TagImplies.ABSENT, None), ("lesion", TagImplies.PRESENT, 1)] if tags else []
    return synthetic_collection(specs, seed=seed, tags=vocabulary)
