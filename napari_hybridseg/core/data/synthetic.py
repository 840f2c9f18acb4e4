"""One seeded factory of synthetic collections: the demo project, the tests' small collections, speed runs.

A collection is described as a list of :class:`Spec` (one per sample: how its
image is painted and which labels it gets) and steps run in between (e.g.
corrupting some weak labels); :func:`synthetic_collection` runs them in order
with one random generator, so the same list and seed give the same bits.
Painters and labellers for disks on noise are here; the demo's colonoscopy-like
and AS-OCT-like painters and its recipe are in :mod:`.sample_data`.

Example: four strong disks, then eight with a box around the disk::

    specs = [Spec(f"s{i}", disk_rgb(48), strong) for i in range(4)]
    specs += [Spec(f"w{i}", disk_rgb(48), box_around) for i in range(8)]
    collection = synthetic_collection(specs, seed=0)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from napari_hybridseg.core.data.collection import Box, ClassInfo, Collection, Point, Sample, TagImplies

__all__ = [
    "Drawn",
    "Spec",
    "box_around",
    "box_far_side",
    "box_on_background",
    "disk_grey",
    "disk_rgb",
    "small_disk_rgb",
    "point_at_centre",
    "strong",
    "synthetic_collection",
    "tagged",
]


@dataclass
class Drawn:
    """What a painter drew: the image, its true mask, and where its object is."""

    image: np.ndarray
    mask: np.ndarray
    #: (cy, cx, r) of the disk, for painters that draw one
    disk: tuple[Any, Any, Any] | None = None
    #: landmark clicks ``(x, y)`` (the AS-OCT painter's scleral spurs)
    points: list[tuple[float, float]] = field(default_factory=list)


Painter = Callable[[np.random.Generator], Drawn]
#: sets the labels of a new sample from what was drawn (the mask, boxes, points, tags, corruption)
Labeller = Callable[[Sample, Drawn], None]
#: a step between samples: ``step(collection, rng)`` (e.g. corrupting labels already made)
Step = Callable[[Collection, np.random.Generator], None]


@dataclass
class Spec:
    """One sample of a synthetic collection.

    Attributes
    ----------
    id : str
        The sample id.
    paint : callable
        ``paint(rng) -> Drawn``.
    label : callable, optional
        ``label(sample, drawn)``; ``None`` leaves the sample unlabeled.
    reference : bool
        Keep the true mask as ``reference_mask`` when the sample ends up without a strong mask.
    meta : dict
        The sample's meta (copied).
    """

    id: str
    paint: Painter
    label: Labeller | None = None
    reference: bool = True
    meta: dict = field(default_factory=dict)


def synthetic_collection(items: Iterable[Spec | Step], *, seed: int = 0,
                         classes: Sequence[ClassInfo] | None = None,
                         tags: Sequence[tuple[str, TagImplies | str, int | None]] = (),
                         meta: dict | None = None) -> Collection:
    """Build a collection from ``items`` (samples and steps, run in order) with one seeded generator.

    Parameters
    ----------
    items : iterable of Spec or callable
        Each :class:`Spec` paints and labels one sample; each callable is a
        step ``step(collection, rng)`` run at that point.
    seed : int
        Seeds the one ``numpy.random.default_rng`` every painter and step draws from.
    classes : sequence of ClassInfo, optional
        Default: the collection's default (one class ``lesion`` = 1).
    tags : sequence of (name, implies, class_value)
        The tag vocabulary, defined before any sample.
    meta : dict, optional
        The collection's meta.
    """
    rng = np.random.default_rng(seed)
    coll = Collection() if classes is None else Collection(classes=list(classes))
    for name, implies, class_value in tags:
        coll.ensure_tag(name, implies, class_value)
    coll.meta.update(meta or {})
    for item in items:
        if not isinstance(item, Spec):
            item(coll, rng)
            continue
        drawn = item.paint(rng)
        sample = coll.add(Sample(item.id, image=drawn.image, meta=dict(item.meta)))
        if item.label is not None:
            item.label(sample, drawn)
        if item.reference and sample.mask is None:
            sample.reference_mask = drawn.mask
    return coll


# ----------------------------------------------------------------------------------------------
# painters: a bright disk on noise
# ----------------------------------------------------------------------------------------------
def disk_rgb(size: int = 48) -> Painter:
    """RGB uint8 image: one disk (radius size/8..size/5) brighter and warmer than a textured background."""

    def paint(rng: np.random.Generator) -> Drawn:
        rr, cc = np.mgrid[0:size, 0:size]
        r = int(rng.integers(size // 8, size // 5))
        cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
        mask = ((rr - cy) ** 2 + (cc - cx) ** 2 <= r * r).astype(np.uint8)
        img = rng.normal(0.3, 0.08, (size, size, 3))
        img[mask > 0] += np.array([0.5, 0.3, 0.1])
        return Drawn((np.clip(img, 0, 1) * 255).astype(np.uint8), mask, (cy, cx, r))

    return paint


def small_disk_rgb(size: int = 64, area: tuple[float, float] = (0.01, 0.03)) -> Painter:
    """RGB uint8 image: one small disk covering a fraction ``area`` (uniform in the range) of the image.

    For the size prior's test: the structures a single click labels (the iris of
    an AS-OCT scan is about 2% of it). ``Drawn.disk`` holds float ``(cy, cx, r)``.
    """

    def paint(rng: np.random.Generator) -> Drawn:
        rr, cc = np.mgrid[0:size, 0:size]
        r = float(np.sqrt(rng.uniform(*area) * size * size / np.pi))
        cy, cx = (float(v) for v in rng.uniform(r + 2, size - r - 2, 2))
        mask = ((rr + 0.5 - cy) ** 2 + (cc + 0.5 - cx) ** 2 <= r * r).astype(np.uint8)
        img = rng.normal(0.3, 0.08, (size, size, 3))
        img[mask > 0] += np.array([0.5, 0.3, 0.1])
        return Drawn((np.clip(img, 0, 1) * 255).astype(np.uint8), mask, (cy, cx, r))

    return paint


def disk_grey(size: int = 48) -> Painter:
    """Greyscale uint8 image: one disk of radius size/6 in the middle half, brighter than the noise."""

    def paint(rng: np.random.Generator) -> Drawn:
        rr, cc = np.mgrid[0:size, 0:size]
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        r = size // 6
        disk = (rr - cy) ** 2 + (cc - cx) ** 2 <= r**2
        image = (rng.normal(60, 10, (size, size)) + 120 * disk).clip(0, 255).astype(np.uint8)
        return Drawn(image, disk.astype(np.uint8), (cy, cx, r))

    return paint


# ----------------------------------------------------------------------------------------------
# labellers
# ----------------------------------------------------------------------------------------------
def strong(sample: Sample, drawn: Drawn) -> None:
    """The true mask as the strong mask."""
    sample.mask = drawn.mask


def box_around(sample: Sample, drawn: Drawn) -> None:
    """A tight box around the disk."""
    cy, cx, r = drawn.disk
    sample.boxes.append(Box(cx - r, cy - r, cx + r + 1, cy + r + 1))


def box_far_side(sample: Sample, drawn: Drawn) -> None:
    """A wrong box: the disk's size, on the far side of the image ("polyp" where there is none)."""
    cy, cx, r = drawn.disk
    size = drawn.mask.shape[0]
    oy, ox = size - 1 - cy, size - 1 - cx
    if abs(oy - cy) < 2 * r and abs(ox - cx) < 2 * r:
        ox = (cx + size // 2) % size
    oy, ox = (min(max(c, r), size - 1 - r) for c in (oy, ox))  # wholly inside the image, like a drawn box
    sample.boxes.append(Box(ox - r, oy - r, ox + r + 1, oy + r + 1))
    sample.corrupted, sample.corruption = True, "shifted"


def box_on_background(sample: Sample, drawn: Drawn) -> None:
    """A wrong box in the top-left corner, on background."""
    sample.boxes.append(Box(0, 0, 6, 6))
    sample.corrupted, sample.corruption = True, "background"


def point_at_centre(sample: Sample, drawn: Drawn, *, background: bool = False) -> None:
    """A click at the disk's centre (and, with ``background``, a background click near the corner)."""
    cy, cx, _r = drawn.disk
    sample.points.append(Point(cx + 0.5, cy + 0.5))
    if background:
        sample.points.append(Point(2.5, 2.5, positive=False))


def tagged(*names: str) -> Labeller:
    """A labeller that gives the sample the image-level tags ``names``."""

    def label(sample: Sample, drawn: Drawn) -> None:
        sample.tags.extend(names)

    return label
