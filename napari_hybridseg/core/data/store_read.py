"""Reading a project folder: every file is validated before :func:`load_project` returns.

A broken file raises :class:`~napari_hybridseg.core.data.store_journal.StoreError`
naming the file (and the line, for JSON) and what to do. The public names are
re-exported by :mod:`napari_hybridseg.core.data.store`.

This module is Qt-free and napari-free.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.data.collection import Box, ClassInfo, Collection, Point, Sample, TagDef, WeightState
from napari_hybridseg.core.data.store_journal import (
    FORMAT,
    PROJECT_FILE,
    VERSION,
    WEIGHTS_FILE,
    WEIGHTS_FORMAT,
    StoreError,
    recover,
)


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
    # "annotations" (per box / point weights) was written by older versions and is ignored: nothing learns it
    for k, s in (_field(data, "samples", dict, "top level", path)).items():
        w = f"samples[{k!r}]"
        value = _field(s, "value", (int, float), w, path)
        hist = _field(s, "history", list, w, path)
        try:
            collection.sample_weights[k] = WeightState(float(value), [(int(t), float(v)) for t, v in hist])
        except (TypeError, ValueError) as exc:
            raise StoreError(f"{path}: {w}: history must be a list of [step, value] pairs") from exc


def is_project(path: str | Path) -> bool:
    """Whether ``path`` is a folder holding a project.json of this format (cheap check)."""
    try:
        data = json.loads((Path(path) / PROJECT_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT
