"""Paired statistics over seeds and test images (numpy only).

A benchmark with several seeds has, per seed, its own split and therefore its
own test images. Two arms are compared on the SAME images of the same seed
(paired), and the uncertainty has two sources: which test images happened to
be drawn, and which seed (split, label budget, corruption, initialisation).
Both are resampled, hierarchically:

1. the seeds, with replacement (when there are at least two);
2. within each drawn seed, its test images (or weak samples), with replacement;

and the statistic is the mean over the drawn seeds of the per-seed mean.
With one seed this is the ordinary paired bootstrap over images. The
interval is the 2.5-97.5% percentile interval.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["auroc_bootstrap", "combine_seeds", "paired_bootstrap"]


def combine_seeds(per_seed_boot: np.ndarray, rng: np.random.Generator, resample_seeds: bool = True) -> np.ndarray:
    """``(S, B)`` bootstrap replicates of each seed's statistic -> ``(B,)`` replicates of their mean.

    With ``resample_seeds`` (and S >= 2) each replicate averages S seeds drawn with replacement.
    """
    per_seed_boot = np.asarray(per_seed_boot, float)
    s, b = per_seed_boot.shape
    if s >= 2 and resample_seeds:
        pick = rng.integers(0, s, size=(b, s))
        return per_seed_boot[pick, np.arange(b)[:, None]].mean(axis=1)
    return per_seed_boot.mean(axis=0)


def _interval(reps: np.ndarray, alpha: float) -> list[float]:
    reps = reps[np.isfinite(reps)]
    if reps.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(reps, [alpha / 2, 1 - alpha / 2])
    return [float(lo), float(hi)]


def paired_bootstrap(per_seed: Sequence[Mapping[str, Mapping[str, float]]], coefs: Mapping[str, float], *,
                     const: float = 0.0, n_boot: int = 2000, seed: int = 0, alpha: float = 0.05,
                     resample_seeds: bool = True) -> dict[str, Any]:
    """Estimate and interval of ``mean_seeds mean_images (sum_a coefs[a] * x_a[image]) + const``.

    Parameters
    ----------
    per_seed : sequence of {arm: {image id: value}}
        One entry per seed (e.g. each arm's per-image test Dice). A seed is
        used only when every arm in ``coefs`` has values there; within a seed
        only the images every such arm scored count (pairing).
    coefs : {arm: coefficient}
        The linear combination: ``{"dii": 1, "fixed": -1}`` is the paired
        difference; ``{"full": 1, "all-strong": -0.97}`` tests a ratio;
        ``{"best": 1, "strong-only": -0.5, "all-strong": -0.5}`` half the gap.
    const : float
        Added to the statistic (``-0.02`` for "at least 0.02 better").

    Returns
    -------
    dict
        ``estimate``, ``ci`` [lo, hi], ``n_seeds``, ``n_images`` (per used
        seed), ``seeds_used`` (indices into ``per_seed``).
    """
    rng = np.random.default_rng(seed)
    vectors, used = [], []
    for k, arms in enumerate(per_seed):
        if not all(a in arms and arms[a] for a in coefs):
            continue
        ids = sorted(set.intersection(*(set(arms[a]) for a in coefs)))
        if not ids:
            continue
        v = sum(float(c) * np.array([float(arms[a][i]) for i in ids]) for a, c in coefs.items())
        vectors.append(np.asarray(v, float))
        used.append(k)
    if not vectors:
        return {"estimate": float("nan"), "ci": [float("nan"), float("nan")], "n_seeds": 0, "n_images": [],
                "seeds_used": []}
    boots = np.stack([v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(axis=1) for v in vectors])
    reps = combine_seeds(boots, rng, resample_seeds) + const
    estimate = float(np.mean([v.mean() for v in vectors]) + const)
    return {"estimate": estimate, "ci": _interval(reps, alpha), "n_seeds": len(vectors),
            "n_images": [int(v.size) for v in vectors], "seeds_used": used}


def _auroc_weighted(scores: np.ndarray, positives: np.ndarray, cpos: np.ndarray, cneg: np.ndarray) -> np.ndarray:
    """AUROC (ties one half) of every bootstrap replicate at once.

    ``cpos`` (B, n_pos) and ``cneg`` (B, n_neg) are how often each positive and
    each negative sample was drawn in each replicate (rows sum to n_pos, n_neg).
    """
    uniq, group = np.unique(scores, return_inverse=True)
    g = uniq.size
    onehot_pos = np.zeros((int(positives.sum()), g))
    onehot_pos[np.arange(onehot_pos.shape[0]), group[positives]] = 1.0
    onehot_neg = np.zeros((int((~positives).sum()), g))
    onehot_neg[np.arange(onehot_neg.shape[0]), group[~positives]] = 1.0
    p = cpos @ onehot_pos  # (B, G) positives per distinct score
    n = cneg @ onehot_neg
    below = np.cumsum(n, axis=1) - n  # negatives strictly below each score
    wins = (p * (below + 0.5 * n)).sum(axis=1)
    return wins / (cpos.sum(axis=1) * cneg.sum(axis=1))


def auroc_bootstrap(per_seed: Sequence[Mapping[str, Any]], *, const: float = 0.0, n_boot: int = 1000,
                    seed: int = 0, alpha: float = 0.05, resample_seeds: bool = True) -> dict[str, Any]:
    """Estimate and interval of ``mean_seeds [AUROC(a) - AUROC(b)] + const`` (``b`` optional).

    Parameters
    ----------
    per_seed : sequence of dicts
        ``{"positive": {id: bool}, "a": {id: score}, "b": {id: score} or None}``
        per seed: ``positive`` marks the clean samples, ``a`` and ``b`` are
        scores oriented so that high = clean. Within a seed only ids that
        every given score covers count, and both scores see the SAME resampled
        samples (paired). Samples are resampled within each class (clean,
        corrupted), so every replicate has both.
    const : float
        Added to the statistic (``-0.95`` to test "AUROC >= 0.95").
    """
    rng = np.random.default_rng(seed)
    boots, estimates, used, sizes = [], [], [], []
    for k, item in enumerate(per_seed):
        pos_map, a, b = item.get("positive") or {}, item.get("a") or {}, item.get("b")
        ids = [i for i in sorted(pos_map) if i in a and (b is None or i in b)
               and np.isfinite(float(a[i])) and (b is None or np.isfinite(float(b[i])))]
        y = np.array([bool(pos_map[i]) for i in ids], bool)
        if y.sum() == 0 or (~y).sum() == 0:
            continue
        sa = np.array([float(a[i]) for i in ids])
        sb = None if b is None else np.array([float(b[i]) for i in ids])

        n_pos, n_neg = int(y.sum()), int((~y).sum())
        cpos = rng.multinomial(n_pos, np.full(n_pos, 1.0 / n_pos), size=n_boot).astype(float)
        cneg = rng.multinomial(n_neg, np.full(n_neg, 1.0 / n_neg), size=n_boot).astype(float)
        ones_p, ones_n = np.ones((1, n_pos)), np.ones((1, n_neg))
        reps = _auroc_weighted(sa, y, cpos, cneg)
        est = float(_auroc_weighted(sa, y, ones_p, ones_n)[0])
        if sb is not None:
            reps = reps - _auroc_weighted(sb, y, cpos, cneg)
            est -= float(_auroc_weighted(sb, y, ones_p, ones_n)[0])
        boots.append(reps)
        estimates.append(est)
        used.append(k)
        sizes.append(len(ids))
    if not boots:
        return {"estimate": float("nan"), "ci": [float("nan"), float("nan")], "n_seeds": 0, "n_samples": [],
                "seeds_used": []}
    reps = combine_seeds(np.stack(boots), rng, resample_seeds) + const
    return {"estimate": float(np.mean(estimates) + const), "ci": _interval(reps, alpha), "n_seeds": len(boots),
            "n_samples": sizes, "seeds_used": used}
