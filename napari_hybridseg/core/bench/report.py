"""The benchmark report: ``report.md`` and its figures, from a benchmark folder.

Everything is redrawn from the files :func:`.protocol.run_benchmark` writes
(``results.json``, ``arms/*.json``, ``grid/*.npz``), so a report can be
regenerated without the dataset or a model. The figures are :mod:`.figures`
(matplotlib's Agg backend: no display, no Qt).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from napari_hybridseg.core.fsio import atomic_write_text

from .arms import ARMS, CURVE_ARMS
from .figures import _fmt, _num, draw_figures

__all__ = ["write_report"]


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
        lines.append("- the `standard` preset's step budget is what fits 90 minutes per dataset on a 2-core CPU, "
                     "not the plateau of `all-strong`, which needs several times more (measured: docs/benchmark.md, "
                     "\"The standard preset\"): compare arms within one report")
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
    pix = []
    for run in runs:
        for a, r in run["arms"].items():
            t = r.get("pixel_weight_training")
            if t:
                pix.append(f"| `{a}` | {run['split'].get('seed')} | {_fmt(t.get('wrong_vs_right'), 2)} "
                           f"| {_fmt((t.get('init') or {}).get('wrong_vs_right'), 2)} "
                           f"| {_fmt((t.get('own') or {}).get('wrong_vs_right'), 2)} "
                           f"| {_fmt(r.get('pixel_weight_wrong_vs_right'), 2)} | {t.get('steps')} |")
    if pix:
        lines += ["### Pixel weights against the truth", "",
                  "| arm | seed | wrong / right, training weights | on y~ | on y^ | preview maps (last step) "
                  "| steps measured |", "|---|---|---|---|---|---|---|", *pix, "",
                  "Mean weight the loss put on a wrong target pixel over that on a right one, summed over every "
                  "step of the run (competing pixels only; < 1: wrong pixels are down-weighted). The preview "
                  "column is the older measure on a few maps after the last step.", ""]
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

    figs = draw_figures(out, aggs, runs_by, first, first_dir)
    settings = first["settings"]
    lines = [f"# Hybrid-supervision benchmark: {Path(settings['dataset']).name}", ""]
    if settings.get("note"):
        lines += [f"> **Note:** {settings['note']}", ""]
    command = (plan or {}).get("command") or settings.get("command", "hybridseg bench ...")
    lines += ["Produced by:", "", "```", command, "```", "", "## Setup", "", *_setup_lines(first, plan, runs_by), ""]
    for f, agg in aggs.items():
        lines += _fraction_lines(f, agg, runs_by[f])
    if len(aggs) > 1:
        lines += _gap_by_fraction_lines(aggs)
    for f, runs in runs_by.items():
        for run in runs:
            for a, err in run.get("errors", {}).items():
                lines.append(f"- seed {run['split'].get('seed')}, fraction {f}: `{a}` did **not** finish: {err}")
    lines += _figure_lines(figs, f"seed {first['split'].get('seed')}, fraction {first_f}")
    if suite:
        lines += _suite_run_lines(out, plan)
    notes = sorted({(a, n) for runs in runs_by.values() for run in runs for a in run["arms"]
                    for n in run["arms"][a].get("notes", [])})
    if notes:
        lines += ["## Notices from the runs", ""] + [f"- `{a}`: {n}" for a, n in notes] + [""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(lines))
    return path


def _gap_by_fraction_lines(aggs: Mapping[str, Any]) -> list[str]:
    hyb = [a for a in ARMS if a not in ("strong-only", "all-strong") and any(a in g["arms"] for g in aggs.values())]
    lines = ["## Share of the gap closed, by strong fraction", "",
             "| arm | " + " | ".join(f"fraction {f}" for f in aggs) + " |", "|---|" + "---|" * len(aggs)]
    for a in hyb:
        lines.append(f"| `{a}` | " + " | ".join(_fmt(g["arms"].get(a, {}).get("gap_closed"), 2)
                                               for g in aggs.values()) + " |")
    gaps = {f: _num(g["arms"].get("all-strong", {}).get("dice_mean"))
            - _num(g["arms"].get("strong-only", {}).get("dice_mean")) for f, g in aggs.items()}
    lines += ["", "Gap: `all-strong` - `strong-only` mean Dice at that fraction: "
              + ", ".join(f"{f}: {_fmt(v)}" for f, v in gaps.items()) + ".", ""]
    return lines


def _figure_lines(figs: Mapping[str, str], first_label: str) -> list[str]:
    lines = ["## Figures", ""]
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
    return lines


def _suite_run_lines(out: Path, plan: Mapping[str, Any]) -> list[str]:
    lines = ["## Runs", "", "Each run folder holds its own `report.md`, `results.json` and the trainer's run "
             "folders:", ""]
    for run in plan["runs"]:
        done = (out / run["folder"] / "results.json").is_file()
        lines.append(f"- [`{run['folder']}`]({run['folder']}/report.md): seed {run['seed']}, fraction "
                     f"{run['fraction']:g}, arms {', '.join(run['arms'])}" + ("" if done else " (not finished)"))
    lines.append("")
    return lines
