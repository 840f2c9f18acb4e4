"""The hybrid-supervision benchmark protocol (``../shared/BENCHMARK.md``).

One run: import a fully labelled dataset, split it (seeded, group-aware,
70/10/20), keep masks for ``strong_fraction`` of the training images and turn
the rest weak with a recorded fraction ``noise`` corrupted, then train the eight
arms with the same architecture, input size, step budget and seed and
evaluate each on the test images at their original resolution.

Layout of the output folder ``out``::

    settings.json        what was asked for (a rerun must match it to resume)
    split.json           ids per part, strong / weak / corrupted ids, groups
    arms/<arm>.json      one finished arm (written atomically: its presence means "done")
    runs/<arm>/          the trainer's run folder (checkpoint, run.json, gamma.json)
    baselines.json       the weights' baselines (:mod:`.baselines`), once strong-only / naive finished
    grid/                thumbnails of a few test images, truth and each arm's prediction
    results.json         everything above in one file (rewritten after every arm)
    report.md, *.png     written by :mod:`.report`

Training and prediction go through a :class:`Backend` (the project's trainer
and predictor by default), so the protocol itself is testable in seconds with
a fake one. Qt-free and napari-free; torch is imported only by the backend.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.data.collection import Collection
from napari_hybridseg.core.fsio import atomic_write_json, atomic_write_text
from napari_hybridseg.core.training.config import TrainConfig

from .arm import ArmData, run_arm
from .arms import ARMS, CONTROL_ARMS, CURVE_ARMS, DII_ARMS, arm_config
from .backend import Backend, default_backend
from .calibrate import calibrate_steps
from .data import Prepared, _copy_collection, arm_collection, prepare, prepare_collection, resized_sample
from .evaluate import _predict_all, evaluate_masks, gamma_quality, pixel_weight_ratio
from .presets import COST_FACTOR
from .results import (
    _save_grid,
    _save_grid_predictions,
    _versions,
    arm_file,
    collect_results,
    original_train_scale,
)
from .settings import BENCH_BUDGET_MIN, BENCH_PRESETS, BenchSettings

__all__ = [
    "ARMS",
    "BENCH_PRESETS",
    "CONTROL_ARMS",
    "CURVE_ARMS",
    "DII_ARMS",
    "ArmData",
    "Backend",
    "BenchSettings",
    "Prepared",
    "arm_collection",
    "arm_config",
    "arm_file",
    "calibrate_steps",
    "collect_results",
    "default_backend",
    "evaluate_masks",
    "gamma_quality",
    "pixel_weight_ratio",
    "prepare",
    "prepare_collection",
    "resized_sample",
    "run_arm",
    "run_benchmark",
]


def run_benchmark(
    settings: BenchSettings,
    *,
    backend: Backend | None = None,
    prepared: Prepared | None = None,
    on_report: Callable[[str, Any], None] | None = None,
    log: Callable[[str], None] = print,
    command_line: str | None = None,
) -> dict[str, Any]:
    """Run the protocol; skip arms already finished in ``settings.out``.

    Parameters
    ----------
    settings : BenchSettings
    backend : Backend, optional
        Trainer and predictor; default the project's (:func:`default_backend`).
    prepared : Prepared, optional
        Data already prepared (tests); default :func:`prepare` of ``settings``.
    on_report : callable, optional
        ``on_report(arm, report)`` for every trainer report (progress bars).
    log : callable
        One-line messages.
    command_line : str, optional
        Recorded in the settings, so a reader can rerun it.

    Returns
    -------
    dict
        The content of ``results.json``.
    """
    t_begin = time.perf_counter()
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    settings_path = out / "settings.json"
    fp = settings.fingerprint()
    old = _recorded_settings(settings, settings_path, fp)
    done_arms = [a for a in settings.arms if arm_file(out, a).is_file()]
    todo = [a for a in settings.arms if a not in done_arms]
    for a in done_arms:
        log(f"{a}: already finished in {arm_file(out, a)} (skipped)")
    if not todo and settings_path.is_file() and (out / "split.json").is_file():
        results = collect_results(out)
        atomic_write_json(out / "results.json", results)
        return results

    if prepared is None:
        prepared = prepare(settings, log=log)
    if backend is None:
        values = [0] + sorted(c.value for c in prepared.collection.classes)
        backend = default_backend(settings.device, values)
    base = _base_config(settings, prepared)
    split_path = out / "split.json"
    record = prepared.split_record()
    _check_split(out, split_path, record)
    train = _training_set(settings, prepared, base, log)
    if settings.pre_resize:  # run.json records the scale of the original images, not 1:1 (Backend.train_scale)
        backend.train_scale = original_train_scale(train, int(base.model.input_size))
    base, calibration = _step_budget(settings, old, base, train, prepared, backend, todo, t_begin,
                                     settings_path, log)

    grid_ids = _grid_ids(settings, prepared)
    record["grid"] = grid_ids
    atomic_write_json(split_path, record)
    atomic_write_json(settings_path, {**settings.to_dict(), "fingerprint": fp, "base_config": base.to_dict(),
                               "backend": backend.name, "versions": _versions(),
                               "command": command_line or " ".join(sys.argv),
                               "prep_s": prepared.prep_s, "notes": prepared.notes,
                               "steps_used": base.steps, "calibration": calibration})
    _save_grid(out, prepared, grid_ids)
    test = {i: prepared.collection[i] for i in prepared.split.test}
    val = {i: prepared.collection[i] for i in prepared.split.val}
    for arm in todo:
        log(f"{arm}: training ({base.steps} steps)")
        data = ArmData(train=arm_collection(train, arm), test=test, val=val,
                       corrupted=prepared.corrupted, grid_ids=grid_ids)
        result = _run_one_arm(arm, data, settings, prepared, base, backend, out, on_report, log)
        if result is None:
            continue
        rest = todo[todo.index(arm) + 1:]
        if rest and result["steps"]:
            unit = result["train_s"] / result["steps"] / COST_FACTOR[arm]
            eta = sum(unit * COST_FACTOR[a] * base.steps + result["eval_s"] for a in rest)
            log(f"projected time for the remaining {len(rest)} arm(s): ~{eta / 60:.0f} min")
    _update_baselines(out, train, prepared, base, backend, log)
    results = collect_results(out)
    atomic_write_json(out / "results.json", results)
    return results


def _recorded_settings(settings: BenchSettings, settings_path: Path, fp: str) -> dict[str, Any]:
    """The settings an earlier run recorded in ``settings_path`` ({} if none); ValueError if they differ."""
    old: dict[str, Any] = {}
    if settings_path.is_file():
        old = json.loads(settings_path.read_text())
        if old.get("fingerprint") != fp:
            keys = [k for k, v in settings.to_dict().items()
                    if k not in ("out", "arms", "grid_images", "note") and old.get(k) != v and k != "dataset"]
            raise ValueError(
                f"{settings_path.parent} holds a benchmark run with different settings "
                f"({', '.join(keys) or 'dataset'} differ); use another --out, or delete the folder to start over")
    return old


def _base_config(settings: BenchSettings, prepared: Prepared) -> TrainConfig:
    """The settings' base config with the dataset's classes; the tag head's classes are left to the trainer,
    which derives them from each arm's own collection (``config.model_classes``: tags train the image-level
    head, METHOD.md section 3; ``strong-only`` and ``all-strong`` have no tags and no head)."""
    base = settings.base_config()
    n_fg = prepared.collection.num_classes
    return base.replace(model=base.model.replace(classes=n_fg + 1))


def _check_split(out: Path, split_path: Path, record: dict[str, Any]) -> None:
    if split_path.is_file():
        old_split = json.loads(split_path.read_text())
        if any(old_split.get(k) != record.get(k) for k in ("train", "val", "test", "strong", "weak", "corrupted")):
            raise RuntimeError(f"{out}: the split or the label budget came out differently from the recorded one; "
                               "the finished arms cannot be reused: use another --out")


def _training_set(settings: BenchSettings, prepared: Prepared, base: TrainConfig,
                  log: Callable[[str], None]) -> Collection:
    """The hybrid training set every arm starts from; with ``pre_resize``, resized once to the training size."""
    train = prepared.train
    if settings.pre_resize:
        t_rs = time.perf_counter()
        size = int(base.model.input_size)
        train = _copy_collection(train, [resized_sample(s, size) for s in train])
        for sid in prepared.split.train:  # the full-size pixels are not needed any more (can be re-read)
            if prepared.collection[sid].image_path is not None:
                prepared.collection[sid].image = None
        log(f"resized {len(train)} training images to {size} px once for all arms "
            f"({time.perf_counter() - t_rs:.1f} s)")
    return train


def _step_budget(settings: BenchSettings, old: dict[str, Any], base: TrainConfig, train: Collection,
                 prepared: Prepared, backend: Backend, todo: list[str], t_begin: float, settings_path: Path,
                 log: Callable[[str], None]) -> tuple[TrainConfig, dict[str, Any] | None]:
    """The step budget: given, recorded by an earlier (interrupted) run, or calibrated to the time budget."""
    calibration = old.get("calibration")
    budget_min = settings.budget_min if settings.budget_min is not None else BENCH_BUDGET_MIN.get(settings.preset)
    if settings.steps is None and old.get("steps_used"):
        base = base.replace(steps=int(old["steps_used"]))
        log(f"steps per arm: {base.steps} (as recorded in {settings_path})")
    elif settings.steps is None and budget_min:
        left = budget_min * 60.0 - (time.perf_counter() - t_begin)  # import and decoding already spent
        steps, calibration = calibrate_steps(
            train, base, backend, todo, budget_s=max(60.0, left), run_dir=None,
            n_eval=len(prepared.split.test) + len(prepared.split.val), log=log)
        base = base.replace(steps=steps)
    return base, calibration


def _grid_ids(settings: BenchSettings, prepared: Prepared) -> list[str]:
    """The test images shown in the prediction grid (seeded)."""
    rng = np.random.default_rng(settings.seed)
    test_sorted = sorted(prepared.split.test)
    return sorted(rng.choice(test_sorted, size=min(settings.grid_images, len(test_sorted)), replace=False).tolist())


def _run_one_arm(arm: str, data: ArmData, settings: BenchSettings, prepared: Prepared, base: TrainConfig,
                 backend: Backend, out: Path, on_report: Callable[[str, Any], None] | None,
                 log: Callable[[str], None]) -> dict[str, Any] | None:
    """Train and score one arm and write its files; None (and an error file) if the engine cannot run it."""
    try:
        cfg = arm_config(base, arm, weak_ids=prepared.weak, corrupted=prepared.corrupted)
        curve = arm in CURVE_ARMS and settings.curve_points > 0 and bool(data.val)
        if curve:  # a checkpoint every steps / curve_points steps, each scored on the validation images
            cfg = cfg.replace(checkpoint_every=max(1, base.steps // settings.curve_points))
        result, grid = run_arm(arm, data, cfg, out / "runs" / arm.replace("+", "_"), backend,
                               on_report=on_report, n_boot=settings.n_boot, seed=settings.seed, curve=curve)
    except (ValueError, RuntimeError) as exc:
        # one arm the engine cannot run yet must not cost the others; rerunning retries it
        atomic_write_text(out / "arms" / f"{arm.replace('+', '_')}.error.txt", f"{exc}\n")
        log(f"{arm}: FAILED: {exc}")
        return None
    (out / "arms" / f"{arm.replace('+', '_')}.error.txt").unlink(missing_ok=True)
    _save_grid_predictions(out, arm, grid)
    atomic_write_json(arm_file(out, arm), result)
    log(f"{arm}: Dice {result['dice']:.3f} [{result['dice_ci'][0]:.3f}, {result['dice_ci'][1]:.3f}], "
        f"{result['sec_per_step']:.3f} s/step, {result['wall_s']:.0f} s -> {arm_file(out, arm)}")
    atomic_write_json(out / "results.json", collect_results(out, targets=False))
    return result


def _update_baselines(out: Path, train: Collection, prepared: Prepared, base: TrainConfig, backend: Backend,
                      log: Callable[[str], None]) -> None:
    """(Re)write ``baselines.json`` when a signal it lacks can now be measured (strong-only / naive finished)."""
    from .baselines import measure_baselines

    path = out / "baselines.json"
    old = json.loads(path.read_text()) if path.is_file() else None
    so_dir, naive_dir = out / "runs" / "strong-only", out / "runs" / "naive"
    can_agree = arm_file(out, "strong-only").is_file() and so_dir.is_dir()
    can_loss = arm_file(out, "naive").is_file() and naive_dir.is_dir() and backend.sample_losses is not None
    if old is not None and not (("agreement" in old["missing"] and can_agree)
                                or ("naive_loss" in old["missing"] and can_loss)):
        return
    if not prepared.weak:
        return
    t0 = time.perf_counter()
    losses = None
    if can_loss:
        try:
            losses = backend.sample_losses(naive_dir, train, prepared.weak, arm_config(base, "naive"))
        except (OSError, ValueError, RuntimeError) as exc:
            log(f"baselines: the naive arm's per-sample losses failed ({exc}); naive_loss not measured")
    predictor = backend.load_predictor(so_dir) if can_agree else None
    rec = measure_baselines(train, prepared.weak, prepared.corrupted, strong_only_predictor=predictor,
                            naive_losses=losses, predict_all=_predict_all)
    rec["seconds"] = time.perf_counter() - t0
    atomic_write_json(path, rec)
    log("baselines (AUROC clean vs corrupted): " + ", ".join(
        f"{k} {v['auroc']:.3f}" for k, v in rec["quality"].items()) + f" ({rec['seconds']:.0f} s)")
