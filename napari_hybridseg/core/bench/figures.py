"""The benchmark report's figures (matplotlib, Agg backend: no display, no Qt), drawn from a benchmark folder's
files; :mod:`.report` writes ``report.md`` around them."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .arms import ARMS, CURVE_ARMS, DII_ARMS
from .results import arm_file

__all__ = ["draw_figures"]


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _fig_dice(by_fraction: Mapping[str, Mapping[str, Any]], path: Path) -> None:
    """Per fraction: mean test Dice over seeds, the interval over images and seeds, each seed a dot."""
    plt = _plt()
    fracs = list(by_fraction)
    n = max(len(by_fraction[f]["arms"]) for f in fracs)
    fig, axes = plt.subplots(1, len(fracs), figsize=((1.0 * n + 1.5) * len(fracs), 3.4), squeeze=False)
    for ax, f in zip(axes[0], fracs):
        arms = by_fraction[f]["arms"]
        names = [a for a in ARMS if a in arms]
        d = [_num(arms[a]["dice_mean"]) for a in names]
        lo = [max(0.0, d[i] - _num(arms[a]["dice_ci"][0])) for i, a in enumerate(names)]
        hi = [max(0.0, _num(arms[a]["dice_ci"][1]) - d[i]) for i, a in enumerate(names)]
        colors = ["#7f7f7f" if a in ("all-strong", "strong-only") else "#9467bd" if a in ("fixed", "oracle")
                  else "#1f77b4" for a in names]
        ax.bar(range(len(names)), d, color=colors, alpha=0.8)
        ax.errorbar(range(len(names)), d, yerr=[lo, hi], fmt="none", ecolor="k", capsize=4)
        for i, a in enumerate(names):
            seeds = arms[a]["dice_per_seed"]
            ax.plot([i] * len(seeds), seeds, "o", color="k", ms=3, alpha=0.6)
            top = d[i] + (hi[i] if not math.isnan(hi[i]) else 0.0)
            ax.text(i, (0.0 if math.isnan(top) else top) + 0.02, _fmt(d[i]), ha="center", fontsize=7)
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=8)
        ax.set_title(f"strong fraction {f}", fontsize=9)
        ax.set_ylim(0, 1.1)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("test Dice (mean over seeds, 95% CI)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _fig_weights(aggs: Mapping[str, Mapping[str, Any]], path: Path) -> bool:
    """AUROC (clean vs corrupted) of gamma and of each baseline, with intervals; one panel per fraction."""
    fracs = [f for f, g in aggs.items() if g["weights"]["rows"]]
    if not fracs:
        return False
    plt = _plt()
    fig, axes = plt.subplots(1, len(fracs), figsize=(4.4 * len(fracs), 3.2), squeeze=False)
    for ax, f in zip(axes[0], fracs):
        rows = aggs[f]["weights"]["rows"]
        names = list(rows)
        est = [_num(rows[n]["overall"]["estimate"]) for n in names]
        lo = [max(0.0, e - _num(rows[n]["overall"]["ci"][0])) for e, n in zip(est, names)]
        hi = [max(0.0, _num(rows[n]["overall"]["ci"][1]) - e) for e, n in zip(est, names)]
        colors = ["#1f77b4" if n.startswith("gamma") else "#7f7f7f" for n in names]
        ax.bar(range(len(names)), est, color=colors, alpha=0.85)
        ax.errorbar(range(len(names)), est, yerr=[lo, hi], fmt="none", ecolor="k", capsize=3)
        ax.axhline(0.5, color="k", lw=0.8, ls=":")
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.set_ylim(0, 1.05)
        ax.set_title(f"strong fraction {f}", fontsize=9)
        ax.grid(axis="y", alpha=0.3)
    axes[0][0].set_ylabel("AUROC clean vs corrupted")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fig_convergence(runs_by_fraction: Mapping[str, list], path: Path) -> bool:
    """Validation Dice over training steps of the curve arms: each seed faint, the mean over seeds bold."""
    plt = _plt()
    fracs = [f for f, runs in runs_by_fraction.items()
             if any(run["arms"].get(a, {}).get("val_curve") for run in runs for a in CURVE_ARMS)]
    if not fracs:
        return False
    fig, axes = plt.subplots(1, len(fracs), figsize=(4.2 * len(fracs), 3.2), squeeze=False)
    colors = {"strong-only": "#ff7f0e", "all-strong": "#2ca02c"}
    for ax, f in zip(axes[0], fracs):
        for a in CURVE_ARMS:
            curves = [run["arms"][a]["val_curve"] for run in runs_by_fraction[f]
                      if run["arms"].get(a, {}).get("val_curve")]
            if not curves:
                continue
            for c in curves:
                arr = np.asarray(c, float)
                ax.plot(arr[:, 0], arr[:, 1], lw=0.7, alpha=0.35, color=colors[a])
            steps = sorted({int(s) for c in curves for s, _ in c})
            mean = [np.mean([v for c in curves for s, v in c if int(s) == st]) for st in steps]
            ax.plot(steps, mean, lw=2, marker="o", ms=3, color=colors[a], label=f"{a} ({len(curves)} seed(s))")
        ax.set_title(f"strong fraction {f}", fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("validation Dice")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fig_gamma_hist(arms: Mapping[str, Mapping], corrupted: set[str], path: Path) -> bool:
    plt = _plt()
    names = [a for a in DII_ARMS if a in arms and arms[a].get("gamma")]
    if not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3), squeeze=False)
    bins = np.linspace(0, 1, 21)
    for ax, a in zip(axes[0], names):
        g = arms[a]["gamma"]
        clean = [v for k, v in g.items() if k not in corrupted]
        bad = [v for k, v in g.items() if k in corrupted]
        ax.hist(clean, bins=bins, alpha=0.6, label=f"clean ({len(clean)})", color="#2ca02c")
        ax.hist(bad, bins=bins, alpha=0.6, label=f"corrupted ({len(bad)})", color="#d62728")
        ax.set_title(f"{a}: AUROC {_fmt(arms[a].get('gamma_auroc'))}", fontsize=9)
        ax.set_xlabel("final gamma")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("weak images")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fig_gamma_history(histories: Mapping[str, Mapping[str, list]], corrupted: set[str], path: Path) -> bool:
    plt = _plt()
    names = [a for a in DII_ARMS if histories.get(a)]
    if not names:
        return False
    fig, axes = plt.subplots(1, len(names), figsize=(3.8 * len(names), 3), squeeze=False)
    for ax, a in zip(axes[0], names):
        hist = histories[a]
        for sid, pts in list(hist.items())[:300]:  # faint lines: a sample of the weak images
            arr = np.asarray(pts, float)
            ax.plot(arr[:, 0], arr[:, 1], lw=0.4, alpha=0.25, color="#d62728" if sid in corrupted else "#2ca02c")
        for flag, color, label in ((False, "#1a6b1a", "clean mean"), (True, "#8b0000", "corrupted mean")):
            steps: dict[int, list[float]] = {}
            for sid, pts in hist.items():
                if (sid in corrupted) == flag:
                    for s, v in pts:
                        steps.setdefault(int(s), []).append(float(v))
            if steps:
                xs = sorted(steps)
                ax.plot(xs, [np.mean(steps[x]) for x in xs], lw=2, color=color, label=label,
                        marker="o" if len(xs) <= 30 else None, ms=3)
        ax.set_title(a, fontsize=9)
        ax.set_xlabel("training step")
        ax.set_ylim(-0.02, 1.02)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("gamma")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def _fig_grid(out: Path, grid_ids: list[str], arms: list[str], path: Path) -> bool:
    plt = _plt()
    gdir = out / "grid"
    rows = [sid for sid in grid_ids if (gdir / f"{sid}.npz").is_file()]
    if not rows:
        return False
    cols = ["image", "truth", *arms]
    fig, axes = plt.subplots(len(rows), len(cols), figsize=(1.6 * len(cols), 1.6 * len(rows)), squeeze=False)
    for r, sid in enumerate(rows):
        base = np.load(gdir / f"{sid}.npz")
        img, truth = base["image"], base["truth"]
        panels = [None, truth]
        for a in arms:
            p = gdir / f"{sid}__{a.replace('+', '_')}.npz"
            panels.append(np.load(p)["pred"] if p.is_file() else None)
        for c, (name, mask) in enumerate(zip(cols, panels)):
            ax = axes[r][c]
            ax.imshow(img)
            if name != "image":
                if mask is None:
                    ax.text(0.5, 0.5, "not run", transform=ax.transAxes, ha="center", color="w")
                else:
                    color = (0.1, 0.9, 0.1) if name == "truth" else (1.0, 0.55, 0.0)
                    overlay = np.zeros((*mask.shape[:2], 4))
                    overlay[mask > 0] = (*color, 0.45)
                    ax.imshow(overlay)
                    if (truth > 0).any() and name != "truth":
                        ax.contour(truth > 0, levels=[0.5], colors=["lime"], linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(name, fontsize=8)
        axes[r][0].set_ylabel(sid[:18], fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def _load_histories(out: Path, arms: list[str]) -> dict[str, dict]:
    hist = {}
    for a in arms:
        p = arm_file(out, a)
        if p.is_file():
            rec = json.loads(p.read_text())
            if rec.get("gamma_history"):
                hist[a] = rec["gamma_history"]
    return hist


def draw_figures(out: Path, aggs: Mapping[str, Any], runs_by: Mapping[str, list], first: Mapping[str, Any],
             first_dir: Path) -> dict[str, str]:
    """Draw the report's figures into ``out``; key -> file name of each one drawn."""
    figs = {}
    _fig_dice(aggs, out / "dice_per_arm.png")
    figs["dice"] = "dice_per_arm.png"
    arms1 = first["arms"]
    corrupted = set(first["split"].get("corrupted", {}))
    names1 = [a for a in ARMS if a in arms1]
    if _fig_gamma_hist(arms1, corrupted, out / "gamma_hist.png"):
        figs["gamma_hist"] = "gamma_hist.png"
    if _fig_gamma_history(_load_histories(first_dir, names1), corrupted, out / "gamma_history.png"):
        figs["gamma_history"] = "gamma_history.png"
    if _fig_weights(aggs, out / "weights_vs_baselines.png"):
        figs["weights"] = "weights_vs_baselines.png"
    if _fig_convergence(runs_by, out / "convergence.png"):
        figs["convergence"] = "convergence.png"
    if _fig_grid(first_dir, list(first["split"].get("grid", [])), names1, out / "test_grid.png"):
        figs["grid"] = "test_grid.png"
    return figs
