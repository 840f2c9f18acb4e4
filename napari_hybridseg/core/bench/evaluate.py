"""Scores of one arm: Dice / IoU at original resolution, and how well learned weights (per image and
per pixel) separate clean from corrupted weak labels."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.bench.metrics import auroc, bootstrap_ci, dice, iou
from napari_hybridseg.core.data.collection import Collection, Sample
from napari_hybridseg.core.supervision.targets import IGNORE, UNKNOWN, make_targets, mask_to_index
from napari_hybridseg.core.training.reports import (
    PreviewReport,
)


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
