"""The project folder: an annotated collection on disk that people and other tools can read.

Layout (schema in ``docs/project-format.md``)::

    project.json              format name, version, classes, tag vocabulary, sample list
    annotations/<id>.json     boxes, points, tags of one sample (absent: none)
    masks/<id>.png            strong mask, uint8 or uint16 label values (absent: no mask)
    reference_masks/<id>.png  evaluation-only true masks (training never reads them)
    images/<id>.<ext>         images the project holds itself (copied, or pixels that
                              existed only in memory); others are referenced by a path
                              relative to the project folder
    weights.json              learned weights (DII gamma per sample) with history
    .hybridseg.lock           held while a save runs (a second process waits for it)
    .hybridseg-journal.json   only while a save commits (see below)
    .hybridseg-trash/         files a save removed or never committed, kept for recovery

A save cannot lose an annotation. It serialises and validates everything in
memory first; then writes every file under a staged name and fsyncs it; then
commits with one atomic write of a journal listing the renames; then renames
the files into place (``project.json`` last) and fsyncs their folders. A process
killed before the commit leaves the project as it was; killed after it, the
next open finishes the save from the journal. Files a save removes (a deleted
mask, files of removed samples, staged files of a save that never committed)
are moved to ``.hybridseg-trash/<save>/``, never deleted. Loading validates
every file before it returns; it writes nothing except finishing or undoing an
interrupted save (:func:`recover`). A broken file raises :class:`StoreError`
naming the file (and the line, for JSON).

The parts: this module writes (and re-exports the public names), :mod:`.store_journal`
holds the file names, the staged writes, the journal and :func:`recover`,
:mod:`.store_read` reads and validates, :mod:`.coco` exports COCO JSON.

This module is Qt-free and napari-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.data.coco import export_coco
from napari_hybridseg.core.data.collection import Box, Collection, Point, Sample, TagImplies, WeightState
from napari_hybridseg.core.data.store_journal import (
    FORMAT,
    JOURNAL_FILE,
    PROJECT_FILE,
    SAVE_LOCK,
    TRASH_DIR,
    VERSION,
    WEIGHTS_FILE,
    WEIGHTS_FORMAT,
    StoreError,
    _Plan,
    _relpath,
    _save_lock,
    _write_json,
    recover,
)
from napari_hybridseg.core.data.store_read import (
    _check_header,
    _read_json,
    _sample_shape,
    header_shape,
    image_problems,
    is_project,
    load_project,
)

__all__ = [
    "FORMAT",
    "JOURNAL_FILE",
    "PROJECT_FILE",
    "SAVE_LOCK",
    "TRASH_DIR",
    "VERSION",
    "WEIGHTS_FILE",
    "WEIGHTS_FORMAT",
    "StoreError",
    "annotation_dict",
    "export_coco",
    "header_shape",
    "image_problems",
    "is_project",
    "load_project",
    "recover",
    "save_project",
    "save_sample",
    "save_vocabulary",
    "save_weights",
]

#: keys of ``Collection.meta`` / ``Sample.meta`` that describe the running session, not the data
_RUNTIME_META = ("project_dir", "recovered", "image_problems")


# ----------------------------------------------------------------------------------------------
# serialisation helpers
# ----------------------------------------------------------------------------------------------
def _check_json(value: Any, where: str) -> Any:
    """Fail early (before any write) if ``value`` is not JSON-serialisable."""
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError) as exc:
        raise StoreError(f"{where} is not JSON-serialisable ({exc}); store only numbers, strings, lists "
                         "and dicts there") from exc
    return value


def _mask_for_png(mask: np.ndarray, what: str) -> np.ndarray:
    arr = np.asarray(mask)
    if arr.ndim != 2:
        raise StoreError(f"{what}: a mask must be 2D (H, W), got shape {arr.shape}")
    if arr.dtype == bool:
        return arr.astype(np.uint8)
    if not np.issubdtype(arr.dtype, np.integer):
        if not np.array_equal(arr, np.rint(arr)):
            raise StoreError(f"{what}: mask holds non-integer values; masks hold integer label values")
    lo, hi = (int(arr.min()), int(arr.max())) if arr.size else (0, 0)
    if lo < 0 or hi > 65535:
        raise StoreError(f"{what}: mask values must lie in 0..65535 to fit a PNG, got {lo}..{hi}")
    return arr.astype(np.uint8 if hi <= 255 and arr.dtype != np.uint16 else np.uint16)


def _box_dict(b: Box) -> dict:
    return {"id": b.id, "x0": b.x0, "y0": b.y0, "x1": b.x1, "y1": b.y1, "label": b.label}


def _point_dict(p: Point) -> dict:
    return {"id": p.id, "x": p.x, "y": p.y, "label": p.label, "positive": p.positive}


def annotation_dict(sample: Sample) -> dict:
    """The JSON object of ``annotations/<id>.json`` for ``sample``."""
    return {
        "format": "napari-hybridseg-annotations",
        "version": VERSION,
        "sample": sample.id,
        "boxes": [_box_dict(b) for b in sample.boxes],
        "points": [_point_dict(p) for p in sample.points],
        "tags": list(sample.tags),
    }


def _weights_dict(collection: Collection) -> dict:
    def enc(states: dict[str, WeightState]) -> dict:
        return {k: {"value": float(s.value), "history": [[int(t), float(v)] for t, v in s.history]}
                for k, s in states.items()}

    return {
        "format": WEIGHTS_FORMAT,
        "version": VERSION,
        "samples": enc(collection.sample_weights),
        # always empty (nothing learns per-annotation weights); written because older versions
        # require the key when they read weights.json
        "annotations": {},
    }


def _plan_sample(sample: Sample, root: Path, plan: _Plan, *, copy_images: bool) -> dict:
    """Add one sample's files to ``plan`` and return its entry in project.json."""
    sid = sample.id
    if not sid or "/" in sid or "\\" in sid or sid in (".", ".."):
        raise StoreError(f"sample id {sid!r} cannot be a file name; use collection.unique_id(name)")
    shape = _sample_shape(sample)
    images_dir = root / "images"

    # the image: referenced where it lies, or held by the project
    src = Path(sample.image_path) if sample.image_path is not None else None
    if src is not None:
        src = src.absolute()  # a relative path means relative to the working directory, as everywhere
    inside = src is not None and src.resolve().parent == images_dir.resolve()
    if src is not None and (inside or not copy_images):
        image_path = src
    elif src is not None:  # copy_images: keep the file's own encoding, bytes unchanged
        image_path = images_dir / f"{sid}{src.suffix.lower()}"
        if not src.exists():
            raise StoreError(f"sample {sid!r}: image file {src} not found; cannot copy it into the project")
        plan.copies[image_path] = src
    else:  # pixels only in memory (napari layer, generator)
        arr = np.asarray(sample.image)
        image_path = images_dir / (f"{sid}.png" if arr.dtype == np.uint8 else f"{sid}.tif")
        plan.images[image_path] = arr
    plan.image_paths[sid] = image_path

    entry: dict[str, Any] = {
        "id": sid,
        "image": _relpath(image_path, root),
        "shape": [shape[0], shape[1]],
        "group": sample.group,
        "corrupted": bool(sample.corrupted),
        "corruption": sample.corruption,
        "mask": None,
        "reference_mask": None,
        "annotations": None,
        "meta": _check_json({k: v for k, v in sample.meta.items() if k != "shape"}, f"sample {sid!r} meta"),
    }
    for key, arr, folder in (("mask", sample.mask, "masks"), ("reference_mask", sample.reference_mask,
                                                              "reference_masks")):
        path = root / folder / f"{sid}.png"
        if arr is None:
            plan.remove.append(path)
            continue
        png = _mask_for_png(arr, f"sample {sid!r} {key}")
        if png.shape != shape:
            raise StoreError(f"sample {sid!r}: {key} has shape {png.shape} but the image is {shape}; "
                             "a mask must match its image")
        plan.masks[path] = png
        entry[key] = f"{folder}/{sid}.png"
    ann_path = root / "annotations" / f"{sid}.json"
    if sample.boxes or sample.points or sample.tags:
        plan.json[ann_path] = annotation_dict(sample)
        entry["annotations"] = f"annotations/{sid}.json"
    else:
        plan.remove.append(ann_path)
    return entry


def _project_header(collection: Collection) -> dict:
    return {
        "format": FORMAT,
        "version": VERSION,
        "classes": [{"name": c.name, "value": c.value, "color": c.color} for c in collection.classes],
        "tags": [{"name": t.name, "implies": TagImplies(t.implies).value, "class_value": t.class_value}
                 for t in collection.tag_defs],
        "meta": _check_json({k: v for k, v in collection.meta.items() if k not in _RUNTIME_META},
                            "collection meta"),
    }


def _apply_image_paths(collection: Collection, plan: _Plan) -> None:
    for sid, path in plan.image_paths.items():
        collection.samples[sid].image_path = Path(os.path.normpath(path.absolute()))


# ----------------------------------------------------------------------------------------------
# public API: save
# ----------------------------------------------------------------------------------------------
def save_project(collection: Collection, path: str | Path, *, copy_images: bool = False) -> Path:
    """Write ``collection`` as a project folder.

    Parameters
    ----------
    collection : Collection
        What to save. Samples whose pixels exist only in memory get their
        image written to ``images/``; afterwards their ``image_path`` points
        there (the only change made to ``collection``).
    path : str or Path
        The project folder; created if needed. An existing project there is
        replaced: files of samples that no longer exist are removed.
    copy_images : bool
        ``True``: copy every referenced image into ``images/`` (bytes
        unchanged) so the folder is self-contained. ``False`` (default):
        reference images by a path relative to the project folder.

    Returns
    -------
    Path
        The project folder.

    Raises
    ------
    StoreError
        If something cannot be saved (a mask of the wrong shape, meta that is
        not JSON...). Nothing is written in that case.
    """
    root = Path(path)
    if root.exists() and not root.is_dir():
        raise StoreError(f"{root}: exists and is not a folder; choose another project path")
    plan = _Plan()
    entries = [_plan_sample(s, root, plan, copy_images=copy_images) for s in collection]
    project = _project_header(collection)
    project["samples"] = entries
    plan.json[root / PROJECT_FILE] = project
    plan.json[root / WEIGHTS_FILE] = _weights_dict(collection)
    root.mkdir(parents=True, exist_ok=True)
    with _save_lock(root):
        # files of samples that are gone (an earlier save of this project): to the trash, never deleted
        ids = set(collection.ids)
        for folder, suffix in (("masks", ".png"), ("reference_masks", ".png"), ("annotations", ".json")):
            d = root / folder
            if d.is_dir():
                plan.remove += [p for p in d.glob(f"*{suffix}") if p.stem not in ids and not p.name.startswith(".")]
        plan.execute(root)
    _apply_image_paths(collection, plan)
    collection.meta["project_dir"] = str(root.absolute())
    return root


def save_sample(collection: Collection, path: str | Path, sample_id: str) -> None:
    """Write one sample's annotations and mask (e.g. on navigating away from it in the widget).

    Only that sample's files are written (atomically); ``project.json`` is
    rewritten only if the sample's entry changed (new sample, mask added or
    removed, flags changed). The project must exist (see :func:`save_project`).

    Raises
    ------
    StoreError
        If the project cannot be read or the sample cannot be saved; nothing
        is written then.
    KeyError
        If ``sample_id`` is not in ``collection``.
    """
    root = Path(path)
    sample = collection[sample_id]
    if not (root / PROJECT_FILE).is_file() and not (root / JOURNAL_FILE).is_file():
        raise StoreError(f"{root / PROJECT_FILE}: file not found; save the whole project first (save_project)")
    with _save_lock(root):
        project = _read_json(root / PROJECT_FILE)
        _check_header(project, root / PROJECT_FILE)
        plan = _Plan()
        entry = _plan_sample(sample, root, plan, copy_images=False)
        entries = project.get("samples", [])
        for i, old in enumerate(entries):
            if isinstance(old, dict) and old.get("id") == sample_id:
                if old != entry:
                    entries[i] = entry
                    plan.json[root / PROJECT_FILE] = project
                break
        else:
            entries.append(entry)
            plan.json[root / PROJECT_FILE] = project
        plan.execute(root)
    _apply_image_paths(collection, plan)


def save_vocabulary(collection: Collection, path: str | Path) -> None:
    """Write the classes, the tag vocabulary and the collection meta into ``project.json`` (atomically).

    The sample list is kept as it is on disk; use it right after a class or a tag
    definition changed (the widget does, so that a new class survives a crash).
    The project must exist (see :func:`save_project`).
    """
    root = Path(path)
    with _save_lock(root):
        project = _read_json(root / PROJECT_FILE)
        _check_header(project, root / PROJECT_FILE)
        header = _project_header(collection)
        if all(project.get(k) == v for k, v in header.items()):
            return
        project.update(header)
        _write_json(root / PROJECT_FILE, project)


def save_weights(collection: Collection, path: str | Path) -> None:
    """Write the learned weights and their history to ``weights.json`` (atomically)."""
    with _save_lock(Path(path)):
        _write_json(Path(path) / WEIGHTS_FILE, _weights_dict(collection))
