"""One arm: train it through the backend, follow its reports (step times, weights, previews, the
convergence curve), then score it on the test and validation images."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.data.collection import Collection, Role, Sample
from napari_hybridseg.core.training.config import TrainConfig
from napari_hybridseg.core.training.reports import (
    CheckpointReport,
    DoneReport,
    PreviewReport,
    RequestPreview,
    StartReport,
    StepReport,
    WeightsReport,
)

from .backend import Backend
from .data import _truth_of
from .evaluate import (
    _gamma_from_run_dir,
    _label_values,
    _pixel_weight_inputs,
    _predict_all,
    evaluate_masks,
    gamma_quality,
    pixel_weight_ratio,
)
from .memory import _cuda_peak_mb, _cuda_peak_reset, _PeakMemory


@dataclass
class ArmData:
    """What one arm trains on and is scored on."""

    train: Collection
    test: Mapping[str, Sample]
    val: Mapping[str, Sample]
    corrupted: Mapping[str, str]
    grid_ids: list[str] = field(default_factory=list)


def _pick_preview_ids(weak: list[str], corrupted: Mapping[str, str], n: int, seed: int) -> list[str]:
    """Up to ``n`` weak ids, half corrupted where possible, seeded."""
    rng = np.random.default_rng(seed)
    bad = [i for i in weak if i in corrupted]
    good = [i for i in weak if i not in corrupted]
    rng.shuffle(bad)
    rng.shuffle(good)
    k_bad = min(len(bad), n // 2)
    return sorted(bad[:k_bad] + good[: n - k_bad])


def run_arm(
    arm: str,
    data: ArmData,
    config: TrainConfig,
    run_dir: Path,
    backend: Backend,
    *,
    on_report: Callable[[str, Any], None] | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    pixel_preview: int = 16,
    curve: bool = False,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Train one arm, evaluate it on the test (and validation) images.

    With ``curve`` the validation Dice is also measured at every checkpoint
    the trainer writes (``config.checkpoint_every``): the convergence curve.
    That evaluation's time is left out of the step times.

    Returns
    -------
    (dict, dict)
        The arm's results (JSON-ready) and its test predictions (id -> labels)
        for the images in ``data.grid_ids``.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    step_times: list[float] = []
    history: dict[str, list[list[float]]] = {}
    gamma: dict[str, float] = {}
    device, done, start = "?", None, None
    preview: PreviewReport | None = None
    learns_pixels = config.pixel_weights != "off"
    weak_ids = [s.id for s in data.train if s.role is Role.WEAK]
    preview_ids = _pick_preview_ids(weak_ids, data.corrupted, pixel_preview, seed) if learns_pixels else []
    val_curve: list[list[float]] = []
    curve_s = 0.0
    val_truths = {i: _truth_of(s) for i, s in data.val.items()} if curve and data.val else {}

    _cuda_peak_reset()
    t0 = time.perf_counter()
    with _PeakMemory() as mem:
        gen = backend.train(data.train, config, run_dir)
        last = time.perf_counter()
        command = None
        try:
            while True:
                report = gen.send(command) if command is not None else next(gen)
                command = None
                now = time.perf_counter()
                if isinstance(report, StartReport):
                    device, start = report.device, report
                    last = now  # model building and caching are not a step
                elif isinstance(report, StepReport):
                    step_times.append(now - last)
                    last = now
                    device = report.device or device
                    # pixel-weight maps of a few weak images, as they stand after the last step
                    if preview_ids and report.step == report.total_steps:
                        command = RequestPreview(tuple(preview_ids))
                elif isinstance(report, WeightsReport):
                    gamma = dict(report.sample_weights)
                    for sid, value in report.sample_weights.items():
                        # every history starts from the initial weight, so even one update draws a line
                        first = start.start_step if start else 0
                        history.setdefault(sid, [[first, float(config.dii_init)]]).append(
                            [int(report.step), float(value)])
                    # `last` is not reset: a DII update's time counts in the step around it (amortised cost)
                elif isinstance(report, PreviewReport):
                    if report.pixel_weights:
                        preview = report
                elif isinstance(report, CheckpointReport):
                    if val_truths and report.path and all(p[0] != report.step for p in val_curve):
                        t_c = time.perf_counter()
                        pred = _predict_all(backend.load_predictor(Path(report.path)), data.val)
                        ev = evaluate_masks(pred, val_truths, labels=_label_values(data.train), n_boot=10)
                        val_curve.append([int(report.step), float(ev["dice"])])
                        curve_s += time.perf_counter() - t_c
                        last = time.perf_counter()  # the curve's evaluation is not a training step's time
                elif isinstance(report, DoneReport):
                    done = report
                if on_report is not None:
                    on_report(arm, report)
                if done is not None:
                    break
        finally:
            gen.close()
    train_wall = time.perf_counter() - t0
    train_peak_mb = mem.peak_mb
    gpu_peak = _cuda_peak_mb()

    # evaluation at each test image's original resolution
    t1 = time.perf_counter()
    predictor = backend.load_predictor(Path(done.checkpoint) if done and done.checkpoint else run_dir)
    labels = _label_values(data.train)
    test_pred = _predict_all(predictor, data.test)
    test_eval = evaluate_masks(test_pred, {i: _truth_of(s) for i, s in data.test.items()},
                               labels=labels, n_boot=n_boot, seed=seed)
    val_eval = None
    if data.val:
        val_pred = _predict_all(predictor, data.val)
        val_eval = evaluate_masks(val_pred, {i: _truth_of(s) for i, s in data.val.items()},
                                  labels=labels, n_boot=n_boot, seed=seed)
    eval_s = time.perf_counter() - t1

    result: dict[str, Any] = {
        "arm": arm,
        "dice": test_eval["dice"],
        "dice_ci": test_eval["dice_ci"],
        "iou": test_eval["iou"],
        "dice_nonempty": test_eval["dice_nonempty"],
        "val_dice": val_eval["dice"] if val_eval else None,
        "sec_per_step": statistics.median(step_times) if step_times else float("nan"),
        "sec_per_step_mean": float(np.mean(step_times)) if step_times else float("nan"),
        "steps": len(step_times),
        "wall_s": train_wall + eval_s,
        "train_s": train_wall,
        "eval_s": eval_s,
        "peak_mem_mb": train_peak_mb,
        "peak_gpu_mem_mb": gpu_peak,
        "device": device,
        "reason": done.reason if done else "no DoneReport",
        "n_train": len(data.train),
        "n_strong": len(data.train.strong),
        "n_weak": len(data.train.weak),
        "notes": list(start.notes) if start else [],
        "config": config.to_dict(),
        "per_image": test_eval["per_image"],
    }
    if curve:
        result["val_curve"] = sorted(val_curve)
        result["curve_s"] = curve_s
    if config.fixed_weights is not None:
        fw = config.fixed_weights
        bad = [fw[i] for i in weak_ids if i in data.corrupted and i in fw]
        good = [fw[i] for i in weak_ids if i not in data.corrupted and i in fw]
        result["fixed_weight_mean_clean"] = float(np.mean(good)) if good else float("nan")
        result["fixed_weight_mean_corrupted"] = float(np.mean(bad)) if bad else float("nan")
    if config.dii and weak_ids:
        if not gamma:
            gamma = _gamma_from_run_dir(run_dir)
        corrupted_weak = {i: k for i, k in data.corrupted.items() if i in data.train}
        result.update(gamma_quality({i: gamma[i] for i in weak_ids if i in gamma}, corrupted_weak))
        result["gamma"] = {i: gamma[i] for i in weak_ids if i in gamma}
        result["gamma_history"] = history
    if learns_pixels:
        if preview is not None:
            fix = bool(getattr(config, "pixel_weights_fix_certain", True))
            result.update(pixel_weight_ratio(*_pixel_weight_inputs(data.train, preview, fix)))
            result["pixel_weight_samples"] = sorted(preview.pixel_weights)
        else:
            result["pixel_weight_wrong_vs_right"] = float("nan")
            result["notes"].append("the trainer sent no pixel-weight maps: pixel_weight_wrong_vs_right not measured")
    grid = {i: test_pred[i] for i in data.grid_ids if i in test_pred}
    return result, grid
