"""Tiny synthetic collections for the training-engine tests (in memory, no files).

Each image holds one bright disk on a textured background; strong samples carry
its mask, weak samples a box around it (or, when corrupted, a box moved onto
empty background), tag samples an image-level tag.
"""

from __future__ import annotations

import numpy as np

from napari_hybridseg.core.data.collection import Box, Collection, Point, Sample, TagImplies


def disk_image(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray, tuple[int, int, int]]:
    rr, cc = np.mgrid[0:size, 0:size]
    r = int(rng.integers(size // 8, size // 5))
    cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
    mask = ((rr - cy) ** 2 + (cc - cx) ** 2 <= r * r).astype(np.uint8)
    img = rng.normal(0.3, 0.08, (size, size, 3))
    img[mask > 0] += np.array([0.5, 0.3, 0.1])
    return (np.clip(img, 0, 1) * 255).astype(np.uint8), mask, (cy, cx, r)


def make_collection(n_strong: int = 4, n_weak: int = 8, n_corrupt: int = 0, n_unlabeled: int = 0,
                    size: int = 48, seed: int = 0, points: bool = False, tags: bool = False) -> Collection:
    rng = np.random.default_rng(seed)
    coll = Collection()
    if tags:
        coll.ensure_tag("normal", TagImplies.ABSENT)
        coll.ensure_tag("lesion", TagImplies.PRESENT, 1)
    for i in range(n_strong):
        img, mask, _ = disk_image(rng, size)
        coll.add(Sample(f"s{i}", image=img, mask=mask))
    for i in range(n_weak):
        img, mask, (cy, cx, r) = disk_image(rng, size)
        s = Sample(f"w{i}", image=img, reference_mask=mask)
        if i < n_corrupt:
            # a box of the same size on the far side of the image: it says "polyp" where there is none
            oy, ox = size - 1 - cy, size - 1 - cx
            if abs(oy - cy) < 2 * r and abs(ox - cx) < 2 * r:
                ox = (cx + size // 2) % size
            s.boxes.append(Box(ox - r, oy - r, ox + r + 1, oy + r + 1))
            s.corrupted, s.corruption = True, "shifted"
        elif points and i % 2:
            s.points.append(Point(cx + 0.5, cy + 0.5))
        elif tags and i % 3 == 0:
            s.tags.append("lesion")
        else:
            s.boxes.append(Box(cx - r, cy - r, cx + r + 1, cy + r + 1))
        coll.add(s)
    for i in range(n_unlabeled):
        img, mask, _ = disk_image(rng, size)
        coll.add(Sample(f"u{i}", image=img, reference_mask=mask))
    return coll
