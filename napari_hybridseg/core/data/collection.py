"""The data model of an annotated collection.

A :class:`Collection` holds :class:`Sample` objects, a class list and a tag
vocabulary. A sample's *role* (strong / weak / unlabeled) is derived from its
annotations and never stored, so it can never disagree with them.

Coordinates follow the image: ``x`` is the column, ``y`` the row, in pixels of
the sample's original image. A pixel ``(row, col)`` covers the continuous
square ``[col, col + 1) x [row, row + 1)``; a box ``(x0, y0, x1, y1)`` covers
the pixels whose centres lie inside it, so a box around exactly one pixel at
``(r, c)`` is ``(c, r, c + 1, r + 1)``.

This module is Qt-free and napari-free (numpy only).
"""

from __future__ import annotations

import copy
import dataclasses
import enum
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = [
    "Box",
    "ClassInfo",
    "Collection",
    "Point",
    "Role",
    "Sample",
    "TagDef",
    "TagImplies",
    "WeightState",
    "make_id",
    "new_annotation_id",
]

#: Default colours for classes 1..n (tab10 without grey); background is 0.
DEFAULT_COLORS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
)

_ID_RE = re.compile(r"[^A-Za-z0-9._-]+")


def make_id(name: str) -> str:
    """Turn a file stem or free text into a sample id safe for file names.

    Examples
    --------
    >>> make_id("benign (12)")
    'benign_12'
    """
    slug = _ID_RE.sub("_", name.strip()).strip("_.")
    return slug or "sample"


def new_annotation_id() -> str:
    """A short random id for a box or point (stable once assigned)."""
    return uuid.uuid4().hex[:12]


class Role(str, enum.Enum):
    """What a sample contributes to training, derived from its annotations."""

    STRONG = "strong"
    WEAK = "weak"
    UNLABELED = "unlabeled"


class TagImplies(str, enum.Enum):
    """What an image-level tag says about the segmentation of one class."""

    NOTHING = "nothing"
    ABSENT = "absent"  # no pixel of the class anywhere (e.g. BUSI "normal")
    PRESENT = "present"  # at least one pixel of the class (multiple-instance)


@dataclass
class ClassInfo:
    """A segmentation class: label value in masks (>= 1), name and colour."""

    name: str
    value: int
    color: str = "#ff7f0e"

    def __post_init__(self) -> None:
        if int(self.value) < 1:
            raise ValueError(f"class {self.name!r}: label value must be >= 1 (0 is background)")
        self.value = int(self.value)


@dataclass
class TagDef:
    """An entry of the tag vocabulary.

    Parameters
    ----------
    name : str
        The tag as the annotator sees it, e.g. ``"malignant"``.
    implies : TagImplies
        What the tag says about ``class_value``: absent, present or nothing.
    class_value : int or None
        The class the implication is about; ``None`` means every class.
    """

    name: str
    implies: TagImplies = TagImplies.NOTHING
    class_value: int | None = None

    def __post_init__(self) -> None:
        self.implies = TagImplies(self.implies)


@dataclass
class Box:
    """A rectangle of class ``label`` in original-image pixel coordinates."""

    x0: float
    y0: float
    x1: float
    y1: float
    label: int = 1
    id: str = field(default_factory=new_annotation_id)

    def __post_init__(self) -> None:
        x0, x1 = sorted((float(self.x0), float(self.x1)))
        y0, y1 = sorted((float(self.y0), float(self.y1)))
        self.x0, self.y0, self.x1, self.y1 = x0, y0, x1, y1
        self.label = int(self.label)

    @property
    def area(self) -> float:
        return (self.x1 - self.x0) * (self.y1 - self.y0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x0, self.y0, self.x1, self.y1)


@dataclass
class Point:
    """A click of class ``label``; ``positive=False`` marks a background click."""

    x: float
    y: float
    label: int = 1
    positive: bool = True
    id: str = field(default_factory=new_annotation_id)

    def __post_init__(self) -> None:
        self.x, self.y = float(self.x), float(self.y)
        self.label = int(self.label)
        self.positive = bool(self.positive)


@dataclass
class WeightState:
    """A learned weight and its history as ``(step, value)`` pairs."""

    value: float = 0.5
    history: list[tuple[int, float]] = field(default_factory=list)

    def record(self, step: int, value: float) -> None:
        self.value = float(value)
        self.history.append((int(step), float(value)))


@dataclass
class Sample:
    """One image and its annotations.

    Parameters
    ----------
    id : str
        Stable id, safe for file names (see :func:`make_id`).
    image_path : Path or None
        Where the image lives on disk (absolute once loaded from a store).
    image : numpy.ndarray or None
        The pixels, if held in memory (e.g. from napari or the sample
        generator); otherwise loaded lazily from ``image_path``.
    mask : numpy.ndarray or None
        Strong mask of label values (0 = background), same height and width
        as the image. ``None`` means no strong mask. An all-zero mask is a
        valid strong mask ("nothing here").
    boxes, points, tags
        Weak labels.
    group : str or None
        Patient / video id so that near-duplicates never straddle a split.
    corrupted : bool
        Set by the importers' noise option and the sample generator: the
        weak label was made wrong on purpose (for evaluation only, never
        read by training).
    corruption : str or None
        How it was corrupted (``"shifted"``, ``"inflated"``, ...).
    reference_mask : numpy.ndarray or None
        A true mask kept for evaluation only (e.g. the mask a hybrid import
        removed). Training never reads it.
    meta : dict
        Free-form JSON-serialisable extras (source file, original size...).
    """

    id: str
    image_path: Path | None = None
    image: np.ndarray | None = field(default=None, repr=False)
    mask: np.ndarray | None = field(default=None, repr=False)
    boxes: list[Box] = field(default_factory=list)
    points: list[Point] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    group: str | None = None
    corrupted: bool = False
    corruption: str | None = None
    reference_mask: np.ndarray | None = field(default=None, repr=False)
    meta: dict = field(default_factory=dict)

    @property
    def role(self) -> Role:
        if self.mask is not None:
            return Role.STRONG
        if self.boxes or self.points or self.tags:
            return Role.WEAK
        return Role.UNLABELED

    @property
    def has_weak_labels(self) -> bool:
        return bool(self.boxes or self.points or self.tags)

    def load_image(self) -> np.ndarray:
        """The image pixels (cached after the first read)."""
        if self.image is None:
            if self.image_path is None:
                raise ValueError(f"sample {self.id!r} has neither pixels nor an image path")
            from napari_hybridseg.core.data.images import read_image

            self.image = read_image(self.image_path)
        return self.image

    def copy(self, *, copy_mask: bool = False) -> Sample:
        """A copy whose annotations (boxes, points, tags, meta) can be changed freely.

        The pixels (image, reference mask) are shared, not copied; the strong
        mask too unless ``copy_mask`` (the widget copies it: napari paints into
        the array on screen while the trainer thread reads its snapshot).
        """
        return dataclasses.replace(
            self,
            mask=self.mask.copy() if copy_mask and self.mask is not None else self.mask,
            boxes=[dataclasses.replace(b) for b in self.boxes],
            points=[dataclasses.replace(p) for p in self.points],
            tags=list(self.tags),
            meta=copy.deepcopy(self.meta),
        )

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) of the image."""
        if "shape" in self.meta and self.image is None:
            h, w = self.meta["shape"]
            return int(h), int(w)
        img = self.load_image()
        return int(img.shape[0]), int(img.shape[1])


@dataclass
class Collection:
    """An annotated collection: samples, classes, tag vocabulary, learned weights.

    Learned state lives in ``sample_weights`` (per weak sample, DII's gamma),
    each a :class:`WeightState` with history.
    """

    classes: list[ClassInfo] = field(default_factory=lambda: [ClassInfo("lesion", 1)])
    tag_defs: list[TagDef] = field(default_factory=list)
    samples: dict[str, Sample] = field(default_factory=dict)
    sample_weights: dict[str, WeightState] = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    # -- samples -------------------------------------------------------
    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self) -> Iterator[Sample]:
        return iter(self.samples.values())

    def __getitem__(self, sample_id: str) -> Sample:
        return self.samples[sample_id]

    def __contains__(self, sample_id: object) -> bool:
        return sample_id in self.samples

    @property
    def ids(self) -> list[str]:
        return list(self.samples)

    def add(self, sample: Sample) -> Sample:
        """Add a sample; its id must be new."""
        if sample.id in self.samples:
            raise ValueError(f"duplicate sample id {sample.id!r}")
        self.samples[sample.id] = sample
        return sample

    def unique_id(self, name: str) -> str:
        """A new sample id derived from ``name`` that is not yet used."""
        base = make_id(name)
        candidate, n = base, 1
        while candidate in self.samples:
            n += 1
            candidate = f"{base}_{n}"
        return candidate

    def remove(self, sample_id: str) -> None:
        """Remove a sample and its learned weight."""
        self.samples.pop(sample_id)
        self.sample_weights.pop(sample_id, None)

    def copy(self, *, copy_masks: bool = False) -> Collection:
        """An independent copy: annotations, vocabulary, learned weights and meta can be changed freely.

        Pixel arrays are shared, not copied (see :meth:`Sample.copy`; ``copy_masks``
        copies the strong masks too).
        """
        return Collection(
            classes=[dataclasses.replace(c) for c in self.classes],
            tag_defs=[dataclasses.replace(t) for t in self.tag_defs],
            samples={k: s.copy(copy_mask=copy_masks) for k, s in self.samples.items()},
            sample_weights={k: WeightState(v.value, list(v.history)) for k, v in self.sample_weights.items()},
            meta=copy.deepcopy(self.meta),
        )

    def by_role(self, role: Role | str) -> list[Sample]:
        role = Role(role)
        return [s for s in self.samples.values() if s.role is role]

    @property
    def strong(self) -> list[Sample]:
        return self.by_role(Role.STRONG)

    @property
    def weak(self) -> list[Sample]:
        return self.by_role(Role.WEAK)

    @property
    def unlabeled(self) -> list[Sample]:
        return self.by_role(Role.UNLABELED)

    # -- classes and tags ----------------------------------------------
    @property
    def num_classes(self) -> int:
        """Number of foreground classes (the model predicts this + 1)."""
        return len(self.classes)

    def class_by_value(self, value: int) -> ClassInfo:
        for c in self.classes:
            if c.value == value:
                return c
        raise KeyError(f"no class with label value {value}")

    def class_index(self, value: int) -> int:
        """Channel index (1..n) of a class label value; 0 is background."""
        for i, c in enumerate(sorted(self.classes, key=lambda c: c.value), start=1):
            if c.value == value:
                return i
        raise KeyError(f"no class with label value {value}")

    def add_class(self, name: str, value: int | None = None, color: str | None = None) -> ClassInfo:
        used = {c.value for c in self.classes}
        if value is None:
            value = max(used, default=0) + 1
        if value in used:
            raise ValueError(f"label value {value} is already used")
        if any(c.name == name for c in self.classes):
            raise ValueError(f"class {name!r} already exists")
        color = color or DEFAULT_COLORS[(value - 1) % len(DEFAULT_COLORS)]
        info = ClassInfo(name, value, color)
        self.classes.append(info)
        return info

    def tag_def(self, name: str) -> TagDef:
        for t in self.tag_defs:
            if t.name == name:
                return t
        raise KeyError(f"tag {name!r} is not in the tag vocabulary")

    def ensure_tag(self, name: str, implies: TagImplies | str = TagImplies.NOTHING,
                   class_value: int | None = None) -> TagDef:
        """Return the tag definition, adding it to the vocabulary if new."""
        try:
            return self.tag_def(name)
        except KeyError:
            t = TagDef(name, TagImplies(implies), class_value)
            self.tag_defs.append(t)
            return t

    # -- learned weights -----------------------------------------------
    def weight_of(self, sample_id: str) -> float | None:
        state = self.sample_weights.get(sample_id)
        return None if state is None else state.value

    def counts(self) -> dict[str, int]:
        """Counts for ``hybridseg info``."""
        samples = list(self.samples.values())
        return {
            "samples": len(samples),
            "strong": sum(s.role is Role.STRONG for s in samples),
            "weak": sum(s.role is Role.WEAK for s in samples),
            "unlabeled": sum(s.role is Role.UNLABELED for s in samples),
            "boxes": sum(len(s.boxes) for s in samples),
            "points": sum(len(s.points) for s in samples),
            "tags": sum(len(s.tags) for s in samples),
            "classes": len(self.classes),
            "corrupted": sum(bool(s.corrupted) for s in samples),
        }


def iter_annotations(samples: Iterable[Sample]) -> Iterator[tuple[Sample, Box | Point]]:
    """Every box and point with its sample."""
    for s in samples:
        for a in [*s.boxes, *s.points]:
            yield s, a
