"""Several seeds and strong fractions: one benchmark run each, then a summary over them.

Layout of a suite folder ``out``::

    suite.json                    seeds, fractions, which arms each run got, the command
    seed<S>-sf<F>/                one full benchmark run (see :mod:`.protocol`), resumable on its own
    results.json                  per fraction: arm summaries, paired differences, weight quality, targets
    report.md, *.png              :mod:`.report`

Every arm runs at every seed; split, label budget, corruption and the
networks' initialisation follow the seed (they all take it from
``BenchSettings.seed``). The expensive arms (:data:`.presets.EXPENSIVE_ARMS`)
may run on the first ``expensive_seeds`` seeds only; the report says so. All
runs share one step budget: when it is calibrated (``quick``), the first run
calibrates and the others take its steps.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from napari_hybridseg.core.fsio import atomic_write_json

from .presets import EXPENSIVE_ARMS, preset_spec
from .protocol import Backend, BenchSettings, Prepared, run_benchmark

__all__ = ["collect_suite", "fraction_key", "is_suite", "load_runs", "run_folder", "run_suite", "summarise"]


def fraction_key(fraction: float) -> str:
    return f"{float(fraction):g}"


def run_folder(out: Path, seed: int, fraction: float) -> Path:
    return Path(out) / f"seed{int(seed)}-sf{fraction_key(fraction)}"


def is_suite(out: Path) -> bool:
    return (Path(out) / "suite.json").is_file()


def plan_arms(arms: Sequence[str], seed_index: int, expensive_seeds: int | None) -> tuple[str, ...]:
    """The arms of the ``seed_index``-th seed: all, less the expensive ones beyond ``expensive_seeds``."""
    if expensive_seeds is not None and seed_index >= expensive_seeds:
        return tuple(a for a in arms if a not in EXPENSIVE_ARMS)
    return tuple(arms)


def run_suite(
    settings: BenchSettings,
    seeds: Sequence[int],
    fractions: Sequence[float],
    *,
    expensive_seeds: int | None = -1,
    backend: Backend | None = None,
    prepared_for: Callable[[BenchSettings], Prepared] | None = None,
    on_report: Callable[[str, Any], None] | None = None,
    log: Callable[[str], None] = print,
    command_line: str | None = None,
    run_reports: bool = True,
) -> dict[str, Any]:
    """Run ``settings`` at every seed and strong fraction into ``settings.out``; return the suite's results.

    ``expensive_seeds``: how many seeds the expensive arms run (None: all;
    the default -1: the preset's). ``prepared_for(run_settings)`` gives a
    run's data (tests); default: each run imports and prepares the dataset
    itself (import + decoding take seconds; the split needs the seed anyway).
    ``run_reports``: also write each run folder's own ``report.md``.
    """
    if not seeds or not fractions:
        raise ValueError("give at least one seed and one strong fraction")
    if len(set(seeds)) != len(seeds) or len(set(fractions)) != len(fractions):
        raise ValueError(f"seeds and fractions must not repeat (got seeds {list(seeds)}, fractions {list(fractions)})")
    if expensive_seeds == -1:
        expensive_seeds = preset_spec(settings.preset)["expensive_seeds"]
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    plan = {"seeds": [int(s) for s in seeds], "fractions": [float(f) for f in fractions],
            "expensive_seeds": expensive_seeds, "arms": list(settings.arms), "preset": settings.preset,
            "command": command_line, "runs": []}
    steps = settings.steps
    for fraction in fractions:
        for j, seed in enumerate(seeds):
            folder = run_folder(out, seed, fraction)
            arms = plan_arms(settings.arms, j, expensive_seeds)
            plan["runs"].append({"seed": int(seed), "fraction": float(fraction), "folder": folder.name,
                                 "arms": list(arms)})
    atomic_write_json(out / "suite.json", plan)
    for run in plan["runs"]:
        folder = out / run["folder"]
        # steps None: the first run calibrates (or, resumed, reads the budget it recorded)
        sub = dataclasses.replace(settings, seed=run["seed"], strong_fraction=run["fraction"], out=str(folder),
                                  arms=tuple(run["arms"]), steps=steps)
        log(f"== seed {run['seed']}, strong fraction {run['fraction']:g} -> {folder}")
        prepared = prepared_for(sub) if prepared_for is not None else None
        res = run_benchmark(sub, backend=backend, prepared=prepared, on_report=on_report, log=log,
                            command_line=command_line)
        if steps is None:  # the first run's (calibrated) budget is every later run's
            steps = int(res["settings"].get("steps_used") or res["settings"]["base_config"]["steps"])
        if run_reports and res.get("arms"):
            from .report import write_report

            write_report(folder)
    results = collect_suite(out)
    atomic_write_json(out / "results.json", results)
    return results


def load_runs(out: Path) -> dict[str, list[dict[str, Any]]]:
    """The finished runs' results by strong fraction (suite folder), or the one run of a plain folder."""
    out = Path(out)
    if not is_suite(out):
        path = out / "results.json"
        if not path.is_file():
            return {}
        res = json.loads(path.read_text())
        if res.get("schema") == "suite":
            return {}
        return {fraction_key(res["settings"]["strong_fraction"]): [res]}
    plan = json.loads((out / "suite.json").read_text())
    by: dict[str, list[dict[str, Any]]] = {}
    for run in plan["runs"]:
        path = out / run["folder"] / "results.json"
        if path.is_file():
            by.setdefault(fraction_key(run["fraction"]), []).append(json.loads(path.read_text()))
    return by


def summarise(runs: Sequence[dict[str, Any]], *, n_boot: int = 2000) -> dict[str, Any]:
    """Arm summaries, paired differences, weight quality and targets over the seeds of one fraction."""
    from .aggregate import arm_summary, paired_differences, weight_quality
    from .targets import check_targets

    quality = weight_quality(runs)
    quality.pop("sources")
    return {"seeds": [r["split"].get("seed") for r in runs], "arms": arm_summary(runs, n_boot=n_boot),
            "paired": paired_differences(runs, n_boot=n_boot), "weights": quality,
            "targets": check_targets(runs, n_boot=n_boot)}


def collect_suite(out: Path) -> dict[str, Any]:
    """``results.json`` of a suite: the plan and, per fraction, :func:`summarise` of its finished runs."""
    out = Path(out)
    plan = json.loads((out / "suite.json").read_text())
    by = load_runs(out)
    return {"schema": "suite", "suite": plan,
            "fractions": {f: {**summarise(runs), "runs": [r["settings"]["out"] for r in runs]}
                          for f, runs in by.items()}}
