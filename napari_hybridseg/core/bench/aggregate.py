"""Summaries over the seeds of one strong fraction: per-arm mean and spread, paired differences, weight quality.

Input everywhere: ``runs``, a list of one-run results (what
:func:`.protocol.collect_results` returns), one per seed, all at the same
strong fraction. Numpy only.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .baselines import SIGNALS
from .paired import auroc_bootstrap, paired_bootstrap
from .protocol import ARMS, DII_ARMS

__all__ = ["HYBRID_ARMS", "PAIRS", "arm_summary", "dice_per_seed", "gamma_per_seed", "paired_differences",
           "weight_quality"]

#: Arms that train on strong + weak labels without knowing which are corrupted (not `oracle`).
HYBRID_ARMS = ("naive", "fixed", "dii", "dii+dcr", "full")

#: Paired differences the report shows (A - B): the ones the targets name, and the controls.
PAIRS = (("full", "naive"), ("dii", "fixed"), ("dii", "naive"), ("fixed", "naive"), ("oracle", "dii"),
         ("oracle", "naive"), ("full", "dii+dcr"), ("dii+dcr", "dii"), ("full", "strong-only"),
         ("dii", "strong-only"), ("naive", "strong-only"), ("all-strong", "full"))


def _num(x: Any) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def dice_per_seed(runs: Sequence[Mapping[str, Any]]) -> list[dict[str, dict[str, float]]]:
    """Per seed: {arm: {test image: Dice}}."""
    return [{a: {i: float(v["dice"]) for i, v in rec.get("per_image", {}).items()}
             for a, rec in run.get("arms", {}).items()} for run in runs]


def _mean_sd(values: Sequence[float]) -> tuple[float, float]:
    v = [x for x in values if not math.isnan(x)]
    if not v:
        return float("nan"), float("nan")
    return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else float("nan")


def arm_summary(runs: Sequence[Mapping[str, Any]], *, n_boot: int = 2000) -> dict[str, dict[str, Any]]:
    """Per arm over the seeds it ran: mean and SD of Dice (and the rest), an interval over images and seeds."""
    per_seed = dice_per_seed(runs)
    out: dict[str, dict[str, Any]] = {}
    for a in ARMS:
        recs = [(run["split"].get("seed"), run["arms"][a]) for run in runs if a in run.get("arms", {})]
        if not recs:
            continue
        dice = [_num(r["dice"]) for _, r in recs]
        mean, sd = _mean_sd(dice)
        boot = paired_bootstrap(per_seed, {a: 1.0}, n_boot=n_boot)

        def avg(key: str, recs=recs) -> float:
            return _mean_sd([_num(r.get(key)) for _, r in recs])[0]

        out[a] = {"seeds": [s for s, _ in recs], "dice_per_seed": dice, "dice_mean": mean, "dice_sd": sd,
                  "dice_ci": boot["ci"], "iou_mean": avg("iou"), "dice_nonempty_mean": avg("dice_nonempty"),
                  "val_dice_mean": avg("val_dice"), "sec_per_step_median": avg("sec_per_step"),
                  "sec_per_step_mean": avg("sec_per_step_mean"), "wall_s_mean": avg("wall_s"),
                  "peak_mem_mb_max": max((_num(r.get("peak_mem_mb")) for _, r in recs), default=float("nan"))}
        if any("gamma_auroc" in r for _, r in recs):
            out[a]["gamma_auroc_mean"], out[a]["gamma_auroc_sd"] = _mean_sd([_num(r.get("gamma_auroc"))
                                                                            for _, r in recs])
    so, allst = out.get("strong-only", {}).get("dice_mean"), out.get("all-strong", {}).get("dice_mean")
    for rec in out.values():
        rec["ratio_to_all_strong"] = rec["dice_mean"] / allst if allst else float("nan")
        gap = (allst - so) if allst is not None and so is not None else float("nan")
        rec["gap_closed"] = (rec["dice_mean"] - so) / gap if gap and not math.isnan(gap) and gap > 0 \
            else float("nan")
    return out


def paired_differences(runs: Sequence[Mapping[str, Any]], pairs: Sequence[tuple[str, str]] = PAIRS, *,
                       n_boot: int = 2000) -> list[dict[str, Any]]:
    """Paired Dice difference A - B (mean over seeds, interval over images and seeds) for each pair that ran."""
    per_seed = dice_per_seed(runs)
    out = []
    for a, b in pairs:
        res = paired_bootstrap(per_seed, {a: 1.0, b: -1.0}, n_boot=n_boot)
        if res["n_seeds"]:
            out.append({"a": a, "b": b, **res})
    return out


def gamma_per_seed(runs: Sequence[Mapping[str, Any]], arm: str) -> list[dict[str, float] | None]:
    return [run["arms"][arm].get("gamma") if arm in run.get("arms", {}) else None for run in runs]


def _corrupted(run: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in run["split"].get("corrupted", {}).items()}


def _signal_per_seed(runs: Sequence[Mapping[str, Any]], name: str) -> list[dict[str, float] | None]:
    out = []
    for run in runs:
        base = run.get("baselines") or {}
        sig = base.get("signals", {}).get(name)
        if sig is None:
            out.append(None)
            continue
        sign = float(base.get("orientation", {}).get(name, 1.0))
        out.append({k: sign * float(v) for k, v in sig.items() if v is not None and np.isfinite(float(v))})
    return out


def auroc_items(runs: Sequence[Mapping[str, Any]], a: list, b: list | None = None, kind: str | None = None
                ) -> list[dict[str, Any]]:
    """Inputs of :func:`.paired.auroc_bootstrap`: per seed, clean flags (all clean + ``kind``'s corrupted)."""
    items = []
    for k, run in enumerate(runs):
        if a[k] is None or (b is not None and b[k] is None):
            continue
        bad = _corrupted(run)
        weak = run["split"].get("weak", [])
        pos = {i: i not in bad for i in weak if kind is None or i not in bad or bad[i] == kind}
        items.append({"positive": pos, "a": a[k], "b": None if b is None else b[k]})
    return items


def weight_quality(runs: Sequence[Mapping[str, Any]], *, n_boot: int = 1000) -> dict[str, Any]:
    """AUROC (clean vs corrupted) of gamma of each DII arm and of each baseline: overall and per kind, over seeds.

    ``rows[name]`` with name ``gamma (<arm>)`` or a baseline: ``overall`` and
    ``by_kind[kind]``, each {estimate, ci, n_seeds}.
    """
    kinds = sorted({k for run in runs for k in _corrupted(run).values()})
    sources: dict[str, list] = {}
    for arm in DII_ARMS:
        g = gamma_per_seed(runs, arm)
        if any(x for x in g):
            sources[f"gamma ({arm})"] = g
    for name in SIGNALS:
        s = _signal_per_seed(runs, name)
        if any(x for x in s):
            sources[name] = s
    rows = {}
    for name, scores in sources.items():
        rows[name] = {"overall": auroc_bootstrap(auroc_items(runs, scores), n_boot=n_boot),
                      "by_kind": {kd: auroc_bootstrap(auroc_items(runs, scores, kind=kd), n_boot=n_boot)
                                  for kd in kinds}}
    return {"kinds": kinds, "rows": rows, "sources": sources}
