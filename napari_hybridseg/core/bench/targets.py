"""BENCHMARK.md's targets, each judged on its paired interval over test images and seeds.

A target is **met** only when the whole 95% interval of its statistic lies on
the right side of the threshold (its lower bound, for "at least"); ``met`` is
``None`` ("not measured") where an arm it needs did not run. Input: ``runs``,
one-run results (:func:`.protocol.collect_results`), one per seed, all at
the same strong fraction.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .aggregate import HYBRID_ARMS, arm_summary, auroc_items, dice_per_seed, gamma_per_seed
from .aggregate import _signal_per_seed as signal_per_seed
from .baselines import SIGNALS
from .paired import auroc_bootstrap, paired_bootstrap
from .protocol import DII_ARMS

__all__ = ["COSTS", "check_targets"]

#: Cost targets: (arm, reference arm, limit) -- seconds per step, median and mean, from the same run.
COSTS = (("dii", "naive", 1.10), ("full", "dii+dcr", 1.5), ("dii+dcr", "dii", 2.2))


def _fmt(x: Any, digits: int = 3) -> str:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return "n/a"
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _interval_text(res: Mapping[str, Any], digits: int = 3) -> str:
    lo, hi = res["ci"]
    return f"{float(res['estimate']):+.{digits}f} [{_fmt(lo, digits)}, {_fmt(hi, digits)}]"


def _met_lower(res: Mapping[str, Any]) -> bool | None:
    lo = res["ci"][0]
    if not res.get("n_seeds") or lo is None or math.isnan(float(lo)):
        return None
    return bool(lo >= 0.0)


def _dice_target(key: str, text: str, per_seed, coefs: dict[str, float], const: float, n_boot: int,
                 describe: str) -> dict[str, Any]:
    res = paired_bootstrap(per_seed, coefs, const=const, n_boot=n_boot)
    return {"key": key, "target": text, "statistic": describe, "estimate": res["estimate"], "ci": res["ci"],
            "n_seeds": res["n_seeds"], "met": _met_lower(res),
            "text": (f"{describe} = {_interval_text(res)} ({res['n_seeds']} seed(s))" if res["n_seeds"]
                     else "n/a")}


def check_targets(runs: Sequence[Mapping[str, Any]], *, n_boot: int = 2000, n_boot_auroc: int = 1000
                  ) -> list[dict[str, Any]]:
    """Each target of BENCHMARK.md with its statistic, interval and whether the interval says it is met."""
    runs = [r for r in runs if r.get("arms") is not None]
    if not runs:
        return []
    weak = (runs[0].get("settings") or {}).get("weak", "box")
    per_seed = dice_per_seed(runs)
    summary = arm_summary(runs, n_boot=200)
    out: list[dict[str, Any]] = []

    hybrids = [a for a in HYBRID_ARMS if a in summary]
    best = max(hybrids, key=lambda a: summary[a]["dice_mean"]) if hybrids else None
    gap = (summary["all-strong"]["dice_mean"] - summary["strong-only"]["dice_mean"]
           if "strong-only" in summary and "all-strong" in summary else float("nan"))
    if best is not None and not math.isnan(gap) and gap <= 0:
        # no gap: "closing half of it" means nothing (the budget is too short, or the test set too small)
        t = {"key": "gap_half", "target": "the best hybrid arm closes >= half the gap from `strong-only` to "
             "`all-strong`", "met": None,
             "text": f"no gap to close: `all-strong` - `strong-only` = {gap:+.3f} (mean over seeds)"}
    elif best is not None and not math.isnan(gap):
        t = _dice_target("gap_half", "the best hybrid arm closes >= half the gap from `strong-only` to `all-strong`",
                         per_seed, {best: 1.0, "strong-only": -0.5, "all-strong": -0.5}, 0.0, n_boot,
                         f"`{best}` - (`strong-only` + `all-strong`) / 2")
        t["text"] += f"; gap closed {_fmt(summary[best]['gap_closed'], 2)} (best arm picked by mean Dice)"
    else:
        t = {"key": "gap_half", "target": "the best hybrid arm closes >= half the gap", "met": None, "text": "n/a"}
    out.append(t)
    out.append(_dice_target("full_vs_all_strong", "`full` Dice >= 0.97 x `all-strong`", per_seed,
                            {"full": 1.0, "all-strong": -0.97}, 0.0, n_boot, "`full` - 0.97 `all-strong`"))
    out.append(_dice_target("dii_vs_fixed", "`dii` Dice >= `fixed` + 0.02", per_seed,
                            {"dii": 1.0, "fixed": -1.0}, -0.02, n_boot, "`dii` - `fixed` - 0.02"))
    out.append(_dice_target("dii_vs_naive", "`dii` Dice >= `naive` + 0.03", per_seed,
                            {"dii": 1.0, "naive": -1.0}, -0.03, n_boot, "`dii` - `naive` - 0.03"))
    if weak == "box":
        out.append(_dice_target("full_vs_dcr", "`full` Dice >= `dii+dcr` + 0.02 (boxes)", per_seed,
                                {"full": 1.0, "dii+dcr": -1.0}, -0.02, n_boot, "`full` - `dii+dcr` - 0.02"))

    threshold = 0.90 if weak == "tag" else 0.95
    kinds = sorted({str(k) for run in runs for k in run["split"].get("corrupted", {}).values()})
    baselines = {name: signal_per_seed(runs, name) for name in SIGNALS}
    baselines = {k: v for k, v in baselines.items() if any(x for x in v)}
    for arm in DII_ARMS:
        g = gamma_per_seed(runs, arm)
        if not any(x for x in g):
            continue
        res = auroc_bootstrap(auroc_items(runs, g), const=-threshold, n_boot=n_boot_auroc)
        out.append({"key": f"gamma_auroc:{arm}", "target": f"gamma AUROC (`{arm}`) >= {threshold:.2f} ({weak})",
                    "estimate": res["estimate"] + threshold, "ci": [c + threshold for c in res["ci"]],
                    "n_seeds": res["n_seeds"], "met": _met_lower(res),
                    "text": f"{_fmt(res['estimate'] + threshold)} [{_fmt(res['ci'][0] + threshold)}, "
                            f"{_fmt(res['ci'][1] + threshold)}] ({res['n_seeds']} seed(s))"})
        parts, flags = [], []
        for kind in kinds:
            r = auroc_bootstrap(auroc_items(runs, g, kind=kind), const=-0.85, n_boot=n_boot_auroc)
            flags.append(_met_lower(r))
            parts.append(f"{kind} {_fmt(r['estimate'] + 0.85)} [{_fmt(r['ci'][0] + 0.85)}, ...]")
        out.append({"key": f"gamma_auroc_by_kind:{arm}",
                    "target": f"gamma AUROC (`{arm}`) >= 0.85 for each corruption kind",
                    "met": None if not flags or any(f is None for f in flags) else all(flags),
                    "text": "; ".join(parts) or "n/a"})
        parts, flags = [], []
        for name, scores in baselines.items():
            r = auroc_bootstrap(auroc_items(runs, g, scores), const=-0.05, n_boot=n_boot_auroc)
            flags.append(_met_lower(r))
            parts.append(f"vs {name}: {_fmt(r['estimate'] + 0.05)} [{_fmt(r['ci'][0] + 0.05)}, "
                         f"{_fmt(r['ci'][1] + 0.05)}]")
        missing = [s for s in SIGNALS if s not in baselines]
        if missing:
            parts.append("not measured: " + ", ".join(missing))
        out.append({"key": f"gamma_vs_baselines:{arm}",
                    "target": f"gamma AUROC (`{arm}`) >= every baseline's + 0.05 (paired over weak samples)",
                    "met": None if not flags or any(f is None for f in flags) else all(flags),
                    "text": "; ".join(parts) or "n/a"})

    for arm, ref, limit in COSTS:
        ratios_med, ratios_mean = [], []
        for run in runs:
            arms = run.get("arms", {})
            if arm in arms and ref in arms:
                a, b = arms[arm], arms[ref]
                ratios_med.append(float(a["sec_per_step"]) / float(b["sec_per_step"]))
                ratios_mean.append(float(a["sec_per_step_mean"]) / float(b["sec_per_step_mean"]))
        med = float(np.mean(ratios_med)) if ratios_med else float("nan")
        mean = float(np.mean(ratios_mean)) if ratios_mean else float("nan")
        met = None if not ratios_med or math.isnan(med) or math.isnan(mean) else bool(med <= limit and mean <= limit)
        out.append({"key": f"cost:{arm}/{ref}", "target": f"`{arm}` s/step <= {limit} x `{ref}` (median and mean)",
                    "estimate": med, "estimate_mean": mean, "threshold": limit, "met": met,
                    "text": (f"median {_fmt(med, 2)} x, mean {_fmt(mean, 2)} x (same run, averaged over "
                             f"{len(ratios_med)} seed(s))" if ratios_med else "n/a")})
    return out
