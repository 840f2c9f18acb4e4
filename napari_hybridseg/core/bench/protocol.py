"""The hybrid-supervision benchmark protocol (``../shared/BENCHMARK.md``).

One run: import a fully labelled dataset, split it (seeded, group-aware,
70/10/20), keep masks for ``strong_fraction`` of the training images and turn
the rest weak with a recorded fraction ``noise`` corrupted, then train the eight
arms with the same architecture, input size, step budget and seed and
evaluate each on the test images at their original resolution.

Layout of the output folder ``out``::

    settings.json        what was asked for (a rerun must match it to resume)
    split.json           ids per part, strong / weak / corrupted ids, groups
    arms/<arm>.json      one finished arm (written atomically: its presence means "done")
    runs/<arm>/          the trainer's run folder (checkpoint, run.json, gamma.json)
    baselines.json       the weights' baselines (:mod:`.baselines`), once strong-only / naive finished
    grid/                thumbnails of a few test images, truth and each arm's prediction
    results.json         everything above in one file (rewritten after every arm)
    report.md, *.png     written by :mod:`.report`

Training and prediction go through a :class:`Backend` (the project's trainer
and predictor by default), so the protocol itself is testable in seconds with
a fake one. Qt-free and napari-free; torch is imported only by the backend.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import platform
import statistics
import sys
import threading
import time
from collections.abc import Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.bench.metrics import auroc, bootstrap_ci, dice, iou
from napari_hybridseg.core.data.collection import Collection, Role, Sample
from napari_hybridseg.core.fsio import atomic_write_json, atomic_write_text
from napari_hybridseg.core.supervision.targets import IGNORE, UNKNOWN, make_targets, mask_to_index
from napari_hybridseg.core.training.config import PRESETS, TrainConfig
from napari_hybridseg.core.training.config import preset as make_preset
from napari_hybridseg.core.training.reports import (
    CheckpointReport,
    DoneReport,
    PreviewReport,
    RequestPreview,
    StartReport,
    StepReport,
    WeightsReport,
)

from .presets import BENCH_PRESETS as _PRESETS
from .presets import COST_FACTOR, canonical, config_preset_name
from .split import Split, merge_groups, near_duplicate_groups, read_groups_csv, split_ids, thumbnail

__all__ = [
    "ARMS",
    "BENCH_PRESETS",
    "ArmData",
    "Backend",
    "BenchSettings",
    "Prepared",
    "arm_collection",
    "arm_config",
    "calibrate_steps",
    "default_backend",
    "evaluate_masks",
    "gamma_quality",
    "pixel_weight_ratio",
    "prepare",
    "prepare_collection",
    "resized_sample",
    "run_arm",
    "run_benchmark",
]

#: The arms, in the order they run and appear in the report.
ARMS = ("strong-only", "naive", "fixed", "dii", "oracle", "dii+dcr", "full", "all-strong")

#: Arms that learn DII's per-image weights.
DII_ARMS = ("dii", "dii+dcr", "full")

#: Control arms whose weak weights are held fixed (``TrainConfig.fixed_weights``).
CONTROL_ARMS = ("fixed", "oracle")

#: Arms whose validation Dice is measured over training (the convergence curve).
CURVE_ARMS = ("strong-only", "all-strong")

#: TrainConfig overrides of each benchmark preset (on top of core.config.PRESETS); see :mod:`.presets`.
BENCH_PRESETS: dict[str, dict[str, Any]] = {k: v["train"] for k, v in _PRESETS.items()}

#: Wall-clock budget (minutes) of each preset's run; None = no calibration (see :mod:`.presets`).
BENCH_BUDGET_MIN: dict[str, float | None] = {k: v["budget_min"] for k, v in _PRESETS.items()}


# -- settings -------------------------------------------------------------
@dataclass
class BenchSettings:
    """Everything that decides a benchmark's numbers (and where it writes).

    Parameters
    ----------
    dataset : str
        Dataset folder in a layout the project imports.
    layout : str
        ``"kvasir"``, ``"folder"`` or ``"busi"`` (any layout ``import_dataset`` knows).
    out : str
        Output folder; rerunning with the same folder resumes.
    preset : str
        ``"quick"`` (default; the old name ``"cpu-quick"`` works too), ``"standard"`` or ``"gpu"``
        (:mod:`.presets`).
    strong_fraction : float
        Fraction of training images that keep their mask. Default 0.1.
    weak : str
        Weak label kind of the rest: ``"box"`` (default), ``"point"``, ``"tag"``.
    noise : float
        Fraction of weak labels made wrong on purpose. Default 0.3.
    seed : int
        Seed of the split, the label budget, the corruption and training. Default 0.
    arms : tuple of str
        Arms to run, a subset of :data:`ARMS`. Default all eight.
    groups_csv : str or None
        CSV of ``image_id,group`` rows; a group never straddles a split.
    dedup : bool
        Also group near-duplicate images (thumbnail correlation). Default True.
    dedup_threshold : float
        Correlation above which two images are one picture. Default 0.985.
    device : str
        ``"auto"`` (default), ``"cpu"``, ``"cuda"``, ...
    steps : int or None
        Step budget per arm; ``None`` takes the preset's.
    limit : int or None
        Use a seeded subset of this many images (smoke tests). Default all.
    grid_images : int
        Test images shown in the prediction grid. Default 6.
    n_boot : int
        Bootstrap resamples of the Dice interval. Default 2000.
    overrides : dict
        Extra TrainConfig settings applied to every arm (e.g. ``{"batch_size": 4}``).
    pre_resize : bool
        Resize the training images (and their masks, boxes, points) to the
        square training size once, before the arms run, instead of letting
        the trainer resize full-size images again for every arm. The trainer
        resizes to the same square size, so the arms see the same pixels (up
        to 8-bit rounding). Default True.
    stratify : bool
        Split each image-tag class (e.g. BUSI's normal / benign / malignant)
        70/10/20 on its own. No effect on datasets without tags. Default True.
    budget_min : float or None
        Wall-clock budget of the whole run in minutes. Unless ``steps`` is
        given, a short calibration times this machine's training step and
        the step budget (the same for every arm) is chosen to fit, capped at
        the preset's steps. ``None``: the preset's budget (``quick``: 18
        minutes, leaving 2 of the 20 as margin; ``standard``, ``gpu``: none).
    curve_points : int
        Validation-Dice points of the convergence curve of ``strong-only`` and
        ``all-strong`` (a checkpoint every ``steps / curve_points`` steps); 0: none.
        Default 10. Not part of the fingerprint (it changes no trained number).
    note : str
        Free text shown at the top of the report (e.g. "measured under load");
        it does not decide any number.
    """

    dataset: str
    layout: str
    out: str
    preset: str = "quick"
    strong_fraction: float = 0.1
    weak: str = "box"
    noise: float = 0.3
    seed: int = 0
    arms: tuple[str, ...] = ARMS
    groups_csv: str | None = None
    dedup: bool = True
    dedup_threshold: float = 0.985
    device: str = "auto"
    steps: int | None = None
    limit: int | None = None
    grid_images: int = 6
    n_boot: int = 2000
    overrides: dict[str, Any] = field(default_factory=dict)
    pre_resize: bool = True
    stratify: bool = True
    budget_min: float | None = None
    note: str = ""
    curve_points: int = 10

    def __post_init__(self) -> None:
        self.arms = tuple(self.arms)
        try:
            self.preset = canonical(self.preset)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown:
            raise ValueError(f"unknown arm(s) {unknown}; choose from {', '.join(ARMS)}")
        if not 0.0 < self.strong_fraction <= 1.0:
            raise ValueError(f"strong_fraction must be in (0, 1], got {self.strong_fraction}")
        if not 0.0 <= self.noise < 1.0:
            raise ValueError(f"noise must be in [0, 1), got {self.noise}")
        if self.weak not in ("box", "point", "tag"):
            raise ValueError(f"weak must be 'box', 'point' or 'tag', got {self.weak!r}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["arms"] = list(self.arms)
        return d

    def fingerprint(self) -> str:
        """Hash of the settings that decide the numbers (not ``out`` nor which arms run)."""
        d = self.to_dict()
        for key in ("out", "arms", "grid_images", "note", "curve_points"):
            d.pop(key)
        if d["preset"] == "quick":  # its name until 2026-12-01: runs started then still resume
            d["preset"] = "cpu-quick"
        d["dataset"] = str(Path(self.dataset).resolve())
        blob = json.dumps(d, sort_keys=True, default=str).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def base_config(self) -> TrainConfig:
        """The TrainConfig every arm starts from: the preset, the step budget, the seed, the device."""
        name = config_preset_name(self.preset, PRESETS)
        cfg = make_preset(name) if name is not None else TrainConfig()
        cfg = cfg.replace(**BENCH_PRESETS[self.preset], seed=self.seed, device=self.device)
        if self.steps is not None:
            cfg = cfg.replace(steps=int(self.steps))
        if self.overrides:
            model_over = self.overrides.get("model")
            rest = {k: v for k, v in self.overrides.items() if k != "model"}
            if model_over:
                cfg = cfg.replace(model=cfg.model.replace(**model_over))
            cfg = cfg.replace(**rest)
        return cfg


def arm_config(base: TrainConfig, arm: str, *, weak_ids: Iterable[str] | None = None,
               corrupted: Mapping[str, Any] | Iterable[str] | None = None) -> TrainConfig:
    """The TrainConfig of one arm: ``base`` with only the method switches changed.

    Architecture, input size, steps, batch, optimiser and seed stay those of
    ``base``, so the arms differ only in what the method does. The control
    arms need the weak ids (and ``oracle`` the corrupted ones): ``fixed``
    holds every weak weight at ``base.dii_init`` (DII's starting value),
    ``oracle`` at 0 for a corrupted weak label and 1 for a clean one.
    """
    off = {"dii": False, "dcr": False, "pixel_weights": "off", "ple": False, "teacher": False}
    switches = {
        "strong-only": off,
        # naive trusts every weak label fully: weights fixed at 1 (the trainer uses 1 for every row when DII
        # is off; dii_init 1.0 keeps older trainers, which held gamma at dii_init, doing the same)
        "naive": {**off, "dii_init": 1.0},
        "fixed": off,
        "dii": {**off, "dii": True},
        "oracle": off,
        "dii+dcr": {**off, "dii": True, "dcr": True},
        "full": {"dii": True, "dcr": True, "pixel_weights": "exact", "ple": True, "teacher": True},
        "all-strong": off,
    }
    if arm not in switches:
        raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")
    cfg = base.replace(**switches[arm])
    if arm in CONTROL_ARMS:
        if weak_ids is None:
            raise ValueError(f"the {arm!r} arm needs the weak ids (and which are corrupted) to fix their weights")
        bad = set(corrupted or ())
        weights = {k: float(base.dii_init) if arm == "fixed" else (0.0 if k in bad else 1.0) for k in weak_ids}
        cfg = cfg.replace(fixed_weights=weights)
    return cfg


def _copy_collection(collection: Collection, samples: Iterable[Sample]) -> Collection:
    out = Collection(classes=[dataclasses.replace(c) for c in collection.classes],
                     tag_defs=[dataclasses.replace(t) for t in collection.tag_defs],
                     meta=dict(collection.meta))
    for s in samples:
        out.add(s)
    return out


def arm_collection(train: Collection, arm: str) -> Collection:
    """The training collection of one arm, built from the hybrid training set.

    * ``strong-only``: the strong images alone (weak labels discarded);
    * ``all-strong``: every training image with its true mask (``reference_mask``);
    * every other arm: the hybrid set as it is (strong + weak, corrupted included).

    Samples are shallow copies: pixel arrays are shared, never re-decoded.
    """
    if arm == "strong-only":
        return _copy_collection(train, [dataclasses.replace(s) for s in train if s.role is Role.STRONG])
    if arm == "all-strong":
        samples = []
        for s in train:
            truth = s.mask if s.mask is not None else s.reference_mask
            if truth is None:
                raise ValueError(f"sample {s.id!r} has neither a mask nor a reference mask: all-strong needs one")
            samples.append(dataclasses.replace(s, mask=truth, boxes=[], points=[], corrupted=False, corruption=None))
        return _copy_collection(train, samples)
    if arm in ARMS:
        return _copy_collection(train, [dataclasses.replace(s) for s in train])
    raise ValueError(f"unknown arm {arm!r}; choose from {', '.join(ARMS)}")


# -- backend --------------------------------------------------------------
@dataclass
class Backend:
    """How the protocol trains and predicts (swap it for a fake in tests).

    ``train(collection, config, run_dir)`` is the trainer generator
    (:func:`napari_hybridseg.core.training.trainer.train`); ``load_predictor(run_dir)``
    returns an object whose ``predict(image)`` gives ``(labels, probs)`` at the
    image's original size (:class:`napari_hybridseg.core.prediction.predict.Predictor`).
    """

    train: Callable[..., Generator]
    load_predictor: Callable[[Path], Any]
    name: str = "custom"
    #: ``sample_losses(run_dir, collection, ids, config) -> {id: loss}``: each weak sample's loss under a
    #: finished arm's model (the ``naive_loss`` baseline); None: that baseline is not measured
    sample_losses: Callable[..., dict[str, float]] | None = None


def default_backend(device: str = "auto", label_values: list[int] | None = None) -> Backend:
    """The project's trainer, and a batched predictor whose resized test inputs all arms share (imports torch)."""
    from napari_hybridseg.core.training.trainer import train

    from .inference import BatchedPredictor, InputCache

    cache = InputCache()

    def load_predictor(run_dir: Path):
        return BatchedPredictor.load(run_dir, label_values=label_values, device=device, cache=cache)

    def sample_losses(run_dir: Path, collection: Collection, ids, config: TrainConfig) -> dict[str, float]:
        from .baselines import weak_sample_losses

        return weak_sample_losses(run_dir, collection, ids, config, device=device)

    return Backend(train=train, load_predictor=load_predictor, name="napari_hybridseg (batched evaluation)",
                   sample_losses=sample_losses)


# -- data -----------------------------------------------------------------
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
        ``make_hybrid(collection, *, strong_fraction, weak, noise, seed, ids)``;
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
    ids = sorted(collection.ids)
    if settings.limit is not None and settings.limit < len(ids):
        rng = np.random.default_rng(settings.seed)
        keep = set(np.asarray(ids)[rng.choice(len(ids), size=int(settings.limit), replace=False)].tolist())
        for sid in ids:
            if sid not in keep:
                collection.remove(sid)
        ids = sorted(keep)
        log(f"using a seeded subset of {len(ids)} images (--limit)")

    # decode every image once; all arms and the evaluation share these arrays
    thumbs: dict[str, np.ndarray] = {}
    for i, sid in enumerate(ids):
        s = collection[sid]
        img = s.load_image()
        s.meta.setdefault("shape", [int(img.shape[0]), int(img.shape[1])])
        if settings.dedup:
            thumbs[sid] = thumbnail(img)
        if (i + 1) % 200 == 0:
            log(f"decoded {i + 1}/{len(ids)} images")

    groupings: list[Mapping[str, str]] = [{s.id: s.group for s in collection if s.group}]
    notes: list[str] = []
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
    groups = merge_groups(ids, *groupings)
    # image-level tags (BUSI's classes) stratify the split, so the test set holds each class in proportion
    strata = {s.id: "+".join(sorted(s.tags)) for s in collection if s.tags} if settings.stratify else None
    if strata:
        counts = {k: list(strata.values()).count(k) for k in sorted(set(strata.values()))}
        notes.append("split stratified by image tag: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    split = split_ids(ids, seed=settings.seed, groups=groups, strata=strata)

    if hybridize is None:
        from napari_hybridseg.core.data.hybridize import make_hybrid as hybridize
    result = hybridize(collection, strong_fraction=settings.strong_fraction, weak=settings.weak,
                       noise=settings.noise, seed=settings.seed, ids=list(split.train))
    if isinstance(result, Collection):
        collection = result
    train = [collection[i] for i in split.train]
    strong = [s.id for s in train if s.role is Role.STRONG]
    weak = [s.id for s in train if s.role is Role.WEAK]
    corrupted = {s.id: s.corruption or "corrupted" for s in train if s.corrupted}
    for sid in [*split.val, *split.test]:
        if collection[sid].mask is None:
            raise RuntimeError(f"hybridisation touched held-out image {sid!r}: it must only change the train ids")
    if not strong:
        raise ValueError(f"no strong image in the training set ({len(train)} images at strong_fraction "
                         f"{settings.strong_fraction}): raise --strong-fraction or use more images")
    for s in train:
        if s.role is Role.WEAK and s.reference_mask is None:
            raise RuntimeError(f"weak sample {s.id!r} lost its true mask: the hybridiser must keep it as "
                               "reference_mask (all-strong and the weight metrics need it)")
    return Prepared(collection=collection, split=split, strong=strong, weak=weak, corrupted=corrupted,
                    notes=notes, prep_s=time.perf_counter() - t0)


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


# -- metrics --------------------------------------------------------------
def evaluate_masks(preds: Mapping[str, np.ndarray], truths: Mapping[str, np.ndarray], *,
                   labels: list[int] | None = None, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Per-image Dice and IoU, their means and a 95% bootstrap interval of the mean Dice.

    ``labels=None`` scores the foreground (any non-zero value); a list of label
    values scores each class and averages. Prediction and truth must have the
    same (original) shape. ``dice_nonempty`` averages only images whose truth
    has foreground (an empty truth scores 1 when the prediction is empty too).
    """
    ids = sorted(truths)
    missing = [i for i in ids if i not in preds]
    if missing:
        raise ValueError(f"no prediction for {len(missing)} image(s), e.g. {missing[0]!r}")
    d, j, nonempty = {}, {}, []
    for sid in ids:
        p, t = np.asarray(preds[sid]), np.asarray(truths[sid])
        if p.shape != t.shape:
            raise ValueError(f"{sid}: prediction {p.shape} differs from truth {t.shape}: predict at original size")
        if labels:
            d[sid] = float(np.mean([dice(p, t, lab) for lab in labels]))
            j[sid] = float(np.mean([iou(p, t, lab) for lab in labels]))
        else:
            d[sid], j[sid] = dice(p, t), iou(p, t)
        if (t > 0).any():
            nonempty.append(d[sid])
    values = [d[i] for i in ids]
    lo, hi = bootstrap_ci(values, n_boot=n_boot, seed=seed)
    return {
        "dice": float(np.mean(values)) if values else float("nan"),
        "dice_ci": [lo, hi],
        "iou": float(np.mean([j[i] for i in ids])) if ids else float("nan"),
        "dice_nonempty": float(np.mean(nonempty)) if nonempty else float("nan"),
        "n_images": len(ids),
        "per_image": {i: {"dice": d[i], "iou": j[i]} for i in ids},
    }


def gamma_quality(gamma: Mapping[str, float], corrupted: Mapping[str, Any] | Iterable[str]) -> dict[str, Any]:
    """How well learned weights separate clean from corrupted weak labels.

    Returns ``gamma_auroc`` (AUROC of gamma with clean as the positive class:
    1 means every clean label outweighs every corrupted one, 0.5 is chance),
    ``gamma_mean_clean``, ``gamma_mean_corrupted`` and, when ``corrupted`` maps
    ids to kinds, ``gamma_mean_by_corruption``.
    """
    ids = sorted(gamma)
    bad = set(corrupted)
    kinds = dict(corrupted) if isinstance(corrupted, Mapping) else {}
    g = np.array([gamma[i] for i in ids], float)
    is_bad = np.array([i in bad for i in ids], bool)
    by_kind: dict[str, float] = {}
    for kind in sorted({str(v) for v in kinds.values()}):
        vals = [gamma[i] for i in ids if str(kinds.get(i)) == kind]
        if vals:
            by_kind[kind] = float(np.mean(vals))
    return {
        "gamma_auroc": auroc(g, ~is_bad) if len(ids) else float("nan"),
        "gamma_mean_clean": float(g[~is_bad].mean()) if (~is_bad).any() else float("nan"),
        "gamma_mean_corrupted": float(g[is_bad].mean()) if is_bad.any() else float("nan"),
        "gamma_mean_by_corruption": by_kind,
        "n_weak": len(ids),
        "n_corrupted": int(is_bad.sum()),
    }


def pixel_weight_ratio(weights: Mapping[str, np.ndarray], init_labels: Mapping[str, np.ndarray],
                       truths: Mapping[str, np.ndarray], learned: Mapping[str, np.ndarray] | None = None
                       ) -> dict[str, float]:
    """Mean pixel weight on wrong initial-label pixels over the mean on right ones.

    Parameters
    ----------
    weights : id -> (H, W) float
        Pixel weight of the initial (weak) label y~, at the image's resolution.
    init_labels : id -> (H, W) int
        The rasterised weak label (channel indices, ``IGNORE`` where it says nothing).
    truths : id -> (H, W) int
        The true mask as channel indices.
    learned : id -> (H, W) bool, optional
        Pixels whose weights are learned (others held fixed); default all
        pixels with an initial label.

    Returns
    -------
    dict
        ``pixel_weight_wrong_vs_right`` (pooled over images; < 1 means wrong
        pixels are down-weighted), the two means and the pixel counts.
    """
    sum_w = sum_r = 0.0
    n_w = n_r = 0
    for sid, w in weights.items():
        init, truth = np.asarray(init_labels[sid]), np.asarray(truths[sid])
        w = np.asarray(w, float)
        valid = init != IGNORE
        if learned is not None:
            valid &= np.asarray(learned[sid], bool)
        wrong = valid & (init != truth)
        right = valid & (init == truth)
        sum_w += float(w[wrong].sum())
        n_w += int(wrong.sum())
        sum_r += float(w[right].sum())
        n_r += int(right.sum())
    mean_w = sum_w / n_w if n_w else float("nan")
    mean_r = sum_r / n_r if n_r else float("nan")
    ratio = mean_w / mean_r if n_w and n_r and mean_r > 0 else float("nan")
    return {"pixel_weight_wrong_vs_right": ratio, "pixel_weight_mean_wrong": mean_w,
            "pixel_weight_mean_right": mean_r, "pixels_wrong": n_w, "pixels_right": n_r}


# -- memory probe ------------------------------------------------------------
def _rss_mb() -> float:
    try:
        import psutil

        return psutil.Process().memory_info().rss / 2**20
    except ImportError:  # Linux without psutil: /proc; elsewhere the process peak so far
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
        except (OSError, ValueError, AttributeError):
            import resource

            scale = 1 if sys.platform == "darwin" else 1024
            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale / 2**20


class _PeakMemory:
    """Peak resident memory of this process while the block runs (sampled every 50 ms)."""

    def __enter__(self) -> _PeakMemory:
        self.start_mb = self.peak_mb = _rss_mb()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.05):
            self.peak_mb = max(self.peak_mb, _rss_mb())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_mb = max(self.peak_mb, _rss_mb())


def _cuda_peak_reset() -> None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _cuda_peak_mb() -> float | None:
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        return float(torch.cuda.max_memory_allocated() / 2**20)
    return None


# -- one arm ----------------------------------------------------------------
@dataclass
class ArmData:
    """What one arm trains on and is scored on."""

    train: Collection
    test: Mapping[str, Sample]
    val: Mapping[str, Sample]
    corrupted: Mapping[str, str]
    grid_ids: list[str] = field(default_factory=list)


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically (temporary file, then rename): a crash never leaves half a file."""
    atomic_write_json(path, data)


def _predict_all(predictor: Any, samples: Mapping[str, Sample]) -> dict[str, np.ndarray]:
    if hasattr(predictor, "predict_many"):
        return {k: np.asarray(v) for k, v in predictor.predict_many(samples).items()}
    out = {}
    for sid, s in samples.items():
        labels, _ = predictor.predict(s.load_image())
        out[sid] = np.asarray(labels)
    return out


def _label_values(collection: Collection) -> list[int] | None:
    values = sorted(c.value for c in collection.classes)
    return values if len(values) > 1 else None


def _pixel_weight_inputs(train: Collection, preview: PreviewReport, fix_certain: bool):
    weights, inits, truths, learned = {}, {}, {}, {}
    for sid, pair in preview.pixel_weights.items():
        s = train[sid]
        if s.reference_mask is None:
            continue
        shape = tuple(np.asarray(s.reference_mask).shape[:2])
        t = make_targets(s, train, shape, original_shape=shape)
        w = np.asarray(pair[0], float)
        if w.shape[:2] != shape:  # maps at another resolution than the sample: compare pixel for pixel anyway
            from napari_hybridseg.core.data.images import resize_labels

            w = resize_labels(w, shape)
        weights[sid] = w
        inits[sid] = t.init_label
        truths[sid] = mask_to_index(np.asarray(s.reference_mask), train, sid)
        learned[sid] = (t.certainty == UNKNOWN) if fix_certain else np.ones(shape, bool)
    return weights, inits, truths, learned


def _pick_preview_ids(weak: list[str], corrupted: Mapping[str, str], n: int, seed: int) -> list[str]:
    """Up to ``n`` weak ids, half corrupted where possible, seeded."""
    rng = np.random.default_rng(seed)
    bad = [i for i in weak if i in corrupted]
    good = [i for i in weak if i not in corrupted]
    rng.shuffle(bad)
    rng.shuffle(good)
    k_bad = min(len(bad), n // 2)
    return sorted(bad[:k_bad] + good[: n - k_bad])


def run_arm(
    arm: str,
    data: ArmData,
    config: TrainConfig,
    run_dir: Path,
    backend: Backend,
    *,
    on_report: Callable[[str, Any], None] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    pixel_preview: int = 16,
    curve: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train one arm, evaluate it on the test (and validation) images.

    With ``curve`` the validation Dice is also measured at every checkpoint
    the trainer writes (``config.checkpoint_every``): the convergence curve.
    That evaluation's time is left out of the step times.

    Returns
    -------
    (dict, dict)
        The arm's results (JSON-ready) and its test predictions (id -> labels)
        for the images in ``data.grid_ids``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step_times: list[float] = []
    history: dict[str, list[list[float]]] = {}
    gamma: dict[str, float] = {}
    device, done, start = "?", None, None
    preview: PreviewReport | None = None
    learns_pixels = config.pixel_weights != "off"
    weak_ids = [s.id for s in data.train if s.role is Role.WEAK]
    preview_ids = _pick_preview_ids(weak_ids, data.corrupted, pixel_preview, seed) if learns_pixels else []
    val_curve: list[list[float]] = []
    curve_s = 0.0
    val_truths = {i: _truth_of(s) for i, s in data.val.items()} if curve and data.val else {}

    _cuda_peak_reset()
    t0 = time.perf_counter()
    with _PeakMemory() as mem:
        gen = backend.train(data.train, config, run_dir)
        last = time.perf_counter()
        command = None
        try:
            while True:
                report = gen.send(command) if command is not None else next(gen)
                command = None
                now = time.perf_counter()
                if isinstance(report, StartReport):
                    device, start = report.device, report
                    last = now  # model building and caching are not a step
                elif isinstance(report, StepReport):
                    step_times.append(now - last)
                    last = now
                    device = report.device or device
                    # pixel-weight maps of a few weak images, as they stand after the last step
                    if preview_ids and report.step == report.total_steps:
                        command = RequestPreview(tuple(preview_ids))
                elif isinstance(report, WeightsReport):
                    gamma = dict(report.sample_weights)
                    for sid, value in report.sample_weights.items():
                        # every history starts from the initial weight, so even one update draws a line
                        first = start.start_step if start else 0
                        history.setdefault(sid, [[first, float(config.dii_init)]]).append(
                            [int(report.step), float(value)])
                    # `last` is not reset: a DII update's time counts in the step around it (amortised cost)
                elif isinstance(report, PreviewReport):
                    if report.pixel_weights:
                        preview = report
                elif isinstance(report, CheckpointReport):
                    if val_truths and report.path and all(p[0] != report.step for p in val_curve):
                        t_c = time.perf_counter()
                        pred = _predict_all(backend.load_predictor(Path(report.path)), data.val)
                        ev = evaluate_masks(pred, val_truths, labels=_label_values(data.train), n_boot=10)
                        val_curve.append([int(report.step), float(ev["dice"])])
                        curve_s += time.perf_counter() - t_c
                        last = time.perf_counter()  # the curve's evaluation is not a training step's time
                elif isinstance(report, DoneReport):
                    done = report
                if on_report is not None:
                    on_report(arm, report)
                if done is not None:
                    break
        finally:
            gen.close()
    train_wall = time.perf_counter() - t0
    train_peak_mb = mem.peak_mb
    gpu_peak = _cuda_peak_mb()

    # evaluation at each test image's original resolution
    t1 = time.perf_counter()
    predictor = backend.load_predictor(Path(done.checkpoint) if done and done.checkpoint else run_dir)
    labels = _label_values(data.train)
    test_pred = _predict_all(predictor, data.test)
    test_eval = evaluate_masks(test_pred, {i: _truth_of(s) for i, s in data.test.items()},
                               labels=labels, n_boot=n_boot, seed=seed)
    val_eval = None
    if data.val:
        val_pred = _predict_all(predictor, data.val)
        val_eval = evaluate_masks(val_pred, {i: _truth_of(s) for i, s in data.val.items()},
                                  labels=labels, n_boot=n_boot, seed=seed)
    eval_s = time.perf_counter() - t1

    result: dict[str, Any] = {
        "arm": arm,
        "dice": test_eval["dice"],
        "dice_ci": test_eval["dice_ci"],
        "iou": test_eval["iou"],
        "dice_nonempty": test_eval["dice_nonempty"],
        "val_dice": val_eval["dice"] if val_eval else None,
        "sec_per_step": statistics.median(step_times) if step_times else float("nan"),
        "sec_per_step_mean": float(np.mean(step_times)) if step_times else float("nan"),
        "steps": len(step_times),
        "wall_s": train_wall + eval_s,
        "train_s": train_wall,
        "eval_s": eval_s,
        "peak_mem_mb": train_peak_mb,
        "peak_gpu_mem_mb": gpu_peak,
        "device": device,
        "reason": done.reason if done else "no DoneReport",
        "n_train": len(data.train),
        "n_strong": len(data.train.strong),
        "n_weak": len(data.train.weak),
        "notes": list(start.notes) if start else [],
        "config": config.to_dict(),
        "per_image": test_eval["per_image"],
    }
    if curve:
        result["val_curve"] = sorted(val_curve)
        result["curve_s"] = curve_s
    if config.fixed_weights is not None:
        fw = config.fixed_weights
        bad = [fw[i] for i in weak_ids if i in data.corrupted and i in fw]
        good = [fw[i] for i in weak_ids if i not in data.corrupted and i in fw]
        result["fixed_weight_mean_clean"] = float(np.mean(good)) if good else float("nan")
        result["fixed_weight_mean_corrupted"] = float(np.mean(bad)) if bad else float("nan")
    if config.dii and weak_ids:
        if not gamma:
            gamma = _gamma_from_run_dir(run_dir)
        corrupted_weak = {i: k for i, k in data.corrupted.items() if i in data.train}
        result.update(gamma_quality({i: gamma[i] for i in weak_ids if i in gamma}, corrupted_weak))
        result["gamma"] = {i: gamma[i] for i in weak_ids if i in gamma}
        result["gamma_history"] = history
    if learns_pixels:
        if preview is not None:
            fix = bool(getattr(config, "pixel_weights_fix_certain", True))
            result.update(pixel_weight_ratio(*_pixel_weight_inputs(data.train, preview, fix)))
            result["pixel_weight_samples"] = sorted(preview.pixel_weights)
        else:
            result["pixel_weight_wrong_vs_right"] = float("nan")
            result["notes"].append("the trainer sent no pixel-weight maps: pixel_weight_wrong_vs_right not measured")
    grid = {i: test_pred[i] for i in data.grid_ids if i in test_pred}
    return result, grid


def _restore_train_scale(run_dir: Path, train: Collection, size: int) -> None:
    """Record in ``run.json`` the scale of the ORIGINAL training images, not of their pre-resized copies.

    The predictor tiles images much larger than the training scale; with
    pre-resized copies the trainer sees 1:1 scale and would make
    ``hybridseg predict`` on the bench's models tile full-size images.
    """
    path = Path(run_dir) / "run.json"
    sides = [max(s.meta["original_shape"]) for s in train if "original_shape" in s.meta]
    if not path.is_file() or not sides:
        return
    record = json.loads(path.read_text())
    if "train_scale" in record:
        record["train_scale"] = float(size / np.median(sides))
        write_json(path, record)


def _gamma_from_run_dir(run_dir: Path) -> dict[str, float]:
    path = Path(run_dir) / "gamma.json"
    if not path.is_file():
        return {}
    data = json.loads(path.read_text())
    items = data.get("samples", data) if isinstance(data, dict) else {}
    out = {}
    for sid, rec in items.items():
        value = rec.get("weight", rec.get("value")) if isinstance(rec, dict) else rec
        if isinstance(value, int | float):
            out[sid] = float(value)
    return out


def calibrate_steps(train: Collection, base: TrainConfig, backend: Backend, arms: Iterable[str], *,
                    budget_s: float, n_eval: int, run_dir: Path | None = None, probe_steps: int = 8,
                    log: Callable[[str], None] = print) -> tuple[int, dict[str, Any]]:
    """The largest step budget (<= ``base.steps``, >= 20) with which ``arms`` fit in ``budget_s`` seconds.

    Times ``probe_steps`` steps of one network (the ``naive`` arm) on the real
    training set, takes the median after the first two (warm-up), and scales
    it by each arm's :data:`COST_FACTOR`. DII's re-scoring of every weak image
    (about ``n_weak / (3 B) + 1`` steps' work per update, a few updates per
    run) and the evaluation of ``n_eval`` images per arm are added as fixed
    costs. Returns the steps and a record of the calibration.
    """
    arms = list(arms)
    cfg = arm_config(base, "naive").replace(steps=probe_steps, checkpoint_every=10**9, preview_every=10**9)
    times: list[float] = []
    t0 = time.perf_counter()
    gen = backend.train(train, cfg, run_dir)
    last = None
    try:
        for report in gen:
            now = time.perf_counter()
            if isinstance(report, StepReport):
                if last is not None:
                    times.append(now - last)
                last = now
            elif isinstance(report, StartReport):
                last = now
            elif isinstance(report, DoneReport):
                break
    finally:
        gen.close()
    probe_s = time.perf_counter() - t0
    unit = statistics.median(times[2:] if len(times) > 3 else times) if times else float("nan")
    n_weak = len(train.weak)
    per_update = n_weak / (3.0 * base.batch_size) + 1.0
    n_dii = sum(a in DII_ARMS for a in arms)
    fixed_units = n_dii * 5 * per_update + len(arms) * n_eval / (3.0 * base.batch_size)
    per_step_units = sum(COST_FACTOR[a] for a in arms)
    if not math.isfinite(unit) or unit <= 0:
        steps = base.steps
    else:
        steps = int((budget_s / unit - fixed_units) / per_step_units)
    steps = int(min(base.steps, max(20, steps)))
    record = {"probe_steps": probe_steps, "sec_per_step": unit, "probe_s": probe_s, "budget_s": budget_s,
              "cost_factors": {a: COST_FACTOR[a] for a in arms}, "steps": steps,
              "projected_s": unit * (steps * per_step_units + fixed_units) if math.isfinite(unit) else None}
    log(f"calibration: {unit:.2f} s per single-network step here -> {steps} steps per arm "
        f"(projected ~{(record['projected_s'] or 0) / 60:.0f} min for {len(arms)} arm(s), budget "
        f"{budget_s / 60:.0f} min)")
    if record["projected_s"] and record["projected_s"] > budget_s * 1.05:
        log(f"warning: even {steps} steps per arm do not fit the budget on this machine now (busy, or slow); "
            "the run will take longer. Run it on a quiet machine, or with fewer arms or a smaller --size")
    return steps, record


# -- the whole benchmark -----------------------------------------------------
def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "cpu_count": str(os.cpu_count())}
    for dist in ("napari-hybridseg", "torch", "segmentation-models-pytorch", "numpy", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _save_grid(out: Path, prepared: Prepared, grid_ids: list[str]) -> None:
    """Thumbnails of the grid's test images and truths, so the report can be redrawn from ``out`` alone."""
    from napari_hybridseg.core.data.images import to_float_rgb

    gdir = out / "grid"
    gdir.mkdir(parents=True, exist_ok=True)
    for sid in grid_ids:
        s = prepared.collection[sid]
        img = to_float_rgb(s.load_image())
        truth = _truth_of(s)
        step = max(1, int(np.ceil(max(img.shape[:2]) / 256)))
        np.savez_compressed(gdir / f"{sid}.npz", image=(img[::step, ::step] * 255).astype(np.uint8),
                            truth=truth[::step, ::step].astype(np.uint8), step=step)


def _save_grid_predictions(out: Path, arm: str, grid: Mapping[str, np.ndarray]) -> None:
    gdir = out / "grid"
    gdir.mkdir(parents=True, exist_ok=True)
    safe = arm.replace("+", "_")
    for sid, pred in grid.items():
        meta = np.load(gdir / f"{sid}.npz") if (gdir / f"{sid}.npz").exists() else None
        step = int(meta["step"]) if meta is not None else 1
        tmp = gdir / f".{sid}__{safe}.tmp.npz"
        np.savez_compressed(tmp, pred=np.asarray(pred)[::step, ::step].astype(np.uint8))
        os.replace(tmp, gdir / f"{sid}__{safe}.npz")


def collect_results(out: Path, *, targets: bool = True) -> dict[str, Any]:
    """Assemble ``results.json`` from the files in ``out`` (settings, split, finished arms, baselines).

    ``targets=False`` skips judging the targets (their bootstraps take seconds): between arms.
    """
    out = Path(out)
    settings = json.loads((out / "settings.json").read_text())
    split = json.loads((out / "split.json").read_text())
    arms = {}
    for arm in ARMS:
        path = out / "arms" / f"{arm.replace('+', '_')}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            rec.pop("gamma_history", None)  # kept in the arm file; results.json holds summaries
            arms[arm] = rec
    errors = {}
    for arm in ARMS:
        path = out / "arms" / f"{arm.replace('+', '_')}.error.txt"
        if arm not in arms and path.is_file():
            errors[arm] = path.read_text().strip()
    from .targets import check_targets

    device = next((rec.get("device") for rec in arms.values() if rec.get("device")), None)
    base_path = out / "baselines.json"
    baselines = json.loads(base_path.read_text()) if base_path.is_file() else None
    run = {"schema": 2, "settings": settings, "split": split, "device": device, "arms": arms, "errors": errors,
           "baselines": baselines}
    run["targets"] = check_targets([run]) if targets else []
    return run


def arm_file(out: Path, arm: str) -> Path:
    return Path(out) / "arms" / f"{arm.replace('+', '_')}.json"


def run_benchmark(
    settings: BenchSettings,
    *,
    backend: Backend | None = None,
    prepared: Prepared | None = None,
    on_report: Callable[[str, Any], None] | None = None,
    log: Callable[[str], None] = print,
    command_line: str | None = None,
) -> dict[str, Any]:
    """Run the protocol; skip arms already finished in ``settings.out``.

    Parameters
    ----------
    settings : BenchSettings
    backend : Backend, optional
        Trainer and predictor; default the project's (:func:`default_backend`).
    prepared : Prepared, optional
        Data already prepared (tests); default :func:`prepare` of ``settings``.
    on_report : callable, optional
        ``on_report(arm, report)`` for every trainer report (progress bars).
    log : callable
        One-line messages.
    command_line : str, optional
        Recorded in the settings, so a reader can rerun it.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    t_begin = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    fp = settings.fingerprint()
    old: dict[str, Any] = {}
    if settings_path.is_file():
        old = json.loads(settings_path.read_text())
        if old.get("fingerprint") != fp:
            keys = [k for k, v in settings.to_dict().items()
                    if k not in ("out", "arms", "grid_images", "note") and old.get(k) != v and k != "dataset"]
            raise ValueError(
                f"{out} holds a benchmark run with different settings ({', '.join(keys) or 'dataset'} differ); "
                "use another --out, or delete the folder to start over")
    done_arms = [a for a in settings.arms if arm_file(out, a).is_file()]
    todo = [a for a in settings.arms if a not in done_arms]
    for a in done_arms:
        log(f"{a}: already finished in {arm_file(out, a)} (skipped)")
    if not todo and settings_path.is_file() and (out / "split.json").is_file():
        results = collect_results(out)
        write_json(out / "results.json", results)
        return results

    if prepared is None:
        prepared = prepare(settings, log=log)
    if backend is None:
        values = [0] + sorted(c.value for c in prepared.collection.classes)
        backend = default_backend(settings.device, values)
    base = settings.base_config()
    n_fg = prepared.collection.num_classes
    base = base.replace(model=base.model.replace(classes=n_fg + 1))
    if settings.weak == "tag" and base.model.aux_classes == 0:
        # tags train the auxiliary image-level head (METHOD.md section 3)
        base = base.replace(model=base.model.replace(aux_classes=n_fg))

    split_path = out / "split.json"
    record = prepared.split_record()
    if split_path.is_file():
        old_split = json.loads(split_path.read_text())
        if any(old_split.get(k) != record.get(k) for k in ("train", "val", "test", "strong", "weak", "corrupted")):
            raise RuntimeError(f"{out}: the split or the label budget came out differently from the recorded one; "
                               "the finished arms cannot be reused: use another --out")
    train = prepared.train
    if settings.pre_resize:
        t_rs = time.perf_counter()
        size = int(base.model.input_size)
        train = _copy_collection(train, [resized_sample(s, size) for s in train])
        for sid in prepared.split.train:  # the full-size pixels are not needed any more (can be re-read)
            if prepared.collection[sid].image_path is not None:
                prepared.collection[sid].image = None
        log(f"resized {len(train)} training images to {size} px once for all arms "
            f"({time.perf_counter() - t_rs:.1f} s)")

    # the step budget: given, recorded by an earlier (interrupted) run, or calibrated to the time budget
    calibration = old.get("calibration")
    budget_min = settings.budget_min if settings.budget_min is not None else BENCH_BUDGET_MIN.get(settings.preset)
    if settings.steps is None and old.get("steps_used"):
        base = base.replace(steps=int(old["steps_used"]))
        log(f"steps per arm: {base.steps} (as recorded in {settings_path})")
    elif settings.steps is None and budget_min:
        left = budget_min * 60.0 - (time.perf_counter() - t_begin)  # import and decoding already spent
        steps, calibration = calibrate_steps(
            train, base, backend, todo, budget_s=max(60.0, left), run_dir=None,
            n_eval=len(prepared.split.test) + len(prepared.split.val), log=log)
        base = base.replace(steps=steps)

    rng = np.random.default_rng(settings.seed)
    test_sorted = sorted(prepared.split.test)
    grid_ids = sorted(rng.choice(test_sorted, size=min(settings.grid_images, len(test_sorted)),
                                 replace=False).tolist())
    record["grid"] = grid_ids
    write_json(split_path, record)
    write_json(settings_path, {**settings.to_dict(), "fingerprint": fp, "base_config": base.to_dict(),
                               "backend": backend.name, "versions": _versions(),
                               "command": command_line or " ".join(sys.argv),
                               "prep_s": prepared.prep_s, "notes": prepared.notes,
                               "steps_used": base.steps, "calibration": calibration})
    _save_grid(out, prepared, grid_ids)
    test = {i: prepared.collection[i] for i in prepared.split.test}
    val = {i: prepared.collection[i] for i in prepared.split.val}
    for arm in todo:
        log(f"{arm}: training ({base.steps} steps)")
        data = ArmData(train=arm_collection(train, arm), test=test, val=val,
                       corrupted=prepared.corrupted, grid_ids=grid_ids)
        try:
            cfg = arm_config(base, arm, weak_ids=prepared.weak, corrupted=prepared.corrupted)
            curve = arm in CURVE_ARMS and settings.curve_points > 0 and bool(val)
            if curve:  # a checkpoint every steps / curve_points steps, each scored on the validation images
                cfg = cfg.replace(checkpoint_every=max(1, base.steps // settings.curve_points))
            result, grid = run_arm(arm, data, cfg, out / "runs" / arm.replace("+", "_"), backend,
                                   on_report=on_report, n_boot=settings.n_boot, seed=settings.seed, curve=curve)
        except (ValueError, RuntimeError) as exc:
            # one arm the engine cannot run yet must not cost the others; rerunning retries it
            atomic_write_text(out / "arms" / f"{arm.replace('+', '_')}.error.txt", f"{exc}\n")
            log(f"{arm}: FAILED: {exc}")
            continue
        (out / "arms" / f"{arm.replace('+', '_')}.error.txt").unlink(missing_ok=True)
        if settings.pre_resize:
            _restore_train_scale(out / "runs" / arm.replace("+", "_"), data.train, int(base.model.input_size))
        _save_grid_predictions(out, arm, grid)
        write_json(arm_file(out, arm), result)
        log(f"{arm}: Dice {result['dice']:.3f} [{result['dice_ci'][0]:.3f}, {result['dice_ci'][1]:.3f}], "
            f"{result['sec_per_step']:.3f} s/step, {result['wall_s']:.0f} s -> {arm_file(out, arm)}")
        write_json(out / "results.json", collect_results(out, targets=False))
        rest = todo[todo.index(arm) + 1:]
        if rest and result["steps"]:
            unit = result["train_s"] / result["steps"] / COST_FACTOR[arm]
            eta = sum(unit * COST_FACTOR[a] * base.steps + result["eval_s"] for a in rest)
            log(f"projected time for the remaining {len(rest)} arm(s): ~{eta / 60:.0f} min")
    _update_baselines(out, train, prepared, base, backend, log)
    results = collect_results(out)
    write_json(out / "results.json", results)
    return results


def _update_baselines(out: Path, train: Collection, prepared: Prepared, base: TrainConfig, backend: Backend,
                      log: Callable[[str], None]) -> None:
    """(Re)write ``baselines.json`` when a signal it lacks can now be measured (strong-only / naive finished)."""
    from .baselines import measure_baselines

    path = out / "baselines.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    so_dir, naive_dir = out / "runs" / "strong-only", out / "runs" / "naive"
    can_agree = arm_file(out, "strong-only").is_file() and so_dir.is_dir()
    can_loss = arm_file(out, "naive").is_file() and naive_dir.is_dir() and backend.sample_losses is not None
    if old is not None and not (("agreement" in old["missing"] and can_agree)
                                or ("naive_loss" in old["missing"] and can_loss)):
        return
    if not prepared.weak:
        return
    t0 = time.perf_counter()
    losses = None
    if can_loss:
        try:
            losses = backend.sample_losses(naive_dir, train, prepared.weak, arm_config(base, "naive"))
        except (OSError, ValueError, RuntimeError) as exc:
            log(f"baselines: the naive arm's per-sample losses failed ({exc}); naive_loss not measured")
    predictor = backend.load_predictor(so_dir) if can_agree else None
    rec = measure_baselines(train, prepared.weak, prepared.corrupted, strong_only_predictor=predictor,
                            naive_losses=losses, predict_all=_predict_all)
    rec["seconds"] = time.perf_counter() - t0
    write_json(path, rec)
    log("baselines (AUROC clean vs corrupted): " + ", ".join(
        f"{k} {v['auroc']:.3f}" for k, v in rec["quality"].items()) + f" ({rec['seconds']:.0f} s)")
