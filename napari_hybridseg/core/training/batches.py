"""Training data: pre-resizing once, batching by role, augmentation.

Every image and its targets are brought to the training size ONCE when
training starts (:func:`prepare_sample`): decoding and resizing a 1920 px JPEG
at every step would cost more than the network step itself. Augmentation
then works on the small tensors and moves the targets (pixel maps and boxes)
consistently with the image.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch

from napari_hybridseg.core.data.collection import Collection, Role, Sample
from napari_hybridseg.core.data.images import ImageError, resize_image, resize_labels, to_float_rgb
from napari_hybridseg.core.errors import TrainingDataError
from napari_hybridseg.core.network.models import IMAGENET_MEAN, IMAGENET_STD
from napari_hybridseg.core.supervision.targets import IGNORE, make_targets, mask_to_index

__all__ = ["Batch", "BatchSampler", "Prepared", "augment", "collate", "denormalise", "normalise", "prepare_sample"]


@dataclass
class Prepared:
    """One sample at training size, as tensors (CPU)."""

    id: str
    role: Role
    image: torch.Tensor  # float32 (3, s, s), normalised
    target: torch.Tensor  # int64 (s, s), IGNORE = -1
    certainty: torch.Tensor  # uint8 (s, s)
    init_label: torch.Tensor  # int64 (s, s)
    boxes: np.ndarray  # (n, 5): channel, r0, c0, r1, c1 (end exclusive)
    present: torch.Tensor  # bool (K,)
    absent: torch.Tensor  # bool (K,)
    tag_target: torch.Tensor  # float32 (K-1,), -1 = unknown
    original_shape: tuple[int, int] = (0, 0)
    box_ids: list[str] = field(default_factory=list)
    #: int8 (s, s): what the anchor gave an open weak label, 0 background, a class, IGNORE elsewhere
    #: (``core/supervision/anchor.py``); None: none yet
    anchor: torch.Tensor | None = None
    #: int8 (s, s): the true mask as class indices, for a weak or unlabeled sample that carries one
    #: (``Sample.reference_mask``: the benchmark, the synthetic demo); never a training signal, only what
    #: the pixel-weight term measures its weights against. None: no reference.
    reference: torch.Tensor | None = None


@dataclass
class Batch:
    """A collated batch; per-sample tensors are stacked on dim 0."""

    ids: list[str]
    roles: list[Role]
    x: torch.Tensor  # (B, 3, s, s)
    target: torch.Tensor  # (B, s, s)
    certainty: torch.Tensor
    init_label: torch.Tensor
    boxes: list[np.ndarray]
    present: torch.Tensor  # (B, K) bool
    absent: torch.Tensor  # (B, K) bool
    tag_target: torch.Tensor  # (B, K-1)
    anchor: torch.Tensor | None = None  # (B, s, s) int8, IGNORE = nothing; None: no row has an anchor
    reference: torch.Tensor | None = None  # (B, s, s) int8 true class indices, IGNORE = none; None: no row has one

    @property
    def is_strong(self) -> torch.Tensor:
        return torch.tensor([r is Role.STRONG for r in self.roles], device=self.x.device)

    @property
    def is_weak(self) -> torch.Tensor:
        return torch.tensor([r is Role.WEAK for r in self.roles], device=self.x.device)

    def to(self, device: torch.device) -> Batch:
        move = {k: getattr(self, k).to(device, non_blocking=True)
                for k in ("x", "target", "certainty", "init_label", "present", "absent", "tag_target")}
        for k in ("anchor", "reference"):
            if getattr(self, k) is not None:
                move[k] = getattr(self, k).to(device, non_blocking=True)
        return Batch(ids=self.ids, roles=self.roles, boxes=self.boxes, **move)


def normalise(image_rgb: np.ndarray) -> torch.Tensor:
    """float (H, W, 3) in [0, 1] -> normalised (3, H, W) tensor (ImageNet statistics)."""
    t = torch.from_numpy(np.ascontiguousarray(image_rgb.transpose(2, 0, 1))).float()
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (t - mean) / std


def denormalise(x: torch.Tensor) -> torch.Tensor:
    """Normalised (B, 3, H, W) network input -> RGB in [0, 1] (the inverse of :func:`normalise`)."""
    mean = x.new_tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return (x * std + mean).clamp(0, 1)


def prepare_sample(sample: Sample, collection: Collection, size: int, *,
                   point_radius: float | None = None, with_reference: bool = False) -> Prepared:
    """Load, resize and convert one sample to training tensors.

    ``with_reference``: also bring a weak or unlabeled sample's reference mask
    (:attr:`Prepared.reference`, what the pixel-weight term measures itself
    against); off, nothing reads it and it is not made.

    Raises
    ------
    TrainingDataError
        If the image cannot be read or used, naming the sample and what to do
        (a :class:`ValueError`).
    """
    from_disk = sample.image is None
    try:
        image = sample.load_image()
        rgb = to_float_rgb(image)
    except (ImageError, OSError) as exc:
        raise TrainingDataError(f"sample {sample.id!r}: image is unusable ({exc}); fix or remove the sample") from exc
    finally:
        if from_disk:
            # keep only the small copy: 1000 full-size frames would hold gigabytes for nothing
            sample.image = None
    shape = (int(rgb.shape[0]), int(rgb.shape[1]))
    if sample.mask is not None and tuple(np.shape(sample.mask)[:2]) != shape:
        raise TrainingDataError(f"sample {sample.id!r}: mask shape {np.shape(sample.mask)} differs from the image "
                         f"{shape}; redraw or re-import the mask")
    small = resize_image(rgb, (size, size))
    t = make_targets(sample, collection, (size, size), point_radius=point_radius, original_shape=shape)
    reference = _reference(sample, collection, size) if with_reference else None
    return Prepared(
        id=sample.id,
        role=sample.role,
        image=normalise(small),
        target=torch.from_numpy(t.target),
        certainty=torch.from_numpy(t.certainty),
        init_label=torch.from_numpy(t.init_label),
        boxes=t.boxes,
        present=torch.from_numpy(t.present),
        absent=torch.from_numpy(t.absent),
        tag_target=torch.from_numpy(t.tag_target),
        original_shape=shape,
        box_ids=list(t.box_ids),
        reference=reference,
    )


def _reference(sample: Sample, collection: Collection, size: int) -> torch.Tensor | None:
    """A weak or unlabeled sample's true mask as class indices at training size (a measurement aid only).

    None for a strong sample, without a reference mask, or when the reference
    cannot be read as classes: it never stops training.
    """
    ref = sample.reference_mask
    if ref is None or sample.role is Role.STRONG or np.ndim(ref) != 2:
        return None
    try:
        index = mask_to_index(np.asarray(ref), collection, sample.id)
    except TrainingDataError:
        return None
    return torch.from_numpy(np.ascontiguousarray(resize_labels(index, (size, size))).astype(np.int8))


def _flip_boxes(boxes: np.ndarray, axis: int, size: int) -> np.ndarray:
    if not len(boxes):
        return boxes
    out = boxes.copy()
    lo, hi = (1, 3) if axis == 0 else (2, 4)
    out[:, lo], out[:, hi] = size - boxes[:, hi], size - boxes[:, lo]
    return out


def augment(item: Prepared, rng: np.random.Generator) -> Prepared:
    """Random flips, 90-degree turns and brightness/contrast jitter, targets moved alike.

    Medical 2D images have no canonical left/right in most modalities, and
    flips/turns need no interpolation, so masks stay exact. Intensity jitter is
    small (+-10% contrast, +-0.1 brightness in normalised units).
    """
    image, maps, boxes = item.image, [item.target, item.certainty, item.init_label], item.boxes
    extra = [k for k in ("anchor", "reference") if getattr(item, k) is not None]
    maps += [getattr(item, k) for k in extra]
    size = image.shape[-1]
    for axis in (0, 1):
        if rng.random() < 0.5:
            image = image.flip(-2 + axis)
            maps = [m.flip(axis) for m in maps]
            boxes = _flip_boxes(boxes, axis, size)
    if image.shape[-1] == image.shape[-2] and rng.random() < 0.5:
        # transpose (then flips above make all 8 symmetries reachable)
        image = image.transpose(-1, -2)
        maps = [m.transpose(0, 1) for m in maps]
        if len(boxes):
            boxes = boxes[:, [0, 2, 1, 4, 3]]
    contrast = 1.0 + rng.uniform(-0.1, 0.1)
    bright = rng.uniform(-0.1, 0.1)
    image = image * contrast + bright
    maps = [m.contiguous() for m in maps]
    return Prepared(item.id, item.role, image.contiguous(), *maps[:3], boxes=boxes,
                    present=item.present, absent=item.absent, tag_target=item.tag_target,
                    original_shape=item.original_shape, box_ids=item.box_ids,
                    **dict(zip(extra, maps[3:])))


def collate(items: Iterable[Prepared]) -> Batch:
    items = list(items)
    anchor, reference = _stack_optional(items, "anchor"), _stack_optional(items, "reference")
    return Batch(
        ids=[i.id for i in items],
        roles=[i.role for i in items],
        x=torch.stack([i.image for i in items]),
        target=torch.stack([i.target for i in items]),
        certainty=torch.stack([i.certainty for i in items]),
        init_label=torch.stack([i.init_label for i in items]),
        boxes=[i.boxes for i in items],
        present=torch.stack([i.present for i in items]),
        absent=torch.stack([i.absent for i in items]),
        tag_target=torch.stack([i.tag_target for i in items]),
        anchor=anchor,
        reference=reference,
    )


def _stack_optional(items: list[Prepared], name: str) -> torch.Tensor | None:
    """The items' optional int8 map ``name`` stacked (IGNORE for an item without one); None if none has it."""
    if all(getattr(i, name) is None for i in items):
        return None
    return torch.stack([getattr(i, name) if getattr(i, name) is not None
                        else torch.full(i.target.shape, IGNORE, dtype=torch.int8) for i in items])


class BatchSampler:
    """Draws batches mixing strong and non-strong samples.

    Each batch holds ``n_strong`` strong samples (default: half the batch, at
    least one, as labelled and unlabelled batches are equal in CPS and the mean
    teacher) and fills the rest from weak (and, when the method
    uses them, unlabeled) samples. Each pool is walked in reshuffled epochs so
    every sample is seen once before any is seen twice.
    """

    def __init__(self, batch_size: int, strong_per_batch: int | None, rng: np.random.Generator,
                 use_unlabeled: bool = True):
        self.batch_size = int(batch_size)
        self.strong_per_batch = strong_per_batch
        self.rng = rng
        self.use_unlabeled = use_unlabeled
        self._queues: dict[str, list[str]] = {}

    def _draw(self, pool: str, ids: list[str], n: int) -> list[str]:
        out: list[str] = []
        if not ids or n <= 0:
            return out
        valid = set(ids)
        queue = [i for i in self._queues.get(pool, []) if i in valid]
        while len(out) < n:
            if not queue:
                queue = list(self.rng.permutation(ids))
            out.append(queue.pop())
        self._queues[pool] = queue
        return out

    def sample(self, strong: list[str], weak: list[str], unlabeled: list[str]) -> list[str]:
        others = weak + (unlabeled if self.use_unlabeled else [])
        if not others:
            n_s = self.batch_size
        else:
            n_s = self.strong_per_batch or max(1, math.ceil(self.batch_size / 2))
            n_s = min(n_s, self.batch_size)
        ids = self._draw("strong", strong, n_s)
        if others:
            n_w = self.batch_size - len(ids)
            # keep the weak/unlabeled share proportional to their counts
            n_u = int(round(n_w * len(unlabeled) / len(others))) if self.use_unlabeled and unlabeled else 0
            if weak and n_u == n_w:
                n_u -= 1
            ids += self._draw("weak", weak, n_w - n_u)
            ids += self._draw("unlabeled", unlabeled, n_u)
        return ids
