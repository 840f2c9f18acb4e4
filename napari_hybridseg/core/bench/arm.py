"""One arm: train it through the backend, follow its reports (step times, weights, previews, the
convergence curve), then score it on the test and validation images."""

from __future__ import annotations

import json
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


class _ArmTrace:
    """What the trainer's reports of one arm said: step times, weights, previews, the convergence curve.

    :meth:`follow` takes each report as it arrives and returns the command to
    send back (a pixel-weight preview request at the last step) or None.
    """

    def __init__(self, arm_data: ArmData, config: TrainConfig, backend: Backend, preview_ids: list[str],
                 curve: bool) -> None:
        self.data, self.config, self.backend = arm_data, config, backend
        self.preview_ids = preview_ids
        self.step_times: list[float] = []
        self.history: dict[str, list[list[float]]] = {}
        self.gamma: dict[str, float] = {}
        self.gates: list[str] = []  # one line per DII update: counted or not (the gate)
        self.device: str = "?"
        self.done: DoneReport | None = None
        self.start: StartReport | None = None
        self.preview: PreviewReport | None = None
        self.val_curve: list[list[float]] = []
        self.curve_s = 0.0
        self.val_truths = {i: _truth_of(s) for i, s in arm_data.val.items()} if curve and arm_data.val else {}
        self.last = time.perf_counter()

    def follow(self, report: Any, now: float) -> RequestPreview | None:
        """Record one report (received at ``now``); the command to send back, if any."""
        command = None
        if isinstance(report, StartReport):
            self.device, self.start = report.device, report
            self.last = now  # model building and caching are not a step
        elif isinstance(report, StepReport):
            self.step_times.append(now - self.last)
            self.last = now
            self.device = report.device or self.device
            # pixel-weight maps of a few weak images, as they stand after the last step
            if self.preview_ids and report.step == report.total_steps:
                command = RequestPreview(tuple(self.preview_ids))
        elif isinstance(report, WeightsReport):
            self._weights(report)
            # a DII update's time counts in the step it follows (amortised cost), the run's last one included:
            # counted in the next step instead, the last update of a run fell outside every step
            if self.step_times:
                self.step_times[-1] += now - self.last
            self.last = now
        elif isinstance(report, PreviewReport):
            if report.pixel_weights:
                self.preview = report
        elif isinstance(report, CheckpointReport):
            self._curve_point(report)
        elif isinstance(report, DoneReport):
            self.done = report
        return command

    def _weights(self, report: WeightsReport) -> None:
        self.gamma = dict(report.sample_weights)
        if report.gate:
            self.gates.append(f"step {report.step}: {report.gate}")
        for sid, value in report.sample_weights.items():
            # every history starts from the initial weight, so even one update draws a line
            first = self.start.start_step if self.start else 0
            self.history.setdefault(sid, [[first, float(self.config.dii_init)]]).append(
                [int(report.step), float(value)])

    def _curve_point(self, report: CheckpointReport) -> None:
        if self.val_truths and report.path and all(p[0] != report.step for p in self.val_curve):
            t_c = time.perf_counter()
            pred = _predict_all(self.backend.load_predictor(Path(report.path)), self.data.val)
            ev = evaluate_masks(pred, self.val_truths, labels=_label_values(self.data.train), n_boot=10)
            self.val_curve.append([int(report.step), float(ev["dice"])])
            self.curve_s += time.perf_counter() - t_c
            self.last = time.perf_counter()  # the curve's evaluation is not a training step's time


def _train(arm: str, trace: _ArmTrace, run_dir: Path,
           on_report: Callable[[str, Any], None] | None) -> tuple[float, float, float | None]:
    """Run the trainer to its DoneReport; (wall seconds, peak resident MB, peak GPU MB)."""
    data, config, backend = trace.data, trace.config, trace.backend
    _cuda_peak_reset()
    t0 = time.perf_counter()
    with _PeakMemory() as mem:
        gen = backend.train(data.train, config, run_dir)
        trace.last = time.perf_counter()
        command = None
        try:
            while True:
                report = gen.send(command) if command is not None else next(gen)
                command = trace.follow(report, time.perf_counter())
                if on_report is not None:
                    on_report(arm, report)
                if trace.done is not None:
                    break
        finally:
            gen.close()
    return time.perf_counter() - t0, mem.peak_mb, _cuda_peak_mb()


def _score(predictor: Any, samples: Mapping[str, Sample], labels: list[int] | None, n_boot: int,
           seed: int) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """Predictions of ``samples`` at their original resolution and their :func:`evaluate_masks`."""
    pred = _predict_all(predictor, samples)
    return pred, evaluate_masks(pred, {i: _truth_of(s) for i, s in samples.items()},
                                labels=labels, n_boot=n_boot, seed=seed)


def _pixel_truth_from_run_dir(run_dir: Path) -> dict | None:
    """``run.json``'s ``pixel_weight_truth`` (the training weights against the true masks), or None."""
    path = Path(run_dir) / "run.json"
    try:
        return json.loads(path.read_text()).get("pixel_weight_truth")
    except (OSError, ValueError):
        return None


def _weight_quality(result: dict[str, Any], trace: _ArmTrace, weak_ids: list[str], run_dir: Path) -> None:
    """Add to ``result`` how the arm's fixed, learned (DII) and pixel weights treat corrupted labels."""
    config, data = trace.config, trace.data
    if config.fixed_weights is not None:
        fw = config.fixed_weights
        bad = [fw[i] for i in weak_ids if i in data.corrupted and i in fw]
        good = [fw[i] for i in weak_ids if i not in data.corrupted and i in fw]
        result["fixed_weight_mean_clean"] = float(np.mean(good)) if good else float("nan")
        result["fixed_weight_mean_corrupted"] = float(np.mean(bad)) if bad else float("nan")
    if config.dii and weak_ids:
        gamma = trace.gamma
        if not gamma:
            gamma = _gamma_from_run_dir(run_dir)
        corrupted_weak = {i: k for i, k in data.corrupted.items() if i in data.train}
        result.update(gamma_quality({i: gamma[i] for i in weak_ids if i in gamma}, corrupted_weak))
        result["gamma"] = {i: gamma[i] for i in weak_ids if i in gamma}
        result["gamma_history"] = trace.history
        if trace.gates:
            result["dii_updates"] = list(trace.gates)
            result["notes"].append(f"DII updates, seed {config.seed}: " + "; ".join(trace.gates))
    if config.pixel_weights != "off":
        preview = trace.preview
        if preview is not None:
            fix = bool(getattr(config, "pixel_weights_fix_certain", True))
            result.update(pixel_weight_ratio(*_pixel_weight_inputs(data.train, preview, fix)))
            result["pixel_weight_samples"] = sorted(preview.pixel_weights)
        else:
            result["pixel_weight_wrong_vs_right"] = float("nan")
            result["notes"].append("the trainer sent no pixel-weight maps: pixel_weight_wrong_vs_right not measured")
        truth = _pixel_truth_from_run_dir(run_dir)
        if truth is not None:  # the weights the loss used, every step of the run (not the preview maps)
            result["pixel_weight_training"] = truth
            ratio = truth.get("wrong_vs_right")
            result["pixel_weight_training_wrong_vs_right"] = float("nan") if ratio is None else float(ratio)


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
    learns_pixels = config.pixel_weights != "off"
    weak_ids = [s.id for s in data.train if s.role is Role.WEAK]
    preview_ids = _pick_preview_ids(weak_ids, data.corrupted, pixel_preview, seed) if learns_pixels else []
    trace = _ArmTrace(data, config, backend, preview_ids, curve)
    train_wall, train_peak_mb, gpu_peak = _train(arm, trace, run_dir, on_report)
    done, start, step_times = trace.done, trace.start, trace.step_times

    # evaluation at each test image's original resolution
    t1 = time.perf_counter()
    predictor = backend.load_predictor(Path(done.checkpoint) if done and done.checkpoint else run_dir)
    labels = _label_values(data.train)
    test_pred, test_eval = _score(predictor, data.test, labels, n_boot, seed)
    val_eval = _score(predictor, data.val, labels, n_boot, seed)[1] if data.val else None
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
        "device": trace.device,
        "reason": done.reason if done else "no DoneReport",
        "n_train": len(data.train),
        "n_strong": len(data.train.strong),
        "n_weak": len(data.train.weak),
        "notes": list(start.notes) if start else [],
        "config": config.to_dict(),
        "per_image": test_eval["per_image"],
    }
    if curve:
        result["val_curve"] = sorted(trace.val_curve)
        result["curve_s"] = trace.curve_s
    _weight_quality(result, trace, weak_ids, run_dir)
    grid = {i: test_pred[i] for i in data.grid_ids if i in test_pred}
    return result, grid
