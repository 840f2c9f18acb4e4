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

from .protocol import ARMS, DII_ARMS, _atomic_write_text, arm_file

__all__ = ["TARGETS", "check_targets", "write_report"]

#: BENCHMARK.md targets: (key, text)
TARGETS = (
    ("full_vs_all_strong", "`full` Dice >= 0.97 x `all-strong` Dice"),
    ("full_vs_naive", "`full` Dice >= `naive` Dice + 0.03"),
    ("full_vs_strong_only", "`full` Dice >= `strong-only` Dice + 0.05"),
    ("gamma_auroc", "gamma AUROC (clean vs corrupted) >= 0.90"),
    ("dii_cost", "`dii` median s/step <= 1.10 x `naive`"),
    ("full_cost", "`full` median s/step <= 1.5 x `dii+dcr`"),
)


def _num(x: Any) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        return float("nan")
    return v


def _fmt(x: Any, digits: int = 3) -> str:
    v = _num(x)
    return "n/a" if math.isnan(v) else f"{v:.{digits}f}"


def check_targets(arms: Mapping[str, Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Each BENCHMARK.md target with its measured figure and whether it is met.

    ``met`` is ``None`` where an arm the target needs did not run (or the
    figure is undefined), so "not measured" never reads as "met".
    """

    def get(arm: str, key: str) -> float:
        return _num(arms.get(arm, {}).get(key))

    out = []
    full, allst, naive, so = get("full", "dice"), get("all-strong", "dice"), get("naive", "dice"), \
        get("strong-only", "dice")
    ratio = full / allst if allst > 0 else float("nan")
    out.append({"key": "full_vs_all_strong", "measured": ratio, "threshold": 0.97,
                "text": f"{_fmt(full)} / {_fmt(allst)} = {_fmt(ratio)} x", "met": _cmp(ratio, 0.97)})
    gain = full - naive
    out.append({"key": "full_vs_naive", "measured": gain, "threshold": 0.03,
                "text": f"{_fmt(full)} - {_fmt(naive)} = {gain:+.3f}" if not math.isnan(gain) else "n/a",
                "met": _cmp(gain, 0.03)})
    gain = full - so
    out.append({"key": "full_vs_strong_only", "measured": gain, "threshold": 0.05,
                "text": f"{_fmt(full)} - {_fmt(so)} = {gain:+.3f}" if not math.isnan(gain) else "n/a",
                "met": _cmp(gain, 0.05)})
    # gamma quality of the full method; the dii arm stands in when full did not run
    src = "full" if not math.isnan(get("full", "gamma_auroc")) else "dii"
    au = get(src, "gamma_auroc")
    out.append({"key": "gamma_auroc", "measured": au, "threshold": 0.90,
                "text": f"{_fmt(au)} (`{src}`)", "met": _cmp(au, 0.90)})
    for key, a, b, limit in (("dii_cost", "dii", "naive", 1.10), ("full_cost", "full", "dii+dcr", 1.5)):
        sa, sb = get(a, "sec_per_step"), get(b, "sec_per_step")
        r = sa / sb if sb > 0 else float("nan")
        ma, mb = get(a, "sec_per_step_mean"), get(b, "sec_per_step_mean")
        rm = ma / mb if mb > 0 else float("nan")
        out.append({"key": key, "measured": r, "threshold": limit, "measured_mean": rm,
                    "text": f"{_fmt(sa)} / {_fmt(sb)} s = {_fmt(r, 2)} x (mean, amortised: {_fmt(rm, 2)} x)",
                    "met": None if math.isnan(r) else bool(r <= limit)})
    texts = dict(TARGETS)
    for t in out:
        t["target"] = texts[t["key"]]
    return out


def _cmp(value: float, threshold: float) -> bool | None:
    return None if math.isnan(value) else bool(value >= threshold)


# -- figures ------------------------------------------------------------------
def _plt():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _fig_dice(arms: Mapping[str, Mapping], path: Path) -> None:
    plt = _plt()
    names = [a for a in ARMS if a in arms]
    fig, ax = plt.subplots(figsize=(1.2 * len(names) + 2, 3.2))
    d = [_num(arms[a]["dice"]) for a in names]
    lo = [d[i] - _num(arms[a]["dice_ci"][0]) for i, a in enumerate(names)]
    hi = [_num(arms[a]["dice_ci"][1]) - d[i] for i, a in enumerate(names)]
    colors = ["#1f77b4" if a not in ("all-strong", "strong-only") else "#7f7f7f" for a in names]
    ax.bar(range(len(names)), d, color=colors, alpha=0.8)
    ax.errorbar(range(len(names)), d, yerr=[lo, hi], fmt="none", ecolor="k", capsize=4)
    for i, v in enumerate(d):  # above the interval, so the figure does not hide behind the error bar
        top = v + (hi[i] if not math.isnan(hi[i]) else 0.0)
        ax.text(i, (0.0 if math.isnan(top) else top) + 0.02, _fmt(v), ha="center", fontsize=8)
    ax.set_xticks(range(len(names)), names, rotation=20)
    ax.set_ylabel("test Dice (mean, 95% bootstrap CI)")
    ax.set_ylim(0, 1.1)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


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


def write_report(out: str | Path, results: Mapping[str, Any] | None = None) -> Path:
    """Write ``report.md`` and its figures into the benchmark folder ``out``.

    Parameters
    ----------
    out : path
        A folder written by :func:`.protocol.run_benchmark`.
    results : dict, optional
        Its ``results.json``; read from ``out`` if not given.

    Returns
    -------
    Path
        The report's path.
    """
    out = Path(out)
    if results is None:
        path = out / "results.json"
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: run `hybridseg bench` with --out {out} first")
        results = json.loads(path.read_text())
    settings, split, arms = results["settings"], results["split"], results["arms"]
    names = [a for a in ARMS if a in arms]
    corrupted = set(split.get("corrupted", {}))
    figs = {}
    if names:
        _fig_dice(arms, out / "dice_per_arm.png")
        figs["dice"] = "dice_per_arm.png"
    if _fig_gamma_hist(arms, corrupted, out / "gamma_hist.png"):
        figs["gamma_hist"] = "gamma_hist.png"
    if _fig_gamma_history(_load_histories(out, names), corrupted, out / "gamma_history.png"):
        figs["gamma_history"] = "gamma_history.png"
    if _fig_grid(out, list(split.get("grid", [])), names, out / "test_grid.png"):
        figs["grid"] = "test_grid.png"

    base = settings.get("base_config", {})
    model = base.get("model", {})
    counts = split.get("counts", {})
    versions = settings.get("versions", {})
    device = next((arms[a].get("device") for a in names if arms[a].get("device")), "?")
    lines = [f"# Hybrid-supervision benchmark: {Path(settings['dataset']).name}", ""]
    if settings.get("note"):
        lines += [f"> **Note:** {settings['note']}", ""]
    lines += [
        "Produced by:", "", "```", settings.get("command", "hybridseg bench ..."), "```", "",
        "## Setup", "",
        f"- dataset `{settings['dataset']}` (layout `{settings['layout']}`), "
        f"{counts.get('train', 0) + counts.get('val', 0) + counts.get('test', 0)} images"
        + (f" (seeded subset, --limit {settings['limit']})" if settings.get("limit") else ""),
        f"- split (seed {split.get('seed')}, group-aware): train {counts.get('train')}, "
        f"validation {counts.get('val')}, test {counts.get('test')}; {counts.get('grouped_ids', 0)} images share "
        "a group with another image and were kept in one part",
        f"- label budget in train: {counts.get('strong')} strong (fraction {settings['strong_fraction']}), "
        f"{counts.get('weak')} weak `{settings['weak']}`, of which {counts.get('corrupted')} corrupted "
        f"(noise {settings['noise']})",
        f"- every arm: {model.get('arch')} / {model.get('encoder')} at {model.get('input_size')} px, "
        f"{base.get('steps')} steps of batch {base.get('batch_size')}, seed {settings['seed']}, "
        f"preset `{settings['preset']}`",
        f"- device: {device}; torch {versions.get('torch')}, segmentation-models-pytorch "
        f"{versions.get('segmentation-models-pytorch')}, napari-hybridseg {versions.get('napari-hybridseg')}, "
        f"{versions.get('processor')} x {versions.get('cpu_count')} cores",
        "- Dice and IoU: mean over test images, each scored at its original resolution; an image with an "
        "empty truth scores 1 if the prediction is empty too (\"Dice non-empty\" leaves those out)",
    ]
    cal = settings.get("calibration")
    if cal:
        lines.append(f"- step budget calibrated on this machine: {_fmt(cal.get('sec_per_step'), 2)} s per "
                     f"single-network step over {cal.get('probe_steps')} probe steps -> {cal.get('steps')} steps "
                     f"per arm to fit {_fmt(_num(cal.get('budget_s')) / 60, 1)} min")
    for note in settings.get("notes", []):
        lines.append(f"- {note}")
    lines += ["", "## Results", ""]
    allst = _num(arms.get("all-strong", {}).get("dice"))
    header = ("| arm | Dice [95% CI] | ratio to all-strong | IoU | Dice non-empty | val Dice | median s/step "
              "| mean s/step | wall s | peak MB | gamma AUROC | gamma clean / corrupted | pixel w wrong/right |")
    lines += [header, "|" + "---|" * (header.count("|") - 1)]
    for a in names:
        r = arms[a]
        ci = r.get("dice_ci", [float("nan")] * 2)
        ratio = _num(r["dice"]) / allst if allst > 0 else float("nan")
        gq = (f"{_fmt(r.get('gamma_mean_clean'), 2)} / {_fmt(r.get('gamma_mean_corrupted'), 2)}"
              if "gamma_auroc" in r else "")
        lines.append(
            f"| `{a}` | {_fmt(r['dice'])} [{_fmt(ci[0])}, {_fmt(ci[1])}] | {_fmt(ratio, 2)} | {_fmt(r.get('iou'))} "
            f"| {_fmt(r.get('dice_nonempty'))} | {_fmt(r.get('val_dice'))} | {_fmt(r.get('sec_per_step'))} "
            f"| {_fmt(r.get('sec_per_step_mean'))} | {_fmt(r.get('wall_s'), 0)} | {_fmt(r.get('peak_mem_mb'), 0)} "
            f"| {_fmt(r.get('gamma_auroc')) if 'gamma_auroc' in r else ''} | {gq} "
            f"| {_fmt(r.get('pixel_weight_wrong_vs_right')) if 'pixel_weight_wrong_vs_right' in r else ''} |")
    lines.append("")
    for a, err in results.get("errors", {}).items():
        lines.append(f"- `{a}` did **not** finish: {err}")
    if results.get("errors"):
        lines.append("")
    if "full" in arms:
        for other in ("naive", "strong-only"):
            if other in arms:
                g = _num(arms["full"]["dice"]) - _num(arms[other]["dice"])
                lines.append(f"- gain of `full` over `{other}`: {g:+.3f} Dice")
        lines.append("")
    by_kind = {a: arms[a].get("gamma_mean_by_corruption") for a in names if arms[a].get("gamma_mean_by_corruption")}
    if by_kind:
        lines.append("Mean final gamma by corruption kind: " + "; ".join(
            f"`{a}`: " + ", ".join(f"{k} {_fmt(v, 2)}" for k, v in kinds.items()) for a, kinds in by_kind.items()))
        lines.append("")

    lines += ["## Targets (BENCHMARK.md)", "", "| target | measured | status |", "|---|---|---|"]
    for t in check_targets(arms):
        status = "not measured" if t["met"] is None else ("**met**" if t["met"] else "**not met**")
        lines.append(f"| {t['target']} | {t['text']} | {status} |")
    lines += ["", "Cost targets are judged on the median seconds per step, as BENCHMARK.md asks; the mean "
              "(which spreads DII's periodic update over all steps) is shown beside it.", ""]

    lines += ["## Figures", ""]
    captions = {
        "dice": "Test Dice per arm; bars are 95% bootstrap intervals of the mean over test images.",
        "gamma_hist": "Final DII weight gamma of each weak training image, clean vs deliberately corrupted.",
        "gamma_history": "gamma over training (faint: single images; bold: means of clean and corrupted).",
        "grid": "Test images (seeded pick): truth in green, each arm's prediction in orange with the truth contour.",
    }
    for key, fname in figs.items():
        lines += [f"![{key}]({fname})", "", captions[key], ""]
    notes = [(a, n) for a in names for n in arms[a].get("notes", [])]
    if notes:
        lines += ["## Notices from the runs", ""] + [f"- `{a}`: {n}" for a, n in notes] + [""]
    path = out / "report.md"
    _atomic_write_text(path, "\n".join(lines))
    return path
