"""Segmentation and weight-quality metrics (numpy only).

Dice and IoU follow the usual convention for empty masks: when both the
prediction and the truth are empty the score is 1 (nothing to find, nothing
found); when exactly one is empty it is 0.
"""

from __future__ import annotations

import numpy as np

__all__ = ["auroc", "bootstrap_ci", "dice", "iou", "mean_dice"]


def _fg(a: np.ndarray, label: int | None) -> np.ndarray:
    a = np.asarray(a)
    return a > 0 if label is None else a == label


def dice(pred: np.ndarray, truth: np.ndarray, label: int | None = None) -> float:
    """Dice of the foreground (``label=None``: any non-zero value) of two masks.

    Examples
    --------
    >>> dice(np.array([[1, 1], [0, 0]]), np.array([[1, 0], [0, 0]]))
    0.6666666666666666
    """
    p, t = _fg(pred, label), _fg(truth, label)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    denom = p.sum() + t.sum()
    if denom == 0:
        return 1.0
    return float(2.0 * np.logical_and(p, t).sum() / denom)


def iou(pred: np.ndarray, truth: np.ndarray, label: int | None = None) -> float:
    """Intersection over union of the foreground of two masks."""
    p, t = _fg(pred, label), _fg(truth, label)
    if p.shape != t.shape:
        raise ValueError(f"prediction {p.shape} and truth {t.shape} differ in shape")
    union = np.logical_or(p, t).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(p, t).sum() / union)


def mean_dice(preds, truths, labels: list[int] | None = None) -> float:
    """Mean over images (and over ``labels`` if given) of the Dice score."""
    scores = []
    for p, t in zip(preds, truths, strict=True):
        if labels:
            scores.append(float(np.mean([dice(p, t, lab) for lab in labels])))
        else:
            scores.append(dice(p, t))
    return float(np.mean(scores)) if scores else float("nan")


def bootstrap_ci(values, n_boot: int = 2000, alpha: float = 0.05, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values``."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, v.size, size=(n_boot, v.size))
    means = v[idx].mean(axis=1)
    lo, hi = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return (float(lo), float(hi))


def auroc(scores, positives) -> float:
    """Area under the ROC curve of ``scores`` for the boolean ``positives``.

    Ties count one half (Mann-Whitney U). NaN when one class is missing.
    For gamma quality pass ``scores=gamma`` and ``positives=~corrupted``
    (clean labels should score high).
    """
    s = np.asarray(scores, dtype=float)
    y = np.asarray(positives, dtype=bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(s)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2
    return float(u / (n_pos * n_neg))
