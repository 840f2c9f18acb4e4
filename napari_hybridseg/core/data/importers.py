"""Importers: real dataset layouts -> :class:`~napari_hybridseg.core.data.collection.Collection`.

Layouts (see ``hybridseg import --help`` and the README):

``kvasir``
    ``images/``, ``masks/`` and a box JSON ``{id: {"height", "width", "bbox": [{"label", "xmin",
    "ymin", "xmax", "ymax"}, ...]}}`` (Kvasir-SEG's ``kavsir_bboxes.json``; any ``*bbox*.json``).
    The dataset's boxes become ``sample.boxes`` beside the mask. An optional
    ``*sessile*.csv`` (``image_id,flag``) tags flagged images ``"sessile"``.
``folder``
    ``images/`` + ``masks/`` (or ``labels/``), PNG/JPG/TIF/BMP, matched by file stem; a mask
    may carry a suffix (``_mask``, ``-seg``, ``_gt``, ``_label``..., optionally numbered:
    several masks of one image are merged). Images without a mask are unlabeled.
``busi``
    Class folders ``<class>/<name>.png`` with ``<name>_mask.png`` (``_mask_1``...). The folder
    name becomes an image-level tag; ``normal`` (and ``healthy``, ``negative``) mean
    "lesion absent", any other folder "lesion present" unless ``tag_implies`` says otherwise.
``images``
    A folder of images alone (searched recursively): all unlabeled.

What mask values mean is decided once per dataset, not per file
(:func:`~.images.decide_masks`, ``masks=`` to choose): binary masks (0/255, 1-bit,
lossy JPEG, soft or resampled edges) are thresholded (``> 127`` for 8-bit),
label masks (a small set of values) kept as class values, colour-coded RGB masks
mapped by colour; kvasir and busi masks are binary. The decision is a note.
Hidden files and macOS ``._*`` forks are skipped; byte-identical images get one
``group`` (so a split never separates them) and conflicting tags on them are reported;
masks whose size differs from their image are resized (nearest) and reported.
Everything reported is in ``collection.meta["import"]["notes"]``.

Images are not decoded at import: their size comes from the file header and is
stored in ``sample.meta["shape"]``. Masks are decoded (they decide the role).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np

from napari_hybridseg.core.data.collection import DEFAULT_COLORS, Box, ClassInfo, Collection, Sample, TagImplies
from napari_hybridseg.core.data.images import MASK_MODES
from napari_hybridseg.core.data.import_common import (
    _MASK_SUFFIX,
    ABSENT_NAMES,
    DatasetError,
    Progress,
    _Importer,
    _is_image,
    _list_images,
    _match_masks,
    _sample_name,
    _shared_stems,
    _subdir,
)

__all__ = ["LAYOUTS", "DatasetError", "import_dataset"]

LAYOUTS = ("kvasir", "folder", "busi", "images")


# ----------------------------------------------------------------------------------------------
# layouts
# ----------------------------------------------------------------------------------------------
def _import_folder(src: Path, imp: _Importer) -> None:
    # aliases seen in public polyp sets (CVC-ClinicDB, ETIS: Original/ + Ground Truth/)
    img_dir = _subdir(src, ("images", "image", "imgs", "img", "original"))
    if img_dir is None:
        raise DatasetError(f"{src}: expected a subfolder images/ (with masks/ beside it) for layout 'folder'")
    mask_dir = _subdir(src, ("masks", "mask", "labels", "label", "annotations", "gt", "ground_truth",
                             "ground truth", "groundtruth", "segmentations"))
    images = _list_images(img_dir)
    if not images:
        raise DatasetError(f"{img_dir}: no images (PNG, JPG, TIF, BMP) found")
    masks = _list_images(mask_dir) if mask_dir is not None else []
    if mask_dir is None:
        imp.note(f"{src}: no masks/ folder; every image imported unlabeled")
    pairs = _match_masks(images, masks, imp)
    twins = _shared_stems(images)
    for i, path in enumerate(images):
        sample = imp.add_sample(_sample_name(path, twins), path)
        if sample is not None and path in pairs:
            imp.set_mask(sample, pairs[path])
        imp.tick(i + 1, len(images))
    imp.decide_masks()


def _find_one(src: Path, pattern: str) -> Path | None:
    found = sorted(p for p in src.glob(pattern) if p.is_file() and not p.name.startswith("."))
    return found[0] if found else None


def _import_kvasir(src: Path, imp: _Importer) -> None:
    _import_folder(src, imp)  # JPEG masks: thresholded (a binary layout)
    c = imp.collection
    by_stem = {Path(s.meta["source"]).stem: s for s in c}
    box_file = _find_one(src, "*bbox*.json")
    class_name = "polyp"
    if box_file is None:
        imp.note(f"{src}: no box JSON (*bbox*.json); weak boxes will be derived from masks")
    else:
        try:
            data = json.loads(box_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise DatasetError(f"{box_file}: line {exc.lineno} column {exc.colno}: invalid JSON ({exc.msg})") \
                from exc
        if not isinstance(data, dict):
            raise DatasetError(f"{box_file}: expected an object {{image id: {{height, width, bbox: [...]}}}}")
        labels: set[str] = set()
        unknown, dropped = [], 0
        for key, entry in data.items():
            sample = by_stem.get(str(key))
            if sample is None:
                unknown.append(str(key))
                continue
            try:
                boxes = entry["bbox"]
                jh, jw = int(entry.get("height", 0)), int(entry.get("width", 0))
            except (TypeError, KeyError, ValueError) as exc:
                raise DatasetError(f"{box_file}: entry {key!r} lacks \"bbox\" or has a bad height/width") from exc
            h, w = sample.meta["shape"]
            sy = h / jh if jh else 1.0
            sx = w / jw if jw else 1.0
            if (jh and jh != h) or (jw and jw != w):
                imp.note(f"{sample.id}: box JSON says {jw}x{jh} but the image is {w}x{h}; boxes rescaled")
            for b in boxes:
                try:
                    x0, y0 = float(b["xmin"]) * sx, float(b["ymin"]) * sy
                    x1, y1 = float(b["xmax"]) * sx, float(b["ymax"]) * sy
                except (TypeError, KeyError, ValueError) as exc:
                    raise DatasetError(f"{box_file}: entry {key!r}: a box needs xmin, ymin, xmax, ymax") from exc
                x0, x1 = np.clip(sorted((x0, x1)), 0, w)
                y0, y1 = np.clip(sorted((y0, y1)), 0, h)
                if x1 - x0 < 1 or y1 - y0 < 1:
                    dropped += 1
                    continue
                labels.add(str(b.get("label", "polyp")))
                sample.boxes.append(Box(x0, y0, x1, y1, label=1, id=f"{sample.id}-b{len(sample.boxes)}"))
            sample.meta["dataset_boxes"] = True
        if unknown:
            imp.note(f"{box_file.name}: {len(unknown)} id(s) match no image: {', '.join(unknown[:5])}")
        if dropped:
            imp.note(f"{box_file.name}: {dropped} box(es) empty after clipping to the image; dropped")
        if len(labels) == 1:
            class_name = labels.pop()
        elif len(labels) > 1:
            imp.note(f"{box_file.name}: box labels {sorted(labels)} all mapped to one class")
        _note_box_mask_disagreement(c, imp)
    if not c.classes:  # (colour-coded masks asked for: their classes come from the colours)
        c.classes.append(ClassInfo(class_name, 1, DEFAULT_COLORS[1]))

    flag_file = _find_one(src, "*sessile*.csv")
    if flag_file is not None:
        tag = "sessile"
        c.ensure_tag(tag, TagImplies.NOTHING)
        n = 0
        with flag_file.open(newline="", encoding="utf-8") as fh:
            for row in csv.reader(fh):
                if len(row) < 2 or row[0] in ("image_id", "id"):
                    continue
                sample = by_stem.get(row[0].strip())
                # 1 = in the Kvasir-Sessile subset; 0 only means "not in that subset", so it gets no tag
                if sample is not None and row[1].strip() == "1":
                    sample.tags.append(tag)
                    n += 1
        imp.note(f"{flag_file.name}: {n} image(s) tagged {tag!r}")


def _note_box_mask_disagreement(c: Collection, imp: _Importer) -> None:
    """Record how far each dataset box set lies from the box derived from its (speck-free) mask."""
    from napari_hybridseg.core.data.hybridize import boxes_from_mask

    far = 0
    for s in c:
        if s.mask is None or not s.boxes:
            continue
        derived = boxes_from_mask(s.mask)
        if not derived:
            continue
        a = np.array([[b.x0, b.y0, b.x1, b.y1] for b in s.boxes])
        d = np.array([[b.x0, b.y0, b.x1, b.y1] for b in derived])
        hull_a = np.r_[a[:, :2].min(0), a[:, 2:].max(0)]
        hull_d = np.r_[d[:, :2].min(0), d[:, 2:].max(0)]
        diff = float(np.abs(hull_a - hull_d).max())
        s.meta["box_mask_diff_px"] = round(diff, 1)
        if diff > 5 or len(derived) != len(s.boxes):
            far += 1
    if far:
        imp.note(f"{far} image(s) whose dataset boxes differ from their mask by more than 5 px or in number "
                 "(see sample.meta['box_mask_diff_px']); the dataset's boxes are kept")


def _class_folders(src: Path) -> list[Path]:
    def folders(p: Path) -> list[Path]:
        return sorted(d for d in p.iterdir() if d.is_dir() and not d.name.startswith(".")
                      and any(_is_image(f) for f in d.iterdir()))

    found = folders(src)
    if not found:  # BUSI ships inside Dataset_BUSI_with_GT/: descend through single wrapper folders
        subs = [d for d in src.iterdir() if d.is_dir() and not d.name.startswith(".")]
        if len(subs) == 1:
            return _class_folders(subs[0])
    return found


def _import_busi(src: Path, imp: _Importer, *, tag_implies: dict[str, str] | None,
                 class_name: str) -> None:
    folders = _class_folders(src)
    if not folders:
        raise DatasetError(f"{src}: expected class folders (e.g. benign/, malignant/, normal/) holding images "
                           "and their _mask files for layout 'busi'")
    names = {f.name.lower() for f in folders}
    if names & {"images", "image", "imgs"} and names & {"masks", "mask", "labels", "gt"}:
        raise DatasetError(f"{src}: holds images/ and masks/ folders, not class folders; use layout 'folder' "
                           "(or 'kvasir' if it has a box JSON)")
    c = imp.collection
    c.classes.append(ClassInfo(class_name, 1, DEFAULT_COLORS[1]))
    implies = {k.lower(): v for k, v in (tag_implies or {}).items()}
    for folder in folders:
        tag = folder.name
        rule = implies.get(tag.lower(), "absent" if tag.lower() in ABSENT_NAMES else "present")
        c.ensure_tag(tag, TagImplies(rule), None if TagImplies(rule) is TagImplies.NOTHING else 1)
    total = sum(1 for f in folders for p in f.iterdir() if _is_image(p))
    done = 0
    per_folder: dict[str, list[Sample]] = {}
    for folder in folders:
        files = _list_images(folder)
        stems = {p.stem for p in files}
        # a file is a mask if stripping a mask suffix leaves the stem of another file in the folder
        masks = [p for p in files if p.stem not in stems or _MASK_SUFFIX.sub("", p.stem) in stems - {p.stem}]
        mask_set = set(masks)
        images = [p for p in files if p not in mask_set]
        pairs = _match_masks(images, masks, imp)
        per_folder[folder.name] = []
        twins = _shared_stems(images)
        for path in images:
            sample = imp.add_sample(_sample_name(path, twins), path, tags=[folder.name])
            if sample is None:
                continue
            per_folder[folder.name].append(sample)
            if path in pairs:
                imp.set_mask(sample, pairs[path])
            else:
                imp.note(f"{folder.name}/{path.name}: no mask; imported with its tag only")
            done += len(pairs.get(path, [])) + 1
            imp.tick(done, total)
    imp.decide_masks()
    for name, samples in per_folder.items():
        empty = sum(s.mask is not None and not s.mask.any() for s in samples)
        if empty:
            imp.note(f"{name}: {empty} of {len(samples)} mask(s) are empty")


def _import_images(src: Path, imp: _Importer) -> None:
    folder = _subdir(src, ("images",)) or src
    images = _list_images(folder, recursive=True)
    if not images:
        raise DatasetError(f"{folder}: no images (PNG, JPG, TIF, BMP) found")
    for i, path in enumerate(images):
        rel = path.relative_to(folder).with_suffix("")
        imp.add_sample("_".join(rel.parts), path)
        imp.tick(i + 1, len(images))
    if not imp.collection.samples:
        raise DatasetError(f"{folder}: every image file is unreadable ({imp.notes[0] if imp.notes else ''})")


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------
def import_dataset(
    src: str | Path,
    layout: str,
    *,
    class_name: str | None = None,
    tag_implies: dict[str, str] | None = None,
    binary_masks: bool | None = None,
    masks: str = "auto",
    mask_threshold: int | None = None,
    strong_fraction: float | None = None,
    weak: str = "box",
    noise: float = 0.0,
    seed: int = 0,
    point_placement: str = "anywhere",
    background_clicks: int = 0,
    progress: Progress | None = None,
) -> Collection:
    """Import a dataset folder as a collection (nothing is written; see ``save_project``).

    Parameters
    ----------
    src : str or Path
        The dataset folder.
    layout : {"kvasir", "folder", "busi", "images"}
        How the folder is organised (module docstring).
    class_name : str, optional
        Name of the single foreground class. Default ``"polyp"`` for kvasir
        (or the box JSON's label), ``"lesion"`` otherwise. Label masks with
        several values get one class per value instead.
    tag_implies : dict, optional
        busi: folder name -> ``"absent"`` / ``"present"`` / ``"nothing"``,
        overriding the default (``normal`` absent, every other folder present).
    masks : {"auto", "binary", "labels", "rgb"}
        What mask values mean, decided once for the whole dataset
        (:func:`~.images.decide_masks`): ``auto`` (default) decides from every
        mask's values (kvasir and busi: binary); ``binary`` thresholds;
        ``labels`` keeps values as class values; ``rgb`` maps the colours of
        colour-coded masks to classes (black = background). The decision is a
        note and ``collection.meta["import"]["masks"]``.
    mask_threshold : int, optional
        Binary masks: ``value > mask_threshold`` is foreground (default: half
        the 8- or 16-bit range when the values reach it, else any non-zero value).
    binary_masks : bool, optional
        Older spelling: ``True`` is ``masks="binary"``, ``False`` ``masks="labels"``.
    strong_fraction, weak, noise, seed, point_placement, background_clicks
        If ``strong_fraction`` is given, the imported collection is passed to
        :func:`~.hybridize.make_hybrid` with these arguments.
    progress : callable, optional
        Called as ``progress(done, total)``.

    Returns
    -------
    Collection
        ``collection.meta["import"]`` holds the layout, source and notes on
        every quirk met.

    Raises
    ------
    DatasetError
        If the folder does not match the layout, or a file is unreadable.
    """
    src = Path(src)
    if layout not in LAYOUTS:
        raise DatasetError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
    if not src.is_dir():
        raise DatasetError(f"{src}: no such folder")
    if binary_masks is not None:
        masks = "binary" if binary_masks else "labels"
    if masks not in MASK_MODES:
        raise DatasetError(f"unknown mask mode {masks!r}; choose one of {', '.join(MASK_MODES)}")
    imp = _Importer(src, layout, progress)
    imp.mask_mode, imp.mask_threshold = masks, mask_threshold
    if layout == "kvasir":
        _import_kvasir(src, imp)
        if class_name:
            imp.collection.classes[0].name = class_name
    elif layout == "folder":
        _import_folder(src, imp)
    elif layout == "busi":
        _import_busi(src, imp, tag_implies=tag_implies, class_name=class_name or "lesion")
    else:
        _import_images(src, imp)
    collection = imp.finish(class_name or "lesion")
    if strong_fraction is not None:
        from napari_hybridseg.core.data.hybridize import make_hybrid

        collection = make_hybrid(collection, strong_fraction=strong_fraction, weak=weak, noise=noise, seed=seed,
                                 point_placement=point_placement, background_clicks=background_clicks)
    return collection
