"""Weak label -> training signal (METHOD.md section 3).

For one sample at a training size this makes:

* ``target``: class index per pixel where the label makes it certain, else
  :data:`IGNORE` (partial cross-entropy);
* ``certainty``: :data:`UNKNOWN`, :data:`KNOWN_BG` or :data:`KNOWN_FG` per pixel;
* ``init_label``: the initial label y~ used by the pixel weights: the mask for
  strong samples; the rasterised weak label otherwise (box interiors filled
  with their class, point disks, "absent" tags as background), IGNORE where
  the weak label says nothing (the trainer fills those from the model);
* ``boxes``: integer boxes at training size for the box-tightness term;
* ``present`` / ``absent``: per channel, from tags (multiple-instance term
  and "structure absent");
* ``tag_target``: multi-hot per foreground class for the auxiliary
  classification head (-1 = unknown).

Channel 0 is background, channels 1..n are the collection's classes sorted by
label value. Box annotation is taken as complete: pixels outside every box
are background (as BoxInst assumes).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np

from napari_hybridseg.core.data.collection import Collection, Role, Sample, TagImplies
from napari_hybridseg.core.data.images import resize_labels
from napari_hybridseg.core.errors import TrainingDataError

__all__ = [
    "IGNORE",
    "KNOWN_BG",
    "KNOWN_FG",
    "UNKNOWN",
    "Targets",
    "make_targets",
    "mask_to_index",
]

IGNORE = -1
UNKNOWN, KNOWN_BG, KNOWN_FG = 0, 1, 2


@dataclass
class Targets:
    """Per-pixel and per-image training targets of one sample at one size."""

    target: np.ndarray  # int64 (h, w)
    certainty: np.ndarray  # uint8 (h, w)
    init_label: np.ndarray  # int64 (h, w)
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 5), np.int64))  # (n, 5): ch, r0, c0, r1, c1
    box_ids: list[str] = field(default_factory=list)
    point_ids: list[str] = field(default_factory=list)
    present: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (K,)
    absent: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # (K,)
    tag_target: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))  # (K-1,)
    role: Role = Role.UNLABELED

    @property
    def shape(self) -> tuple[int, int]:
        return self.target.shape  # type: ignore[return-value]

    def flip(self, axis: int) -> Targets:
        """The targets of the image flipped along ``axis`` (0 = rows, 1 = cols)."""
        h, w = self.shape
        boxes = self.boxes.copy()
        if len(boxes):
            if axis == 0:
                boxes[:, 1], boxes[:, 3] = h - self.boxes[:, 3], h - self.boxes[:, 1]
            else:
                boxes[:, 2], boxes[:, 4] = w - self.boxes[:, 4], w - self.boxes[:, 2]
        return Targets(
            target=np.flip(self.target, axis).copy(),
            certainty=np.flip(self.certainty, axis).copy(),
            init_label=np.flip(self.init_label, axis).copy(),
            boxes=boxes,
            box_ids=list(self.box_ids),
            point_ids=list(self.point_ids),
            present=self.present.copy(),
            absent=self.absent.copy(),
            tag_target=self.tag_target.copy(),
            role=self.role,
        )


def _channel_lut(collection: Collection) -> dict[int, int]:
    return {c.value: i for i, c in enumerate(sorted(collection.classes, key=lambda c: c.value), 1)}


def mask_to_index(mask: np.ndarray, collection: Collection, sample_id: str = "?") -> np.ndarray:
    """Map label values of a mask to channel indices (0 = background)."""
    lut = _channel_lut(collection)
    values = np.unique(mask)
    unknown = [int(v) for v in values if v != 0 and int(v) not in lut]
    if unknown:
        names = ", ".join(f"{c.name}={c.value}" for c in collection.classes)
        raise TrainingDataError(
            f"sample {sample_id!r}: mask holds label value(s) {unknown} that are not classes "
            f"({names}). Add the class or relabel the mask."
        )
    out = np.zeros(mask.shape, np.int64)
    for value, idx in lut.items():
        out[mask == value] = idx
    return out


def _box_to_pixels(box, sy: float, sx: float, h: int, w: int, sample_id: str,
                   stacklevel: int = 3) -> tuple[int, int, int, int] | None:
    """Scale a box to training pixels: rows [r0, r1), cols [c0, c1); None if off-image."""
    x0, y0, x1, y1 = box.x0 * sx, box.y0 * sy, box.x1 * sx, box.y1 * sy
    if x1 <= 0 or y1 <= 0 or x0 >= w or y0 >= h:
        warnings.warn(f"sample {sample_id!r}: box {box.id} lies outside the image; ignored", stacklevel=stacklevel)
        return None
    if x0 < 0 or y0 < 0 or x1 > w or y1 > h:
        warnings.warn(f"sample {sample_id!r}: box {box.id} extends outside the image; clipped", stacklevel=stacklevel)
    # pixels whose centre lies inside the box; at least one pixel
    c0 = int(np.clip(np.ceil(x0 - 0.5), 0, w - 1))
    r0 = int(np.clip(np.ceil(y0 - 0.5), 0, h - 1))
    c1 = int(np.clip(np.ceil(x1 - 0.5), c0 + 1, w))
    r1 = int(np.clip(np.ceil(y1 - 0.5), r0 + 1, h))
    return r0, c0, r1, c1


def make_targets(
    sample: Sample,
    collection: Collection,
    size: tuple[int, int],
    *,
    point_radius: float | None = None,
    original_shape: tuple[int, int] | None = None,
) -> Targets:
    """Build the training targets of ``sample`` at ``size = (h, w)``.

    Parameters
    ----------
    sample : Sample
        The sample; its role decides which signal is built.
    collection : Collection
        Gives the class list (channel order) and the tag vocabulary.
    size : (int, int)
        Training size (rows, cols). Geometry is scaled from the original image.
    point_radius : float, optional
        Disk radius in training pixels around each point. Default: 2% of the
        smaller side, at least 2 px.
    original_shape : (int, int), optional
        The image's (rows, cols); read from the sample if not given.

    Returns
    -------
    Targets
    """
    h, w = int(size[0]), int(size[1])
    H, W = original_shape if original_shape is not None else sample.shape
    sy, sx = h / H, w / W
    n_ch = collection.num_classes + 1
    lut = _channel_lut(collection)
    # tags first: they apply to every role (an auxiliary-head target)
    present, absent, tag_target = _tag_signals(sample, collection, lut, n_ch)

    role = sample.role
    if role is Role.STRONG:
        idx = mask_to_index(resize_labels(np.asarray(sample.mask), (h, w)), collection, sample.id)
        for ch in range(1, n_ch):
            tag_target[ch - 1] = float((idx == ch).any())
        return Targets(
            target=idx,
            certainty=np.where(idx > 0, KNOWN_FG, KNOWN_BG).astype(np.uint8),
            init_label=idx.copy(),
            present=present,
            absent=absent,
            tag_target=tag_target,
            role=role,
        )

    target = np.full((h, w), IGNORE, np.int64)
    init = np.full((h, w), IGNORE, np.int64)

    # "structure absent" for every class: all background, certain
    if n_ch > 1 and absent[1:].all():
        target[:] = 0
        init[:] = 0

    boxes, box_ids = _paint_boxes(sample, lut, (sy, sx), target, init, present)
    point_ids = _paint_points(sample, lut, (sy, sx), point_radius, target, init, present)

    for ch in range(1, n_ch):
        if present[ch] and tag_target[ch - 1] < 0:
            tag_target[ch - 1] = 1.0

    certainty = np.full((h, w), UNKNOWN, np.uint8)
    certainty[target == 0] = KNOWN_BG
    certainty[target > 0] = KNOWN_FG
    return Targets(
        target=target,
        certainty=certainty,
        init_label=init,
        boxes=np.asarray(boxes, np.int64).reshape(-1, 5),
        box_ids=box_ids,
        point_ids=point_ids,
        present=present,
        absent=absent,
        tag_target=tag_target,
        role=role,
    )


def _tag_signals(sample: Sample, collection: Collection, lut: dict, n_ch: int):
    """``(present, absent, tag_target)`` per channel from the sample's tags (-1: the tags say nothing)."""
    present = np.zeros(n_ch, bool)
    absent = np.zeros(n_ch, bool)
    tag_target = np.full(n_ch - 1, -1.0, np.float32)
    for name in sample.tags:
        try:
            tdef = collection.tag_def(name)
        except KeyError:
            continue  # a tag outside the vocabulary says nothing about pixels
        chans = [lut[tdef.class_value]] if tdef.class_value in lut else list(range(1, n_ch))
        for ch in chans:
            if tdef.implies is TagImplies.ABSENT:
                absent[ch] = True
                tag_target[ch - 1] = 0.0
            elif tdef.implies is TagImplies.PRESENT:
                present[ch] = True
                tag_target[ch - 1] = 1.0
    return present, absent, tag_target


def _paint_boxes(sample: Sample, lut: dict, scale: tuple[float, float], target: np.ndarray, init: np.ndarray,
                 present: np.ndarray) -> tuple[list, list]:
    """Boxes into ``target``/``init`` (in place): inside, the box's class (initial label); outside every box,
    certain background. Returns the boxes in training pixels ``(ch, r0, c0, r1, c1)`` and their ids."""
    boxes, box_ids = [], []
    if not sample.boxes:
        return boxes, box_ids
    h, w = target.shape
    inside_any = np.zeros((h, w), bool)
    for box in sample.boxes:
        if box.label not in lut:
            raise TrainingDataError(f"sample {sample.id!r}: box {box.id} has class {box.label}, "
                                    "not in the class list")
        px = _box_to_pixels(box, scale[0], scale[1], h, w, sample.id, stacklevel=4)
        if px is None:
            continue
        r0, c0, r1, c1 = px
        ch = lut[box.label]
        inside_any[r0:r1, c0:c1] = True
        init[r0:r1, c0:c1] = ch
        boxes.append((ch, r0, c0, r1, c1))
        box_ids.append(box.id)
    # complete box annotation: outside every box is certain background
    target[~inside_any] = 0
    init[~inside_any] = 0
    present[[b[0] for b in boxes]] = True
    return boxes, box_ids


def _paint_points(sample: Sample, lut: dict, scale: tuple[float, float], point_radius: float | None,
                  target: np.ndarray, init: np.ndarray, present: np.ndarray) -> list:
    """Point disks into ``target``/``init`` (in place): the class (positive) or background. Returns their ids."""
    point_ids = []
    if not sample.points:
        return point_ids
    h, w = target.shape
    sy, sx = scale
    radius = point_radius if point_radius is not None else max(2.0, 0.02 * min(h, w))
    rr, cc = np.mgrid[0:h, 0:w]
    for pt in sample.points:
        if pt.label not in lut:
            raise TrainingDataError(f"sample {sample.id!r}: point {pt.id} has class {pt.label}, "
                                    "not in the class list")
        x, y = pt.x * sx, pt.y * sy
        if not (0 <= x < w and 0 <= y < h):
            warnings.warn(f"sample {sample.id!r}: point {pt.id} lies outside the image; clipped to the border",
                          stacklevel=3)
            x, y = float(np.clip(x, 0, w - 1e-3)), float(np.clip(y, 0, h - 1e-3))
        disk = (rr + 0.5 - y) ** 2 + (cc + 0.5 - x) ** 2 <= radius**2
        disk[int(y), int(x)] = True
        value = lut[pt.label] if pt.positive else 0
        target[disk] = value
        init[disk] = value
        if pt.positive:
            present[lut[pt.label]] = True
        point_ids.append(pt.id)
    return point_ids
