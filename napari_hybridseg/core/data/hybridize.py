"""Turn a fully-labelled collection into a hybrid one with known label noise.

:func:`make_hybrid` keeps the mask of a seeded fraction of the samples
(strong), replaces the mask of the others by weak labels of one kind (box,
point or tag; the mask is kept as ``reference_mask`` for evaluation only),
and makes a seeded fraction of those weak labels wrong on purpose, as
``BENCHMARK.md`` describes:

* boxes: ``"shifted"`` (moved off the object: no overlap with it or with the
  true box), ``"inflated"`` (each side 2-3x, about the centre, clipped to
  the image), or ``"background"`` (replaced by a box on background);
* points: ``"moved_outside"`` (to background, away from the object);
* tags: ``"flipped"`` (present <-> absent).

Corrupted samples get ``corrupted=True``, ``corruption`` = the kind and
``meta["clean_weak"]`` = their true weak labels, so that weights can be
checked; training never reads any of these.

The helpers :func:`boxes_from_mask` and :func:`points_from_mask` are also
used by the importers and the sample-data generator. Qt-free (numpy, scipy,
scikit-image).
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from napari_hybridseg.core.data.collection import Box, Collection, Point, Sample, TagImplies

__all__ = [
    "BOX_CORRUPTIONS",
    "WEAK_KINDS",
    "boxes_from_mask",
    "components",
    "label_values",
    "corrupt_boxes",
    "corrupt_points",
    "make_hybrid",
    "points_from_mask",
    "POINT_PLACEMENTS",
]

WEAK_KINDS = ("box", "point", "tag")
BOX_CORRUPTIONS = ("shifted", "inflated", "background")
#: components smaller than this (pixels) are specks (Kvasir: a bright pixel at (0, 0) in 144 masks)
MIN_COMPONENT = 50


# ----------------------------------------------------------------------------------------------
# masks -> weak labels
# ----------------------------------------------------------------------------------------------
def label_values(mask: np.ndarray) -> list[int]:
    """The non-zero label values present in ``mask`` (a bincount: much faster than ``np.unique`` on images)."""
    mask = np.asarray(mask)
    if mask.dtype in (np.uint8, np.uint16, bool):
        hi = int(mask.max(initial=0))
        if hi <= 1:  # the common binary mask: no histogram needed
            return [1] if hi else []
        counts = np.bincount(mask.ravel().astype(np.intp, copy=False))
        return [int(v) for v in np.flatnonzero(counts[1:]) + 1]
    return [int(v) for v in np.unique(mask) if v != 0]


def components(binary: np.ndarray, min_size: int = MIN_COMPONENT) -> list[tuple[tuple[int, int, int, int], np.ndarray]]:
    """Connected components (8-connected) of a boolean image, specks removed.

    Components smaller than ``min_size`` pixels are dropped, except that if
    *every* component is that small the largest one is kept (a tiny object is
    still an object).

    Returns
    -------
    list of (bbox, crop)
        ``bbox`` is ``(min_row, min_col, max_row, max_col)`` with exclusive
        maxima; ``crop`` is the component's boolean mask inside that box.
        Sorted by top-left corner.
    """
    from scipy.ndimage import find_objects, label

    lab, n = label(np.asarray(binary, bool), structure=np.ones((3, 3), bool))
    if n == 0:
        return []
    crops = []
    for i, sl in enumerate(find_objects(lab)):  # sizes from the crops: cheaper than a histogram of the image
        crop = lab[sl] == i + 1
        crops.append(((sl[0].start, sl[1].start, sl[0].stop, sl[1].stop), crop, int(crop.sum())))
    out = [(bbox, crop) for bbox, crop, size in crops if size >= min_size]
    if not out:
        bbox, crop, _ = max(crops, key=lambda item: item[2])
        out = [(bbox, crop)]
    out.sort(key=lambda item: (item[0][0], item[0][1]))
    return out


def boxes_from_mask(mask: np.ndarray, *, min_size: int = MIN_COMPONENT, id_prefix: str | None = None) -> list[Box]:
    """One box per connected component of each label value, after removing specks.

    ``id_prefix`` gives the boxes the ids ``<prefix>-b0``, ``<prefix>-b1``...
    (deterministic, so that the same import gives the same project); default: random ids.

    Examples
    --------
    >>> m = np.zeros((8, 8), np.uint8); m[2:5, 3:7] = 1
    >>> [b.as_tuple() for b in boxes_from_mask(m, min_size=1)]
    [(3.0, 2.0, 7.0, 5.0)]
    """
    out = []
    mask = np.asarray(mask)
    for value in label_values(mask):
        for (r0, c0, r1, c1), _ in components(mask == value, min_size):
            box = Box(c0, r0, c1, r1, label=int(value))
            if id_prefix is not None:
                box.id = f"{id_prefix}-b{len(out)}"
            out.append(box)
    return out


#: where a simulated click lands inside its object (:func:`points_from_mask`)
POINT_PLACEMENTS = ("anywhere", "deep")


def points_from_mask(mask: np.ndarray, rng: np.random.Generator, *, min_size: int = MIN_COMPONENT,
                     id_prefix: str | None = None, placement: str = "anywhere",
                     background: int = 0) -> list[Point]:
    """One simulated click per component of each label value, and optionally background clicks.

    Parameters
    ----------
    mask : (H, W) int array
        Label values (0 = background).
    rng : numpy Generator
        Seeds every draw.
    min_size : int
        Components smaller than this (specks) get no click.
    id_prefix : str, optional
        As in :func:`boxes_from_mask` (``<prefix>-p0``...).
    placement : {"anywhere", "deep"}
        ``"anywhere"`` (default): uniform over the component's pixels that are
        not on its border, so that many clicks land near the boundary, as a
        user clicks where it is quick; ``"deep"``: among the pixels at least half
        the component's maximal depth from its border (the benchmark's clicks
        before 2026-12-02).
    background : int
        Negative clicks per image, uniform over the background at least ~5% of
        the image size from every object (none where no such pixel exists).

    Coordinates are pixel centres.
    """
    from scipy.ndimage import distance_transform_edt

    if placement not in POINT_PLACEMENTS:
        raise ValueError(f"placement must be one of {', '.join(POINT_PLACEMENTS)}, got {placement!r}")
    out = []
    mask = np.asarray(mask)

    def add(pt: Point) -> None:
        if id_prefix is not None:
            pt.id = f"{id_prefix}-p{len(out)}"
        out.append(pt)

    values = label_values(mask)
    for value in values:
        binary = mask == value
        depth = distance_transform_edt(np.pad(binary, 1))[1:-1, 1:-1]
        for (r0, c0, _, _), crop in components(binary, min_size):
            coords = np.argwhere(crop) + (r0, c0)
            d = depth[coords[:, 0], coords[:, 1]]
            keep = d >= 0.5 * d.max() if placement == "deep" else d >= min(2.0, d.max())
            r, c = coords[keep][rng.integers(int(keep.sum()))]
            add(Point(c + 0.5, r + 0.5, label=int(value), positive=True))
    if background > 0 and (mask == 0).any():
        far = distance_transform_edt(mask == 0) >= max(3.0, 0.05 * min(mask.shape))
        cand = np.argwhere(far)
        label = values[0] if values else 1
        for _ in range(int(background) if len(cand) else 0):
            r, c = cand[rng.integers(len(cand))]
            add(Point(c + 0.5, r + 0.5, label=int(label), positive=False))
    return out


# ----------------------------------------------------------------------------------------------
# corruption
# ----------------------------------------------------------------------------------------------
def _integral(binary: np.ndarray) -> np.ndarray:
    s = np.zeros((binary.shape[0] + 1, binary.shape[1] + 1), np.int64)
    s[1:, 1:] = np.cumsum(np.cumsum(binary, 0), 1)
    return s


def _free_positions(occupied: np.ndarray, h: int, w: int) -> np.ndarray:
    """Boolean ``(H-h+1, W-w+1)``: where an ``h x w`` box's top-left corner can go without touching ``occupied``."""
    s = _integral(occupied)
    tot = s[h:, w:] - s[:-h, w:] - s[h:, :-w] + s[:-h, :-w]
    return tot == 0


def _box_pixels(b: Box, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    H, W = shape
    r0, c0 = int(np.clip(np.floor(b.y0), 0, H - 1)), int(np.clip(np.floor(b.x0), 0, W - 1))
    r1, c1 = int(np.clip(np.ceil(b.y1), r0 + 1, H)), int(np.clip(np.ceil(b.x1), c0 + 1, W))
    return r0, c0, r1, c1


def corrupt_boxes(boxes: list[Box], truth: np.ndarray, kind: str, rng: np.random.Generator) -> list[Box] | None:
    """Wrong versions of ``boxes`` for an image whose true mask is ``truth``; ``None`` if not feasible.

    ``"shifted"``: each box keeps its size (shrunk only if it cannot fit) and
    moves to the nearest place that touches neither the object nor any true
    box; ``"inflated"``: each side times a factor in [2, 3] about the centre,
    clipped to the image (infeasible if that does not at least double the
    area); ``"background"``: a box of 0.5-1x the size at a random place that
    touches neither the object nor any true box.
    """
    truth = np.asarray(truth)
    H, W = truth.shape
    occupied = truth > 0
    for b in boxes:
        r0, c0, r1, c1 = _box_pixels(b, (H, W))
        occupied[r0:r1, c0:c1] = True
    out = []
    for b in boxes:
        r0, c0, r1, c1 = _box_pixels(b, (H, W))
        h, w = r1 - r0, c1 - c0
        if kind == "inflated":
            f = rng.uniform(2.0, 3.0)
            cx, cy = (b.x0 + b.x1) / 2, (b.y0 + b.y1) / 2
            hw, hh = (b.x1 - b.x0) * f / 2, (b.y1 - b.y0) * f / 2
            new = Box(max(0.0, cx - hw), max(0.0, cy - hh), min(float(W), cx + hw), min(float(H), cy + hh), b.label,
                      id=b.id)
            if new.area < 2 * b.area:
                return None
            out.append(new)
            continue
        if kind not in ("shifted", "background"):
            raise ValueError(f"unknown box corruption {kind!r}; choose one of {BOX_CORRUPTIONS}")
        if kind == "background":
            h = max(2, int(round(h * rng.uniform(0.5, 1.0))))
            w = max(2, int(round(w * rng.uniform(0.5, 1.0))))
        placed = None
        for _ in range(12):  # shrink until it fits somewhere free
            if h <= H and w <= W:
                free = np.argwhere(_free_positions(occupied, h, w))
                if len(free):
                    if kind == "shifted":  # the nearest free place: an annotator who slipped
                        d = np.hypot(free[:, 0] - r0, free[:, 1] - c0)
                        near = free[d <= d.min() + 0.1 * max(h, w)]
                        placed = near[rng.integers(len(near))]
                    else:
                        placed = free[rng.integers(len(free))]
                    break
            if h <= 2 and w <= 2:
                break
            h, w = max(2, int(h * 0.75)), max(2, int(w * 0.75))
        if placed is None:
            return None
        pr, pc = int(placed[0]), int(placed[1])
        out.append(Box(pc, pr, pc + w, pr + h, b.label, id=b.id))  # same id: per-box weights still map
        occupied[pr:pr + h, pc:pc + w] = True  # two wrong boxes do not pile up on one spot
    return out


def corrupt_points(points: list[Point], truth: np.ndarray, rng: np.random.Generator) -> list[Point] | None:
    """Each point moved to background, at least ~5% of the image size away from the object; ``None`` if none."""
    from scipy.ndimage import distance_transform_edt

    truth = np.asarray(truth)
    bg = truth == 0
    if not bg.any():
        return None
    dist = distance_transform_edt(bg)
    margin = max(3.0, 0.05 * min(truth.shape))
    cand = np.argwhere(dist >= margin)
    if not len(cand):
        cand = np.argwhere(dist >= 1)
    out = []
    for p in points:
        r, c = cand[rng.integers(len(cand))]
        out.append(Point(c + 0.5, r + 0.5, label=p.label, positive=p.positive, id=p.id))
    return out


def _flip_tags(sample: Sample, collection: Collection, rng: np.random.Generator) -> list[str] | None:
    """Replace every tag that implies present/absent by one implying the opposite; ``None`` if none does."""
    new, flipped = [], False
    for name in sample.tags:
        try:
            t = collection.tag_def(name)
        except KeyError:
            new.append(name)
            continue
        if t.implies is TagImplies.NOTHING:
            new.append(name)
            continue
        opposite = TagImplies.ABSENT if t.implies is TagImplies.PRESENT else TagImplies.PRESENT
        cands = sorted(d.name for d in collection.tag_defs if d.implies is opposite
                       and d.class_value == t.class_value and not d.name.endswith((" present", " absent")))
        if not cands:
            cands = [_derived_tag(collection, t.class_value, opposite)]
        new.append(cands[rng.integers(len(cands))])
        flipped = True
    return new if flipped else None


def _derived_tag(collection: Collection, class_value: int | None, implies: TagImplies) -> str:
    cname = collection.class_by_value(class_value).name if class_value is not None else "lesion"
    name = f"{cname} {implies.value}"
    collection.ensure_tag(name, implies, class_value)
    return name


def _weak_dict(sample: Sample) -> dict:
    return {"boxes": [[b.x0, b.y0, b.x1, b.y1, b.label] for b in sample.boxes],
            "points": [[p.x, p.y, p.label, p.positive] for p in sample.points],
            "tags": list(sample.tags)}


# ----------------------------------------------------------------------------------------------
# make_hybrid
# ----------------------------------------------------------------------------------------------
def copy_collection(collection: Collection) -> Collection:
    """A copy whose annotations can be changed freely; pixel arrays (image, masks) are shared, not copied."""
    return collection.copy()


def _implying_tags(sample: Sample, collection: Collection) -> list[str]:
    out = []
    for name in sample.tags:
        try:
            if collection.tag_def(name).implies is not TagImplies.NOTHING:
                out.append(name)
        except KeyError:
            pass
    return out


def _make_weak(sample: Sample, collection: Collection, weak: str, rng: np.random.Generator, min_size: int,
               clicks: dict | None = None) -> None:
    truth = sample.reference_mask
    present = label_values(truth)
    if weak == "tag":
        sample.boxes, sample.points = [], []
        if not _implying_tags(sample, collection):  # dataset tags say nothing: derive presence per class
            sample.tags += [_derived_tag(collection, c.value, TagImplies.PRESENT if c.value in present
                                         else TagImplies.ABSENT) for c in collection.classes]
        return
    if weak == "box":
        # the dataset's own boxes where it has them (Kvasir), else derived after removing specks
        sample.boxes = sample.boxes if sample.boxes else boxes_from_mask(truth, min_size=min_size, id_prefix=sample.id)
        sample.points = []
    else:
        sample.boxes = []
        clicks = clicks or {"placement": "anywhere", "background": 0}
        sample.points = points_from_mask(truth, rng, min_size=min_size, id_prefix=sample.id, **clicks)
        sample.meta["simulated_points"] = dict(clicks)
    # an image with nothing to box or click says "nothing here": keep that as an "absent" tag
    absent = [t for t in _implying_tags(sample, collection) if collection.tag_def(t).implies is TagImplies.ABSENT]
    if not sample.boxes and not sample.points:
        sample.tags = absent or [_derived_tag(collection, c.value, TagImplies.ABSENT) for c in collection.classes]
    else:
        sample.tags = []


def make_hybrid(
    collection: Collection,
    *,
    strong_fraction: float = 0.1,
    weak: str = "box",
    noise: float = 0.0,
    seed: int = 0,
    ids: Iterable[str] | None = None,
    min_component: int = MIN_COMPONENT,
    point_placement: str = "anywhere",
    background_clicks: int = 0,
) -> Collection:
    """A hybrid copy of ``collection``: few masks, weak labels for the rest, known label noise.

    The input is not changed; the result is a new collection (pixel arrays
    are shared). Samples outside ``ids`` are copied unchanged.

    Parameters
    ----------
    collection : Collection
        Usually fully labelled (every sample with a mask).
    strong_fraction : float
        Fraction of ``ids`` that keep their mask, in [0, 1]; rounded to the
        nearest count, at least one when > 0. Default 0.1. Strong samples keep
        their tags and lose boxes and points (the mask says more).
    weak : {"box", "point", "tag"}
        The weak label the other samples get, and the only one they keep.
        ``"box"``: the dataset's boxes if the sample has any, else one box
        per mask component (components < ``min_component`` px removed).
        ``"point"``: one simulated interior click per component
        (``meta["simulated_points"] = True``). ``"tag"``: the dataset's tags;
        where none says present/absent, derived tags ``"<class> present"`` /
        ``"<class> absent"`` are added. A box or point sample whose mask is
        empty gets an "absent" tag instead (there is nothing to box).
    noise : float
        Fraction of the weak samples whose label is made wrong, in [0, 1].
        Default 0.
    seed : int
        Seeds the choice of strong samples, simulated points, and corruption.
    ids : iterable of str, optional
        The samples to hybridise (e.g. the training split). Default: every
        sample with a mask. Samples among ``ids`` without a mask are left as
        they are.
    min_component : int
        Speck size in pixels for deriving boxes and points. Default 50.
    point_placement : {"anywhere", "deep"}
        Where a simulated click lands in its object (:func:`points_from_mask`);
        default "anywhere" (near the boundary as often as a user clicks there).
    background_clicks : int
        Negative (background) clicks added to each point image. Default 0.

    Returns
    -------
    Collection
        With ``meta["hybrid"]`` recording the settings and the counts.
    """
    if not 0.0 <= strong_fraction <= 1.0:
        raise ValueError(f"strong_fraction must be in [0, 1], got {strong_fraction}")
    if not 0.0 <= noise <= 1.0:
        raise ValueError(f"noise must be in [0, 1], got {noise}")
    if weak not in WEAK_KINDS:
        raise ValueError(f"weak must be one of {', '.join(WEAK_KINDS)}, got {weak!r}")
    out = copy_collection(collection)
    rng = np.random.default_rng(seed)
    if ids is None:
        pool = [s.id for s in out if s.mask is not None]
    else:
        ids = list(ids)
        missing = [i for i in ids if i not in out]
        if missing:
            raise KeyError(f"make_hybrid: unknown sample id(s) {missing[:5]}")
        pool = [i for i in dict.fromkeys(ids) if out[i].mask is not None]
    pool.sort()  # independent of insertion order: the same seed picks the same samples
    n_strong = int(round(strong_fraction * len(pool)))
    if strong_fraction > 0 and pool:
        n_strong = max(1, n_strong)
    order = rng.permutation(len(pool))
    strong_ids = {pool[i] for i in order[:n_strong]}

    if point_placement not in POINT_PLACEMENTS:
        raise ValueError(f"point_placement must be one of {', '.join(POINT_PLACEMENTS)}, got {point_placement!r}")
    if background_clicks < 0:
        raise ValueError(f"background_clicks must be >= 0, got {background_clicks}")
    clicks = {"placement": point_placement, "background": int(background_clicks)}
    weak_ids = []
    for sid in pool:
        s = out[sid]
        if sid in strong_ids:
            s.boxes, s.points = [], []
            continue
        s.reference_mask, s.mask = s.mask, None
        s.corrupted, s.corruption = False, None
        _make_weak(s, out, weak, rng, min_component, clicks)
        s.meta["weak_kind"] = weak
        weak_ids.append(sid)

    # corruption: only samples that carry a label of the chosen kind can be made wrong
    def corruptible(s: Sample) -> bool:
        if weak == "box":
            return bool(s.boxes)
        if weak == "point":
            return bool(s.points)
        return bool(_implying_tags(s, out))

    candidates = [sid for sid in weak_ids if corruptible(out[sid])]
    n_corrupt = int(round(noise * len(candidates)))
    done = 0
    for i in rng.permutation(len(candidates)):
        if done >= n_corrupt:
            break
        s = out[candidates[i]]
        clean = _weak_dict(s)
        if weak == "box":
            kinds = list(rng.permutation(BOX_CORRUPTIONS))
            for kind in kinds:
                new = corrupt_boxes(s.boxes, s.reference_mask, str(kind), rng)
                if new is not None:
                    s.boxes, s.corruption = new, str(kind)
                    break
        elif weak == "point":
            new_pts = corrupt_points(s.points, s.reference_mask, rng)
            if new_pts is not None:
                s.points, s.corruption = new_pts, "moved_outside"
        else:
            new_tags = _flip_tags(s, out, rng)
            if new_tags is not None:
                s.tags, s.corruption = new_tags, "flipped"
        if s.corruption is not None:
            s.corrupted = True
            s.meta["clean_weak"] = clean
            done += 1

    out.meta["hybrid"] = {
        "strong_fraction": strong_fraction, "weak": weak, "noise": noise, "seed": seed,
        "min_component": min_component, "pool": len(pool), "strong": len(strong_ids),
        "weak_samples": len(weak_ids), "corrupted": done,
        **({"clicks": clicks} if weak == "point" else {}),
    }
    return out
