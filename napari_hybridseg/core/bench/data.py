"""The benchmark's data: split a fully labelled collection, hybridise its training part, each arm's
training collection, and training images resized once for all arms."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from napari_hybridseg.core.data.collection import Collection, Role, Sample

from .arms import ARMS
from .split import Split, merge_groups, near_duplicate_groups, read_groups_csv, split_ids, thumbnail

if TYPE_CHECKING:
    from .settings import BenchSettings


def _copy_collection(collection: Collection, samples: Iterable[Sample]) -> Collection:
    """``samples`` (in their order) in a collection with ``collection``'s vocabulary and meta, copied by
    :meth:`~napari_hybridseg.core.data.collection.Collection.copy`; no learned weights."""
    out = collection.copy()
    for sid in out.ids:
        out.remove(sid)
    out.sample_weights.clear()
    for s in samples:
        out.add(s)
    return out


def arm_collection(train: Collection, arm: str) -> Collection:
    """The training collection of one arm, built from the hybrid training set.

    * ``strong-only``: the strong images alone (weak labels discarded);
    * ``all-strong``: every training image with its true mask (``reference_mask``);
    * every other arm: the hybrid set as it is (strong + weak, corrupted included).

    Samples are copies (:meth:`~napari_hybridseg.core.data.collection.Collection.copy`): pixel arrays are
    shared, never re-decoded.
    """
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    out = train.copy()
    out.sample_weights.clear()
    for s in list(out):
        if arm == "strong-only" and s.role is not Role.STRONG:
            out.remove(s.id)
        elif arm == "all-strong":
            truth = s.mask if s.mask is not None else s.reference_mask
            if truth is None:
                raise ValueError(f"sample {s.id!r} has neither a mask nor a reference mask: all-strong needs one")
            s.mask, s.boxes, s.points, s.corrupted, s.corruption = truth, [], [], False, None
    return out


@dataclass
class Prepared:
    """The benchmark's data: the hybrid collection and its split."""

    collection: Collection  # all used samples; train ones hybridised, val/test with masks
    split: Split
    strong: list[str]
    weak: list[str]
    corrupted: dict[str, str]  # weak id -> corruption kind
    notes: list[str] = field(default_factory=list)
    prep_s: float = 0.0

    def subset(self, ids: Iterable[str]) -> Collection:
        return _copy_collection(self.collection, [self.collection[i] for i in ids])

    @property
    def train(self) -> Collection:
        return self.subset(self.split.train)

    def split_record(self) -> dict[str, Any]:
        rec = self.split.to_dict()
        rec.update(strong=list(self.strong), weak=list(self.weak), corrupted=dict(self.corrupted),
                   counts={"train": len(self.split.train), "val": len(self.split.val), "test": len(self.split.test),
                           "strong": len(self.strong), "weak": len(self.weak), "corrupted": len(self.corrupted),
                           "grouped_ids": len(self.split.groups)})
        return rec


def resized_sample(sample: Sample, size: int) -> Sample:
    """A copy of ``sample`` at ``size x size`` px: image, masks, boxes and points scaled together.

    The image goes through the same conversion the trainer applies
    (:func:`~napari_hybridseg.core.data.images.to_float_rgb`, then an anti-aliased
    resize) and is stored as 8-bit RGB; label images use the nearest-neighbour
    rule :func:`~napari_hybridseg.core.supervision.targets.make_targets` uses, so targets
    built from the copy equal those built from the original.
    """
    from napari_hybridseg.core.data.images import resize_image, resize_labels, to_float_rgb

    img = sample.load_image()
    h, w = int(img.shape[0]), int(img.shape[1])
    small = resize_image(to_float_rgb(img), (size, size))
    small = np.clip(np.rint(small * 255.0), 0, 255).astype(np.uint8)
    sx, sy = size / w, size / h

    def labels(m):
        return None if m is None else resize_labels(np.asarray(m), (size, size))

    return dataclasses.replace(
        sample,
        image=small,
        image_path=None,
        mask=labels(sample.mask),
        reference_mask=labels(sample.reference_mask),
        boxes=[dataclasses.replace(b, x0=b.x0 * sx, x1=b.x1 * sx, y0=b.y0 * sy, y1=b.y1 * sy) for b in sample.boxes],
        points=[dataclasses.replace(p, x=p.x * sx, y=p.y * sy) for p in sample.points],
        tags=list(sample.tags),
        meta={**sample.meta, "shape": [size, size], "original_shape": [h, w]},
    )


def _truth_of(sample: Sample) -> np.ndarray:
    truth = sample.mask if sample.mask is not None else sample.reference_mask
    if truth is None:
        raise ValueError(f"sample {sample.id!r} has no mask to evaluate against")
    return np.asarray(truth)


def prepare_collection(
    collection: Collection,
    settings: BenchSettings,
    *,
    hybridize: Callable[..., Any] | None = None,
    log: Callable[[str], None] = print,
) -> Prepared:
    """Split a fully labelled collection and hybridise its training part.

    Parameters
    ----------
    collection : Collection
        Every sample with its mask (and the dataset's boxes / tags). Modified
        in place: pixels are decoded once and cached on the samples, and the
        training samples become strong or weak.
    settings : BenchSettings
    hybridize : callable, optional
        ``make_hybrid(collection, *, strong_fraction, weak, noise, seed, ids)`` (and, for
        points, ``point_placement``, ``background_clicks``);
        default :func:`napari_hybridseg.core.data.hybridize.make_hybrid`.
    log : callable
        Receives one-line progress messages.
    """
    t0 = time.perf_counter()
    missing = [s.id for s in collection if s.mask is None and s.reference_mask is None]
    if missing:
        raise ValueError(
            f"{len(missing)} image(s) have no mask (e.g. {missing[0]!r}): the benchmark needs a fully "
            "labelled dataset, since every arm is scored against true masks")
    ids = _apply_limit(collection, settings, log)
    thumbs = _decode_all(collection, ids, settings.dedup, log)
    notes: list[str] = []
    groups = _groups(collection, ids, thumbs, settings, notes)
    # image-level tags (BUSI's classes) stratify the split, so the test set holds each class in proportion
    strata = {s.id: "+".join(sorted(s.tags)) for s in collection if s.tags} if settings.stratify else None
    if strata:
        counts = {k: list(strata.values()).count(k) for k in sorted(set(strata.values()))}
        notes.append("split stratified by image tag: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    split = split_ids(ids, seed=settings.seed, groups=groups, strata=strata)

    if hybridize is None:
        from napari_hybridseg.core.data.hybridize import make_hybrid as hybridize
    clicks = ({"point_placement": settings.point_placement, "background_clicks": settings.background_clicks}
              if settings.weak == "point" else {})
    result = hybridize(collection, strong_fraction=settings.strong_fraction, weak=settings.weak,
                       noise=settings.noise, seed=settings.seed, ids=list(split.train), **clicks)
    if isinstance(result, Collection):
        collection = result
    train = [collection[i] for i in split.train]
    strong = [s.id for s in train if s.role is Role.STRONG]
    weak = [s.id for s in train if s.role is Role.WEAK]
    corrupted = {s.id: s.corruption or "corrupted" for s in train if s.corrupted}
    _check_hybrid(collection, split, train, strong, settings.strong_fraction)
    return Prepared(collection=collection, split=split, strong=strong, weak=weak, corrupted=corrupted,
                    notes=notes, prep_s=time.perf_counter() - t0)


def _apply_limit(collection: Collection, settings: BenchSettings, log: Callable[[str], None]) -> list[str]:
    """The sorted ids to use: all, or a seeded subset of ``settings.limit`` (the others removed)."""
    ids = sorted(collection.ids)
    if settings.limit is not None and settings.limit < len(ids):
        rng = np.random.default_rng(settings.seed)
        keep = set(np.asarray(ids)[rng.choice(len(ids), size=int(settings.limit), replace=False)].tolist())
        for sid in ids:
            if sid not in keep:
                collection.remove(sid)
        ids = sorted(keep)
        log(f"using a seeded subset of {len(ids)} images (--limit)")
    return ids


def _decode_all(collection: Collection, ids: list[str], dedup: bool,
                log: Callable[[str], None]) -> dict[str, np.ndarray]:
    """Decode every image once (all arms and the evaluation share these arrays); thumbnails for ``dedup``."""
    thumbs: dict[str, np.ndarray] = {}
    for i, sid in enumerate(ids):
        s = collection[sid]
        img = s.load_image()
        s.meta.setdefault("shape", [int(img.shape[0]), int(img.shape[1])])
        if dedup:
            thumbs[sid] = thumbnail(img)
        if (i + 1) % 200 == 0:
            log(f"decoded {i + 1}/{len(ids)} images")
    return thumbs


def _groups(collection: Collection, ids: list[str], thumbs: Mapping[str, np.ndarray], settings: BenchSettings,
            notes: list[str]) -> dict[str, str]:
    """Groups no split may straddle: the samples' own, the groups CSV's and near-duplicate clusters."""
    groupings: list[Mapping[str, str]] = [{s.id: s.group for s in collection if s.group}]
    if settings.groups_csv:
        csv_groups = read_groups_csv(settings.groups_csv)
        by_id = {k: v for k, v in csv_groups.items() if k in collection}
        # accept file names or stems as well as sample ids
        stems = {Path(str(s.image_path)).stem: s.id for s in collection if s.image_path is not None}
        for k, v in csv_groups.items():
            if k not in by_id and Path(k).stem in stems:
                by_id[stems[Path(k).stem]] = v
        if not by_id:
            raise ValueError(f"{settings.groups_csv}: none of its ids match an image of the dataset "
                             f"(first row id: {next(iter(csv_groups))!r}; image ids look like {ids[0]!r})")
        notes.append(f"groups CSV: {len(by_id)} of {len(ids)} images assigned to {len(set(by_id.values()))} groups")
        groupings.append(by_id)
    if settings.dedup:
        dups = near_duplicate_groups(thumbs, settings.dedup_threshold)
        if dups:
            notes.append(f"near-duplicate guard: {len(dups)} images in {len(set(dups.values()))} clusters "
                         f"(thumbnail correlation >= {settings.dedup_threshold}) kept within one part")
        groupings.append(dups)
    return merge_groups(ids, *groupings)


def _check_hybrid(collection: Collection, split: Split, train: list[Sample], strong: list[str],
                  strong_fraction: float) -> None:
    """The hybridiser changed only the training ids, left a strong image and kept every weak truth."""
    for sid in [*split.val, *split.test]:
        if collection[sid].mask is None:
            raise RuntimeError(f"hybridisation touched held-out image {sid!r}: it must only change the train ids")
    if not strong:
        raise ValueError(f"no strong image in the training set ({len(train)} images at strong_fraction "
                         f"{strong_fraction}): raise --strong-fraction or use more images")
    for s in train:
        if s.role is Role.WEAK and s.reference_mask is None:
            raise RuntimeError(f"weak sample {s.id!r} lost its true mask: the hybridiser must keep it as "
                               "reference_mask (all-strong and the weight metrics need it)")


def prepare(settings: BenchSettings, *, log: Callable[[str], None] = print) -> Prepared:
    """Import ``settings.dataset`` and :func:`prepare_collection` it."""
    from napari_hybridseg.core.data.importers import import_dataset

    src = Path(settings.dataset)
    if not src.exists():
        raise FileNotFoundError(f"{src}: dataset folder not found")
    t0 = time.perf_counter()
    collection = import_dataset(src, settings.layout)
    log(f"imported {len(collection)} images from {src} (layout {settings.layout})")
    prepared = prepare_collection(collection, settings, log=log)
    prepared.prep_s = time.perf_counter() - t0  # import + decoding + split + hybridisation
    return prepared
