"""The project folder: an annotated collection on disk that people and other tools can read.

Layout (schema in ``docs/project-format.md``)::

    project.json              format name, version, classes, tag vocabulary, sample list
    annotations/<id>.json     boxes, points, tags of one sample (absent: none)
    masks/<id>.png            strong mask, uint8 or uint16 label values (absent: no mask)
    reference_masks/<id>.png  evaluation-only true masks (training never reads them)
    images/<id>.<ext>         images the project holds itself (copied, or pixels that
                              existed only in memory); others are referenced by a path
                              relative to the project folder
    weights.json              learned weights (DII gamma per sample / annotation) with history
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

This module is Qt-free and napari-free.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.data.collection import (
    Box,
    ClassInfo,
    Collection,
    Point,
    Sample,
    TagDef,
    TagImplies,
    WeightState,
)
from napari_hybridseg.core.fsio import UMASK, atomic_write, crash_point, fsync_dir, fsync_file

__all__ = [
    "FORMAT",
    "VERSION",
    "StoreError",
    "export_coco",
    "is_project",
    "load_project",
    "recover",
    "save_project",
    "save_sample",
    "save_vocabulary",
    "save_weights",
]

FORMAT = "napari-hybridseg-project"
VERSION = 1
WEIGHTS_FORMAT = "napari-hybridseg-weights"
PROJECT_FILE = "project.json"
WEIGHTS_FILE = "weights.json"

#: keys of ``Collection.meta`` / ``Sample.meta`` that describe the running session, not the data
_RUNTIME_META = ("project_dir", "recovered", "image_problems")


class StoreError(ValueError):
    """A project file that cannot be read or written; the message names the file and what to do."""


# ----------------------------------------------------------------------------------------------
# durable, atomic writes
# ----------------------------------------------------------------------------------------------
JOURNAL_FILE = ".hybridseg-journal.json"
TRASH_DIR = ".hybridseg-trash"
SAVE_LOCK = ".hybridseg.lock"
_STAGED = ".staged"


def _stage(path: Path, write: Callable[[Path], None], txn: str) -> Path:
    """Write ``write(tmp)`` durably to a staged file beside ``path``; the journal later renames it into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{txn}{_STAGED}")
    try:
        write(staged)
        os.chmod(staged, 0o666 & ~UMASK)
        fsync_file(staged)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise
    crash_point()
    return staged


def _trash(root: Path, path: Path, txn: str) -> None:
    """Move ``path`` into ``.hybridseg-trash/<txn>/`` (same relative path): files are never deleted outright."""
    if not path.exists():
        return
    try:
        rel = path.relative_to(root)
    except ValueError:
        rel = Path(path.name)
    dst = root / TRASH_DIR / txn / rel
    dst.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dst)
    fsync_dir(dst.parent)
    fsync_dir(path.parent)
    crash_point()


def _apply_journal(root: Path, journal: dict) -> None:
    """Finish a committed save: rename every staged file into place (project.json last), then trash what goes.

    Idempotent: a staged file already renamed is skipped, so a save killed half-way
    through this is finished by the next open.
    """
    txn = str(journal.get("txn", "unknown"))
    dirs = set()
    for staged_rel, final_rel in journal.get("renames", []):
        staged, final = root / staged_rel, root / final_rel
        if staged.exists():
            os.replace(staged, final)
            dirs.add(final.parent)
            crash_point()
    for d in dirs:
        fsync_dir(d)
    for rel in journal.get("trash", []):
        _trash(root, root / rel, txn)


def recover(path: str | Path) -> list[str]:
    """Finish or undo an interrupted save of the project at ``path``; return what was done (one line each).

    A committed save (its journal exists) is finished. Files of a save that was
    killed before its commit (staged and temporary files) are moved into
    ``.hybridseg-trash/`` rather than deleted. Called by :func:`load_project` and
    before every save; a no-op on a folder that cannot be written or is being
    saved by another process right now.
    """
    from napari_hybridseg.core.data.locks import FolderLock, LockedError

    root = Path(path)
    if not root.is_dir():
        return []
    journal_path = root / JOURNAL_FILE
    stale = [p for d in (root, root / "masks", root / "reference_masks", root / "annotations", root / "images")
             if d.is_dir() for p in d.iterdir()
             if p.name.startswith(".") and (p.name.endswith(_STAGED) or p.name.endswith(".tmp"))]
    if not journal_path.exists() and not stale:
        return []
    lock = FolderLock(root, SAVE_LOCK, "project")
    try:
        lock.acquire(timeout=0.0)
    except (LockedError, OSError):
        return []  # another process is saving (its files are not stale), or the folder is read-only
    try:
        return _recover_locked(root)
    finally:
        lock.release()


def _recover_locked(root: Path) -> list[str]:
    done = []
    journal_path = root / JOURNAL_FILE
    if journal_path.exists():
        try:
            journal = json.loads(journal_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise StoreError(f"{journal_path}: an interrupted save left a journal that cannot be read ({exc}); "
                             f"move it away to open the project as it was before that save") from exc
        _apply_journal(root, journal)
        journal_path.unlink()
        fsync_dir(root)
        done.append(f"finished a save that was interrupted ({len(journal.get('renames', []))} file(s))")
    stale = [p for d in (root, root / "masks", root / "reference_masks", root / "annotations", root / "images")
             if d.is_dir() for p in d.iterdir()
             if p.name.startswith(".") and (p.name.endswith(_STAGED) or p.name.endswith(".tmp"))]
    if stale:
        txn = time.strftime("%Y%m%d-%H%M%S") + "-stale"
        for p in stale:
            _trash(root, p, txn)
        done.append(f"moved {len(stale)} file(s) of a save that never completed to {TRASH_DIR}/{txn}")
    return done


def _dumps(data: Any) -> str:
    """Indented JSON, except that each entry of a top-level "samples" list stays on one line.

    One line per sample keeps a 1000-sample project.json short, diff-friendly
    and greppable, and makes the line number in an error point at the sample.
    """
    if not (isinstance(data, dict) and isinstance(data.get("samples"), list) and data["samples"]):
        return json.dumps(data, indent=1, ensure_ascii=False, allow_nan=False) + "\n"
    head = json.dumps({k: v for k, v in data.items() if k != "samples"}, indent=1, ensure_ascii=False,
                      allow_nan=False)
    rows = ",\n".join("  " + json.dumps(e, ensure_ascii=False, allow_nan=False) for e in data["samples"])
    return head[:-2] + ',\n "samples": [\n' + rows + "\n ]\n}\n"


def _write_json(path: Path, data: Any) -> None:
    text = _dumps(data)
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _png_writer(arr: np.ndarray) -> Callable[[Path], None]:
    from PIL import Image

    def write(tmp: Path) -> None:
        Image.fromarray(arr).save(tmp, format="PNG")

    return write


def _image_writer(path: Path, arr: np.ndarray) -> Callable[[Path], None]:
    """uint8 images as PNG; everything else as TIFF so that pixels survive exactly."""
    if path.suffix == ".png":
        return _png_writer(arr)
    import tifffile

    photometric = "rgb" if arr.ndim == 3 else "minisblack"
    return lambda tmp: tifffile.imwrite(tmp, arr, photometric=photometric)


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


def _relpath(path: Path, start: Path) -> str:
    try:
        return Path(os.path.relpath(path, start)).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return Path(path).resolve().as_posix()


def _sample_shape(sample: Sample) -> tuple[int, int]:
    if sample.image is not None:
        return int(sample.image.shape[0]), int(sample.image.shape[1])
    if "shape" in sample.meta:
        h, w = sample.meta["shape"]
        return int(h), int(w)
    if sample.image_path is not None:
        return header_shape(sample.image_path)
    raise StoreError(f"sample {sample.id!r} has neither pixels nor an image path; add the image before saving")


def header_shape(path: str | Path) -> tuple[int, int]:
    """(height, width) of an image file read from its header, without decoding the pixels."""
    path = Path(path)
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        with tifffile.TiffFile(path) as tif:
            shape = tif.pages[0].shape
        return int(shape[0]), int(shape[1])
    from PIL import Image

    with Image.open(path) as im:  # lazy: reads the header only
        w, h = im.size
    return int(h), int(w)


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
        "annotations": enc(collection.annotation_weights),
    }


class _Plan:
    """Everything a save will write, built (and validated) before the first write."""

    def __init__(self) -> None:
        self.json: dict[Path, Any] = {}
        self.masks: dict[Path, np.ndarray] = {}
        self.images: dict[Path, np.ndarray] = {}
        self.copies: dict[Path, Path] = {}
        self.remove: list[Path] = []
        self.image_paths: dict[str, Path] = {}  # sample id -> where its image lives after the save

    def execute(self, root: Path) -> None:
        """Write every file, then commit them all at once.

        Each file is first written (and fsynced) under a staged name; then one
        journal listing every rename is written atomically: that is the commit.
        The renames follow (project.json last, so a reader unaware of the journal
        sees the old or the new index), then files that go are moved to the trash,
        then the journal is removed. A kill before the commit leaves the project
        as it was (the staged files go to the trash on the next open); after it,
        the next open finishes the save.
        """
        txn = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}-{os.urandom(3).hex()}"
        writes: list[tuple[Path, Callable[[Path], None]]] = []
        for dst, src in self.copies.items():
            writes.append((dst, lambda tmp, src=src: shutil.copyfile(src, tmp)))
        for path, arr in self.images.items():
            writes.append((path, _image_writer(path, arr)))
        for path, arr in self.masks.items():
            writes.append((path, _png_writer(arr)))
        for path, data in sorted(self.json.items(), key=lambda kv: kv[0].name == PROJECT_FILE):
            text = _dumps(data)
            writes.append((path, lambda tmp, text=text: tmp.write_text(text, encoding="utf-8")))
        staged: list[tuple[Path, Path]] = []
        try:
            for final, write in writes:
                staged.append((_stage(final, write, txn), final))
            for d in {f.parent for _, f in staged}:
                fsync_dir(d)
            journal = {"format": "napari-hybridseg-journal", "txn": txn,
                       "renames": [[_relpath(a, root), _relpath(b, root)] for a, b in staged],
                       "trash": [_relpath(p, root) for p in self.remove if p.exists()]}
            _write_json(root / JOURNAL_FILE, journal)  # the commit point
        except BaseException:
            for a, _ in staged:
                a.unlink(missing_ok=True)
            raise
        _apply_journal(root, journal)
        (root / JOURNAL_FILE).unlink()
        fsync_dir(root)
        crash_point()


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
class _save_lock:
    """Hold the project's save lock (waiting for another process's save, which takes moments) and finish or
    undo an interrupted earlier save first."""

    def __init__(self, root: Path):
        from napari_hybridseg.core.data.locks import FolderLock

        self.lock = FolderLock(root, SAVE_LOCK, "project")

    def __enter__(self):
        from napari_hybridseg.core.data.locks import LockedError

        try:
            self.lock.acquire(timeout=30.0)
        except LockedError as exc:
            raise StoreError(f"{exc} (another program is saving this project)") from exc
        except OSError as exc:
            raise StoreError(f"{self.lock.folder}: cannot write the project folder ({exc.strerror or exc}); "
                             "check its permissions and free space") from exc
        try:
            _recover_locked(self.lock.folder)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.lock.release()


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


# ----------------------------------------------------------------------------------------------
# public API: load
# ----------------------------------------------------------------------------------------------
def _read_json(path: Path) -> Any:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise StoreError(f"{path}: file not found; is this a napari-hybridseg project folder?") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise StoreError(f"{path}: cannot read ({exc})") from exc
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise StoreError(f"{path}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg}). "
                         "Fix the file by hand or restore it; nothing was changed.") from exc


def _check_header(data: Any, path: Path) -> None:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise StoreError(f"{path}: not a napari-hybridseg project (\"format\" must be {FORMAT!r})")
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise StoreError(f"{path}: missing or invalid \"version\"; expected an integer >= 1")
    if version > VERSION:
        raise StoreError(f"{path}: project format version {version} is newer than this napari-hybridseg "
                         f"understands ({VERSION}); upgrade napari-hybridseg")


_SCHEMA_HINT = "; fix the file by hand (schema: docs/project-format.md) or restore it"


def _field(obj: Any, key: str, types: type | tuple[type, ...], where: str, path: Path, *,
           optional: bool = False) -> Any:
    if not isinstance(obj, dict):
        raise StoreError(f"{path}: {where} must be a JSON object{_SCHEMA_HINT}")
    if key not in obj:
        if optional:
            return None
        raise StoreError(f"{path}: {where} lacks the key {key!r}{_SCHEMA_HINT}")
    value = obj[key]
    if value is None and optional:
        return None
    if isinstance(value, bool) and bool not in (types if isinstance(types, tuple) else (types,)):
        raise StoreError(f"{path}: {where}: {key!r} must be {_typename(types)}, got {value!r}{_SCHEMA_HINT}")
    if not isinstance(value, types):
        raise StoreError(f"{path}: {where}: {key!r} must be {_typename(types)}, got {value!r}{_SCHEMA_HINT}")
    return value


def _typename(types: type | tuple[type, ...]) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join(t.__name__ for t in types)


def _read_mask(path: Path, shape: tuple[int, int], what: str) -> np.ndarray:
    from PIL import Image

    if not path.is_file():
        raise StoreError(f"{path}: {what} listed in project.json is missing; restore it or set "
                         f"the sample's \"{what}\" to null")
    try:
        with Image.open(path) as im:
            arr = np.asarray(im)
    except Exception as exc:
        raise StoreError(f"{path}: cannot read the {what} PNG ({exc})") from exc
    if arr.ndim != 2:
        raise StoreError(f"{path}: a {what} must be a single-channel label PNG, got shape {arr.shape}")
    if arr.dtype == bool:
        arr = arr.astype(np.uint8)
    elif arr.dtype not in (np.uint8, np.uint16):
        if arr.size and (arr.min() < 0 or arr.max() > 65535):
            raise StoreError(f"{path}: {what} values outside 0..65535")
        arr = arr.astype(np.uint16)
    if arr.shape != shape:
        raise StoreError(f"{path}: {what} has shape {arr.shape} but project.json says the image is {shape}")
    return arr


def _load_annotations(path: Path, sample: Sample) -> None:
    data = _read_json(path)
    where = "annotation file"
    boxes = _field(data, "boxes", list, where, path)
    points = _field(data, "points", list, where, path)
    tags = _field(data, "tags", list, where, path)
    num = (int, float)
    try:
        for i, b in enumerate(boxes):
            w = f"boxes[{i}]"
            sample.boxes.append(Box(_field(b, "x0", num, w, path), _field(b, "y0", num, w, path),
                                    _field(b, "x1", num, w, path), _field(b, "y1", num, w, path),
                                    label=_field(b, "label", int, w, path), id=_field(b, "id", str, w, path)))
        for i, p in enumerate(points):
            w = f"points[{i}]"
            sample.points.append(Point(_field(p, "x", num, w, path), _field(p, "y", num, w, path),
                                       label=_field(p, "label", int, w, path),
                                       positive=_field(p, "positive", bool, w, path),
                                       id=_field(p, "id", str, w, path)))
    except (TypeError, ValueError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(f"{path}: invalid annotation ({exc})") from exc
    for i, t in enumerate(tags):
        if not isinstance(t, str):
            raise StoreError(f"{path}: tags[{i}] must be a string, got {t!r}")
    sample.tags = list(tags)


def load_project(path: str | Path) -> Collection:
    """Read a project folder into a :class:`Collection`.

    Masks, reference masks and annotations are read now; images are read
    lazily (``sample.meta["shape"]`` holds their size). Image paths become
    absolute. ``collection.meta["project_dir"]`` is set to the folder.

    Raises
    ------
    StoreError
        Naming the broken file (and line, for invalid JSON) and what to do.
        Nothing is written, except that an interrupted save is finished or
        undone first (:func:`recover`; what it did is in
        ``collection.meta["recovered"]``).
    """
    root = Path(path)
    pfile = root / PROJECT_FILE
    if not root.is_dir():
        raise StoreError(f"{root}: no such project folder; create one with `hybridseg import` or save_project")
    recovered = recover(root)
    data = _read_json(pfile)
    _check_header(data, pfile)
    collection = Collection(classes=[], tag_defs=[])
    try:
        for i, c in enumerate(_field(data, "classes", list, "top level", pfile)):
            w = f"classes[{i}]"
            collection.classes.append(ClassInfo(_field(c, "name", str, w, pfile), _field(c, "value", int, w, pfile),
                                                _field(c, "color", str, w, pfile)))
        for i, t in enumerate(_field(data, "tags", list, "top level", pfile)):
            w = f"tags[{i}]"
            collection.tag_defs.append(TagDef(_field(t, "name", str, w, pfile), _field(t, "implies", str, w, pfile),
                                              _field(t, "class_value", int, w, pfile, optional=True)))
    except StoreError:
        raise
    except ValueError as exc:
        raise StoreError(f"{pfile}: invalid class or tag definition ({exc})") from exc
    collection.meta.update(_field(data, "meta", dict, "top level", pfile, optional=True) or {})

    for i, e in enumerate(_field(data, "samples", list, "top level", pfile)):
        w = f"samples[{i}]"
        sid = _field(e, "id", str, w, pfile)
        w = f"sample {sid!r}"
        if sid in collection.samples:
            raise StoreError(f"{pfile}: sample id {sid!r} appears twice; ids must be unique")
        shape = _field(e, "shape", list, w, pfile)
        if len(shape) != 2 or not all(isinstance(v, int) and v > 0 for v in shape):
            raise StoreError(f"{pfile}: {w}: \"shape\" must be [height, width], got {shape!r}")
        shape_t = (shape[0], shape[1])
        image = Path(_field(e, "image", str, w, pfile))
        meta = dict(_field(e, "meta", dict, w, pfile, optional=True) or {})
        meta["shape"] = [shape_t[0], shape_t[1]]
        sample = Sample(
            id=sid,
            image_path=Path(os.path.normpath((root / image).absolute())),
            group=_field(e, "group", str, w, pfile, optional=True),
            corrupted=bool(_field(e, "corrupted", bool, w, pfile, optional=True)),
            corruption=_field(e, "corruption", str, w, pfile, optional=True),
            meta=meta,
        )
        for key in ("mask", "reference_mask"):
            rel = _field(e, key, str, w, pfile, optional=True)
            if rel is not None:
                setattr(sample, key, _read_mask(root / rel, shape_t, key))
        rel = _field(e, "annotations", str, w, pfile, optional=True)
        if rel is not None:
            _load_annotations(root / rel, sample)
        collection.samples[sid] = sample

    wfile = root / WEIGHTS_FILE
    if wfile.exists():
        _load_weights(wfile, collection)
    collection.meta["project_dir"] = str(root.absolute())
    if recovered:
        collection.meta["recovered"] = recovered
    problems = image_problems(collection)
    if problems:
        collection.meta["image_problems"] = problems
    return collection


def image_problems(collection: Collection) -> dict[str, str]:
    """Sample id -> what is wrong with its image file (missing, empty, cut off), found without decoding."""
    from napari_hybridseg.core.data.images import truncation

    out = {}
    for s in collection:
        if s.image is not None or s.image_path is None:
            continue
        path = Path(s.image_path)
        if not path.is_file():
            out[s.id] = f"{path}: image file not found"
        else:
            why = truncation(path)
            if why:
                out[s.id] = f"{path}: {why}"
    return out


def _load_weights(path: Path, collection: Collection) -> None:
    data = _read_json(path)
    if not isinstance(data, dict) or data.get("format") != WEIGHTS_FORMAT:
        raise StoreError(f"{path}: not a napari-hybridseg weights file (\"format\" must be {WEIGHTS_FORMAT!r})")
    for key, target in (("samples", collection.sample_weights), ("annotations", collection.annotation_weights)):
        for k, s in (_field(data, key, dict, "top level", path)).items():
            w = f"{key}[{k!r}]"
            value = _field(s, "value", (int, float), w, path)
            hist = _field(s, "history", list, w, path)
            try:
                target[k] = WeightState(float(value), [(int(t), float(v)) for t, v in hist])
            except (TypeError, ValueError) as exc:
                raise StoreError(f"{path}: {w}: history must be a list of [step, value] pairs") from exc


def is_project(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a project.json of this format (cheap check)."""
    try:
        data = json.loads((Path(path) / PROJECT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT


# ----------------------------------------------------------------------------------------------
# COCO export
# ----------------------------------------------------------------------------------------------
def export_coco(collection: Collection, out_json: str | Path) -> Path:
    """Write the boxes and points of ``collection`` as a COCO JSON file.

    Boxes become ``bbox`` annotations (``[x, y, width, height]``). Points
    become keypoint annotations with one keypoint ``[x, y, 2]`` and a zero
    size box at the point; ``"positive": false`` marks background clicks.
    Every annotation carries ``"hybridseg_id"`` (the box / point id) and,
    where learned, ``"weight"`` (its gamma, or its sample's). Category ids
    are the class label values; image ids count from 1 in collection order
    with the sample id in ``"hybridseg_sample_id"``.
    """
    out = Path(out_json)
    root = Path(collection.meta.get("project_dir", out.parent))
    images, annotations = [], []
    ann_id = 0
    for image_id, s in enumerate(collection, start=1):
        h, w = _sample_shape(s)
        file_name = _relpath(Path(s.image_path), root) if s.image_path is not None else f"{s.id}.png"
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w,
                       "hybridseg_sample_id": s.id, "tags": list(s.tags)})
        sample_weight = collection.weight_of(s.id)
        for b in s.boxes:
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": b.label,
                   "bbox": [b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0], "area": b.area, "iscrowd": 0,
                   "hybridseg_id": b.id}
            weight = collection.annotation_weights.get(b.id)
            if weight is not None or sample_weight is not None:
                ann["weight"] = weight.value if weight is not None else sample_weight
            annotations.append(ann)
        for p in s.points:
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": p.label, "bbox": [p.x, p.y, 0.0, 0.0],
                   "area": 0.0, "iscrowd": 0, "keypoints": [p.x, p.y, 2], "num_keypoints": 1,
                   "positive": p.positive, "hybridseg_id": p.id}
            weight = collection.annotation_weights.get(p.id)
            if weight is not None or sample_weight is not None:
                ann["weight"] = weight.value if weight is not None else sample_weight
            annotations.append(ann)
    categories = [{"id": c.value, "name": c.name, "supercategory": "", "keypoints": ["point"], "skeleton": []}
                  for c in collection.classes]
    _write_json(out, {"info": {"description": "exported by napari-hybridseg", "version": "1.0"},
                      "images": images, "annotations": annotations, "categories": categories})
    return out
