"""The benchmark report: ``report.md`` and its figures, from a benchmark folder.

Everything is redrawn from the files :func:`.protocol.run_benchmark` writes
(``results.json``, ``arms/*.json``, ``grid/*.npz``), so a report can be
regenerated without the dataset or a model. Figures use matplotlib's Agg
backend (no display, no Qt).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.fsio import atomic_write_text

from .protocol import ARMS, CURVE_ARMS, DII_ARMS, arm_file

__all__ = ["write_report"]

def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


# -- figures ------------------------------------------------------------------
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


# -- report.md ------------------------------------------------------------------
def _load_histories(out: Path, arms: list[str]) -> dict[str, dict]:
    hist = {}
    for a in arms:
        p = arm_file(out, a)
        if p.is_file():
            rec = json.loads(p.read_text())
            if rec.get("gamma_history"):
                hist[a] = rec["gamma_history"]
    return hist



def _status(met: Any) -> str:
    return "not measured" if met is None else ("**met**" if met else "**not met**")


def _ci(ci: Any, digits: int = 3) -> str:
    if not ci:
        return "n/a"
    return f"[{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]"


def _pm(mean: Any, sd: Any, digits: int = 3) -> str:
    return _fmt(mean, digits) + ("" if math.isnan(_num(sd)) else f" ± {_fmt(sd, digits)}")


def _setup_lines(first: Mapping[str, Any], plan: Mapping[str, Any] | None, by_fraction_runs) -> list[str]:
    settings, split = first["settings"], first["split"]
    base = settings.get("base_config", {})
    model = base.get("model", {})
    versions = settings.get("versions", {})
    counts = split.get("counts", {})
    device = first.get("device") or "?"
    seeds = plan["seeds"] if plan else [split.get("seed")]
    fractions = [f"{f:g}" for f in plan["fractions"]] if plan else [f"{settings['strong_fraction']:g}"]
    n_img = counts.get("train", 0) + counts.get("val", 0) + counts.get("test", 0)
    lines = [
        f"- dataset `{settings['dataset']}` (layout `{settings['layout']}`), {n_img} images"
        + (f" (seeded subset, --limit {settings['limit']}; the subset follows the seed)" if settings.get("limit")
           else ""),
        f"- seeds {', '.join(str(s) for s in seeds)}; strong fraction(s) {', '.join(fractions)}; weak labels "
        f"`{settings['weak']}`, noise {settings['noise']}. Split (group-aware 70/10/20), label budget, corruption "
        "and the networks' initialisation all follow the seed",
        f"- e.g. seed {split.get('seed')} at fraction {settings['strong_fraction']:g}: train {counts.get('train')} "
        f"({counts.get('strong')} strong, {counts.get('weak')} weak of which {counts.get('corrupted')} corrupted), "
        f"validation {counts.get('val')}, test {counts.get('test')}; {counts.get('grouped_ids', 0)} images share "
        "a group with another and were kept in one part",
        f"- every arm: {model.get('arch')} / {model.get('encoder')} (encoder weights "
        f"{model.get('encoder_weights') or 'none: from scratch'}) at {model.get('input_size')} px, "
        f"{base.get('steps')} steps of batch {base.get('batch_size')}, preset `{settings['preset']}`",
        f"- device: {device}; torch {versions.get('torch')}, segmentation-models-pytorch "
        f"{versions.get('segmentation-models-pytorch')}, napari-hybridseg {versions.get('napari-hybridseg')}, "
        f"{versions.get('processor')} x {versions.get('cpu_count')} cores",
        "- Dice and IoU: mean over test images, each scored at its original resolution; an image with an "
        "empty truth scores 1 if the prediction is empty too (\"Dice non-empty\" leaves those out)",
        "- intervals: 95% percentile bootstrap, hierarchical: seeds resampled, then each drawn seed's test "
        "images (paired: both arms of a difference on the same draws); with one seed, over images only",
    ]
    if plan and plan.get("expensive_seeds") is not None:
        k = plan["expensive_seeds"]
        lines.append(f"- the expensive arms (`dii+dcr`, `full`) ran on the first {k} seed(s) only "
                     f"({', '.join(str(s) for s in seeds[:k])}); their means, spreads and the targets that name "
                     "them use those seeds")
    cal = settings.get("calibration")
    if cal:
        lines.append(f"- step budget calibrated on this machine: {_fmt(cal.get('sec_per_step'), 2)} s per "
                     f"single-network step over {cal.get('probe_steps')} probe steps -> {cal.get('steps')} steps "
                     "per arm (every seed runs the same budget)")
    if settings.get("preset") == "standard":
        lines.append("- the `standard` preset's step budget is PROVISIONAL: the plateau of `all-strong` with the "
                     "pretrained encoder is still to be measured (docs/benchmark.md)")
    for note in settings.get("notes", []):
        lines.append(f"- {note}")
    return lines


def _fraction_lines(f: str, agg: Mapping[str, Any], runs: list) -> list[str]:
    arms = agg["arms"]
    names = [a for a in ARMS if a in arms]
    lines = [f"## Strong fraction {f}", "", "### Arms (mean ± SD over seeds)", ""]
    header = ("| arm | seeds | Dice mean ± SD | 95% CI (images, seeds) | ratio to all-strong | gap closed | IoU "
              "| Dice non-empty | val Dice | median s/step | mean s/step | gamma AUROC |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for a in names:
        r = arms[a]
        lines.append(
            f"| `{a}` | {len(r['seeds'])} | {_pm(r['dice_mean'], r['dice_sd'])} | {_ci(r['dice_ci'])} "
            f"| {_fmt(r['ratio_to_all_strong'], 2)} "
            f"| {_fmt(r['gap_closed'], 2) if a not in ('strong-only', 'all-strong') else ''} "
            f"| {_fmt(r['iou_mean'])} | {_fmt(r['dice_nonempty_mean'])} | {_fmt(r['val_dice_mean'])} "
            f"| {_fmt(r['sec_per_step_median'])} | {_fmt(r['sec_per_step_mean'])} "
            f"| {_pm(r.get('gamma_auroc_mean'), r.get('gamma_auroc_sd')) if 'gamma_auroc_mean' in r else ''} |")
    lines += ["", "`fixed` holds every weak weight at DII's initial value (0.5) and `oracle` puts corrupted weak "
              "labels at 0 and clean ones at 1: `dii` - `fixed` is what ranking adds over uniform down-weighting, "
              "`oracle` the ceiling of any per-image weighting. Gap closed = (arm - `strong-only`) / "
              "(`all-strong` - `strong-only`), on the means.", ""]
    if agg["paired"]:
        lines += ["### Paired differences (Dice)", "", "| A - B | mean over seeds | 95% CI (images, seeds) | seeds |",
                  "|---|---|---|---|"]
        for p in agg["paired"]:
            lines.append(f"| `{p['a']}` - `{p['b']}` | {p['estimate']:+.3f} | {_ci(p['ci'])} | {p['n_seeds']} |")
        lines.append("")
    w = agg["weights"]
    if w["rows"]:
        kinds = w["kinds"]
        lines += ["### Weights vs baselines (AUROC, clean vs corrupted)", "",
                  "| signal | overall [95% CI] | " + " | ".join(kinds) + " |",
                  "|---|---|" + "---|" * len(kinds)]
        for name, row in w["rows"].items():
            cells = [f"{_fmt(row['by_kind'][k]['estimate'])} {_ci(row['by_kind'][k]['ci'], 2)}" for k in kinds]
            lines.append(f"| {name} | {_fmt(row['overall']['estimate'])} {_ci(row['overall']['ci'])} | "
                         + " | ".join(cells) + " |")
        missing = sorted({m for run in runs for m in ((run.get("baselines") or {}).get("missing") or [])})
        lines += ["", "Baselines need no DII: `size` = the weak label's size (box area / image area; number of "
                  "clicks for points; undefined for tags), smaller trusted more; `agreement` = the weak label's "
                  "agreement with the `strong-only` arm's prediction (best box IoU with a predicted component's "
                  "box, clicks inside, tag vs predicted presence), higher trusted more; `naive_loss` = the "
                  "sample's weak loss under the final `naive` model, lower trusted more. Directions are fixed in "
                  "advance, not fitted. Per-kind columns: clean vs the corrupted labels of that kind."
                  + (f" Not measured in some run(s): {', '.join(missing)}." if missing else ""), ""]
    lines += ["### Targets (BENCHMARK.md), judged on the paired interval", "", "| target | measured | status |",
              "|---|---|---|"]
    for t in agg["targets"]:
        lines.append(f"| {t['target']} | {t['text']} | {_status(t['met'])} |")
    lines += ["", "A Dice target is met only when the lower end of the interval of its statistic is >= 0; an AUROC "
              "target when the lower end of the AUROC's interval is above the threshold. Cost targets compare "
              "seconds per step measured in the same run (median and mean; the mean spreads DII's periodic "
              "re-scoring over all steps).", ""]
    lines += ["### Cost", "", "| arm | median s/step | mean s/step | x `naive` (median / mean) | wall s (mean) |",
              "|---|---|---|---|---|"]
    ref = arms.get("naive")
    for a in names:
        r = arms[a]
        rel = (f"{_fmt(r['sec_per_step_median'] / ref['sec_per_step_median'], 2)} / "
               f"{_fmt(r['sec_per_step_mean'] / ref['sec_per_step_mean'], 2)}") if ref else "n/a"
        lines.append(f"| `{a}` | {_fmt(r['sec_per_step_median'])} | {_fmt(r['sec_per_step_mean'])} | {rel} "
                     f"| {_fmt(r['wall_s_mean'], 0)} |")
    lines.append("")
    conv = []
    for a in CURVE_ARMS:
        for run in runs:
            c = run["arms"].get(a, {}).get("val_curve")
            if c:
                vals = [v for _, v in c]
                conv.append(f"| `{a}` | {run['split'].get('seed')} | {c[-1][0]} | {_fmt(vals[-1])} | {_fmt(max(vals))} "
                            f"| {'yes' if max(vals) - vals[-1] <= 0.02 else 'no'} |")
    if conv:
        lines += ["### Convergence", "", "| arm | seed | last step | val Dice at the end | best val Dice on the curve "
                  "| end within 0.02 of the best |", "|---|---|---|---|---|---|", *conv, "",
                  "Within 0.02 of the curve's own best is a necessary sign of a plateau, not proof: BENCHMARK.md's "
                  "budget is measured against a long run (docs/benchmark.md).", ""]
    return lines


def write_report(out: str | Path, results: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.md`` and its figures into a benchmark folder (one run, or a suite of seeds x fractions).

    Parameters
    ----------
    out : path
        A folder written by :func:`.protocol.run_benchmark` or :func:`.suite.run_suite`.
    results : dict, optional
        Unused (kept for callers that pass it); everything is read from ``out``.

    Returns
    -------
    Path
        The report's path.
    """
    from .suite import is_suite, load_runs, summarise

    out = Path(out)
    if not (out / "results.json").is_file():
        raise FileNotFoundError(f"{out / 'results.json'} not found: run `hybridseg bench` with --out {out} first")
    suite = is_suite(out)
    plan = json.loads((out / "suite.json").read_text()) if suite else None
    runs_by = load_runs(out)
    if not runs_by:
        raise FileNotFoundError(f"{out}: no finished run to report on")
    top = json.loads((out / "results.json").read_text())
    if suite and top.get("schema") == "suite":
        aggs = {f: top["fractions"][f] for f in runs_by if f in top["fractions"]}
        aggs.update({f: summarise(r) for f, r in runs_by.items() if f not in aggs})
    else:
        aggs = {f: summarise(r) for f, r in runs_by.items()}
    first_f = next(iter(runs_by))
    first = runs_by[first_f][0]
    first_dir = Path(first["settings"]["out"]) if suite else out
    if suite and not first_dir.is_dir():
        first_dir = out / Path(first["settings"]["out"]).name

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

    settings = first["settings"]
    lines = [f"# Hybrid-supervision benchmark: {Path(settings['dataset']).name}", ""]
    if settings.get("note"):
        lines += [f"> **Note:** {settings['note']}", ""]
    command = (plan or {}).get("command") or settings.get("command", "hybridseg bench ...")
    lines += ["Produced by:", "", "```", command, "```", "", "## Setup", "", *_setup_lines(first, plan, runs_by), ""]
    for f, agg in aggs.items():
        lines += _fraction_lines(f, agg, runs_by[f])
    if len(aggs) > 1:
        hyb = [a for a in ARMS if a not in ("strong-only", "all-strong") and any(a in g["arms"] for g in aggs.values())]
        lines += ["## Share of the gap closed, by strong fraction", "",
                  "| arm | " + " | ".join(f"fraction {f}" for f in aggs) + " |", "|---|" + "---|" * len(aggs)]
        for a in hyb:
            lines.append(f"| `{a}` | " + " | ".join(_fmt(g["arms"].get(a, {}).get("gap_closed"), 2)
                                                   for g in aggs.values()) + " |")
        gaps = {f: _num(g["arms"].get("all-strong", {}).get("dice_mean"))
                - _num(g["arms"].get("strong-only", {}).get("dice_mean")) for f, g in aggs.items()}
        lines += ["", "Gap: `all-strong` - `strong-only` mean Dice at that fraction: "
                  + ", ".join(f"{f}: {_fmt(v)}" for f, v in gaps.items()) + ".", ""]
    for f, runs in runs_by.items():
        for run in runs:
            for a, err in run.get("errors", {}).items():
                lines.append(f"- seed {run['split'].get('seed')}, fraction {f}: `{a}` did **not** finish: {err}")
    lines += ["## Figures", ""]
    first_label = f"seed {first['split'].get('seed')}, fraction {first_f}"
    captions = {
        "dice": "Test Dice per arm: bars the mean over seeds, whiskers the 95% interval over images and seeds, "
                "dots the seeds.",
        "gamma_hist": f"Final DII weight gamma of each weak training image, clean vs corrupted ({first_label}).",
        "gamma_history": f"gamma over training (faint: single images; bold: clean and corrupted means; "
                         f"{first_label}).",
        "weights": "AUROC (clean vs corrupted weak labels) of the learned weights (blue) and of the baselines that "
                   "need no DII (grey), with 95% intervals over weak samples and seeds; dotted: chance.",
        "convergence": "Validation Dice over training of `strong-only` and `all-strong` (faint: seeds; bold: mean).",
        "grid": f"Test images (seeded pick, {first_label}): truth in green, each arm's prediction in orange.",
    }
    for key, fname in figs.items():
        lines += [f"![{key}]({fname})", "", captions[key], ""]
    if suite:
        lines += ["## Runs", "", "Each run folder holds its own `report.md`, `results.json` and the trainer's run "
                  "folders:", ""]
        for run in plan["runs"]:
            done = (out / run["folder"] / "results.json").is_file()
            lines.append(f"- [`{run['folder']}`]({run['folder']}/report.md): seed {run['seed']}, fraction "
                         f"{run['fraction']:g}, arms {', '.join(run['arms'])}" + ("" if done else " (not finished)"))
        lines.append("")
    notes = sorted({(a, n) for runs in runs_by.values() for run in runs for a in run["arms"]
                    for n in run["arms"][a].get("notes", [])})
    if notes:
        lines += ["## Notices from the runs", ""] + [f"- `{a}`: {n}" for a, n in notes] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path
