"""The shared machinery of the dataset importers: one import's state, notes, duplicates and mask matching.

:mod:`napari_hybridseg.core.data.importers` holds the layouts and
:func:`~napari_hybridseg.core.data.importers.import_dataset`; this module the parts
every layout uses.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_hybridseg.core.data.collection import DEFAULT_COLORS, ClassInfo, Collection, Sample
from napari_hybridseg.core.data.images import (
    IMAGE_SUFFIXES,
    ImageError,
    MaskStats,
    decide_masks,
    read_mask_raw,
    resize_labels,
    truncation,
)
from napari_hybridseg.core.data.store import header_shape
from napari_hybridseg.core.errors import HybridsegError

#: folder names that mean "no lesion anywhere" in class-folder datasets (BUSI: normal)
ABSENT_NAMES = frozenset({"normal", "healthy", "negative", "no_lesion", "nolesion", "background"})

_MASK_SUFFIX = re.compile(
    r"[ _\-.]?(?:mask|masks|seg|segmentation|label|labels|gt|groundtruth|ground_truth|anno|annotation)"
    r"(?:[ _\-]?\d+)?$",
    re.IGNORECASE,
)

Progress = Callable[[int, int], None]


class DatasetError(HybridsegError, ValueError):
    """A dataset folder that cannot be imported as the chosen layout; says what was expected."""


# ----------------------------------------------------------------------------------------------
# helpers
# ----------------------------------------------------------------------------------------------
def _is_image(path: Path) -> bool:
    # hidden files and macOS resource forks ("._x.jpg") look like images by name but are not
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def _list_images(folder: Path, *, recursive: bool = False) -> list[Path]:
    it = folder.rglob("*") if recursive else folder.iterdir()
    return sorted((p for p in it if _is_image(p) and not any(part.startswith(".") for part in
                                                              p.relative_to(folder).parts)),
                  key=lambda p: p.as_posix())


def _subdir(src: Path, names: Sequence[str]) -> Path | None:
    for name in names:
        for p in src.iterdir():
            if p.is_dir() and p.name.lower() == name:
                return p
    return None


class _Importer:
    """Shared state of one import: the collection, notes, duplicate detection."""

    def __init__(self, src: Path, layout: str, progress: Progress | None):
        self.src = src
        self.collection = Collection(classes=[], tag_defs=[])
        self.notes: list[str] = []
        self.progress = progress
        self.hashes: dict[str, str] = {}  # file digest -> first sample id
        self.stats = MaskStats()
        self.skipped: list[str] = []  # image files not imported (truncated)
        self.raw_masks: dict[str, list[np.ndarray]] = {}  # sample id -> its undecided mask(s)
        self.mask_mode = "auto"
        self.mask_threshold: int | None = None
        self.binary_layout = layout in ("kvasir", "busi")  # datasets whose masks are binary by definition
        self.collection.meta["import"] = {"layout": layout, "source": str(src.absolute())}

    def note(self, text: str) -> None:
        self.notes.append(text)

    def add_sample(self, name: str, image_path: Path, *, tags: Sequence[str] = ()) -> Sample | None:
        """Add one image; ``None`` (and a note) for an image file that is cut off."""
        c = self.collection
        broken = truncation(image_path)
        if broken:
            self.note(f"{image_path}: {broken}; not imported (its mask neither): replace the file and import again")
            self.skipped.append(str(image_path))
            return None
        sid = c.unique_id(name)
        try:
            shape = header_shape(image_path)
        except Exception as exc:
            raise DatasetError(f"{image_path}: cannot read the image header ({exc}); remove or replace the file") \
                from exc
        sample = c.add(Sample(sid, image_path=image_path.absolute(), tags=list(tags),
                              meta={"shape": [shape[0], shape[1]], "source": image_path.name}))
        self._check_duplicate(sample, image_path)
        return sample

    def _check_duplicate(self, sample: Sample, path: Path) -> None:
        # byte-identical files are the same picture (BUSI benign (433) == malignant (145)):
        # one group keeps them on one side of any split
        digest = hashlib.sha1(path.read_bytes()).hexdigest()
        first = self.hashes.setdefault(digest, sample.id)
        if first != sample.id:
            other = self.collection[first]
            group = other.group or f"duplicate-{digest[:12]}"
            other.group = sample.group = group
            sample.meta["duplicate_of"] = first
            msg = f"{sample.id} is a byte-identical copy of {first}; both put in group {group!r}"
            if sorted(other.tags) != sorted(sample.tags):
                msg += f" (conflicting tags {other.tags} vs {sample.tags})"
            self.note(msg)

    def set_mask(self, sample: Sample, paths: Sequence[Path]) -> None:
        """Read the mask file(s) of ``sample`` undecided; :meth:`finish` decides what their values mean."""
        masks = []
        for p in paths:
            try:
                raw = read_mask_raw(p)
            except ImageError as exc:
                raise DatasetError(f"{exc}; remove or replace the mask file") from exc
            self.stats.add(raw, p)
            masks.append(raw)
        shape = tuple(sample.meta["shape"])
        for i, m in enumerate(masks):
            if m.shape[:2] != shape:
                self.note(f"{sample.id}: mask {paths[i].name} is {m.shape[1]}x{m.shape[0]} but the image is "
                          f"{shape[1]}x{shape[0]}; resized (nearest neighbour)")
                masks[i] = resize_labels(m, shape)
        self.raw_masks[sample.id] = masks
        sample.meta["mask_source"] = [p.name for p in paths]

    def decide_masks(self) -> None:
        """One decision for the whole dataset (binary, labels or colour-coded), applied to every mask."""
        mode = self.mask_mode
        if mode == "auto" and self.binary_layout:
            mode = "binary"
        try:
            decision = decide_masks(self.stats, mode, self.mask_threshold)
        except ValueError as exc:
            raise DatasetError(f"{self.src}: {exc}") from exc
        if self.raw_masks:
            note = decision.note
            if self.mask_mode == "auto" and self.binary_layout:
                note += f" (layout {self.collection.meta['import']['layout']}: its masks are binary)"
            self.note(note)
            self.collection.meta["import"]["masks"] = {"mode": decision.mode, "threshold": decision.threshold}
        for sid, raws in self.raw_masks.items():
            masks = [decision.apply(r) for r in raws]
            mask = masks[0]
            if len(masks) > 1:  # several masks of one image (BUSI _mask_1): union; label masks by maximum
                mask = np.maximum.reduce([m.astype(np.uint16) for m in masks])
                mask = mask.astype(np.uint8) if mask.max(initial=0) <= 255 else mask
            self.collection[sid].mask = mask
        self.raw_masks.clear()
        if decision.mode == "rgb" and not self.collection.classes:
            for i, (name, colour) in enumerate(zip(decision.names, decision.palette), start=1):
                self.collection.classes.append(ClassInfo(name, i, "#{:02x}{:02x}{:02x}".format(*colour)))

    def finish(self, default_class: str) -> Collection:
        c = self.collection
        from napari_hybridseg.core.data.hybridize import label_values

        values = sorted({v for s in c if s.mask is not None for v in label_values(s.mask)}
                        | {b.label for s in c for b in s.boxes})
        if not c.classes:
            if values in ([], [1]):
                c.classes.append(ClassInfo(default_class, 1, DEFAULT_COLORS[1]))
            else:  # label masks: one class per value found
                for v in values:
                    c.classes.append(ClassInfo(f"class {v}", v, DEFAULT_COLORS[(v - 1) % len(DEFAULT_COLORS)]))
        c.meta["import"]["notes"] = self.notes
        return c

    def tick(self, i: int, n: int) -> None:
        if self.progress is not None:
            self.progress(i, n)


def _match_masks(images: list[Path], masks: list[Path], imp: _Importer) -> dict[Path, list[Path]]:
    """Pair mask files with image files by stem, allowing mask suffixes such as ``_mask`` or ``-seg_2``."""
    by_stem: dict[str, Path] = {}
    by_fold: dict[str, Path] = {}
    twins = _shared_stems(images)
    for p in images:
        if p.stem in twins:
            continue
        by_stem[p.stem] = p
        by_fold.setdefault(p.stem.casefold(), p)
    for stem, paths in sorted(twins.items()):
        imp.note(f"{', '.join(p.name for p in paths)}: images share the name stem {stem!r}; each imported (as "
                 f"{', '.join(_sample_name(p, twins) for p in paths)}) without a mask, since a mask named after "
                 f"{stem!r} cannot tell whose it is; rename one to pair it")
    out: dict[Path, list[Path]] = {}
    orphans = []
    ambiguous = []
    for m in masks:
        stem = m.stem
        img = by_stem.get(stem)
        if img is None:
            base = _MASK_SUFFIX.sub("", stem)
            if stem in twins or base in twins:
                ambiguous.append(m.name)
                continue
            img = by_stem.get(base) or by_fold.get(base.casefold()) or by_fold.get(stem.casefold())
        if img is None:
            orphans.append(m.name)
            continue
        out.setdefault(img, []).append(m)
    if ambiguous:
        imp.note(f"{len(ambiguous)} mask file(s) left out, their image name is shared: {', '.join(ambiguous[:5])}")
    if orphans:
        imp.note(f"{len(orphans)} mask file(s) match no image and were ignored: {', '.join(orphans[:5])}"
                 + (" ..." if len(orphans) > 5 else ""))
    for lst in out.values():
        lst.sort(key=lambda p: (len(p.stem), p.name))
    return out


def _shared_stems(images: list[Path]) -> dict[str, list[Path]]:
    """Name stems that several image files share (``a.png`` and ``a.jpg``) -> those files."""
    by: dict[str, list[Path]] = {}
    for p in images:
        by.setdefault(p.stem, []).append(p)
    return {k: v for k, v in by.items() if len(v) > 1}


def _sample_name(path: Path, twins: dict[str, list[Path]]) -> str:
    """The stem, or stem and extension where another image shares the stem (``a_jpg``, ``a_png``)."""
    return f"{path.stem}_{path.suffix.lstrip('.').lower()}" if path.stem in twins else path.stem
