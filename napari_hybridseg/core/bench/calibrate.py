"""The step budget that fits a wall-clock budget, from a short timed probe of one network."""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from napari_hybridseg.core.data.collection import Collection
from napari_hybridseg.core.training.config import TrainConfig
from napari_hybridseg.core.training.reports import (
    DoneReport,
    StartReport,
    StepReport,
)

from .arms import DII_ARMS, arm_config
from .backend import Backend
from .presets import COST_FACTOR


def calibrate_steps(train: Collection, base: TrainConfig, backend: Backend, arms: Iterable[str], *,
                    budget_s: float, n_eval: int, run_dir: Path | None = None, probe_steps: int = 8,
                    log: Callable[[str], None] = print) -> tuple[int, dict[str, Any]]:
    """The largest step budget (<= ``base.steps``, >= 20) with which ``arms`` fit in ``budget_s`` seconds.

    Times ``probe_steps`` steps of one network (the ``naive`` arm) on the real
    training set, takes the median after the first two (warm-up), and scales
    it by each arm's :data:`COST_FACTOR`. DII's re-scoring of every weak image
    (about ``n_weak / (3 B) + 1`` steps' work per update, a few updates per
    run) and the evaluation of ``n_eval`` images per arm are added as fixed
    costs. Returns the steps and a record of the calibration.
    """
    arms = list(arms)
    cfg = arm_config(base, "naive").replace(steps=probe_steps, checkpoint_every=10**9, preview_every=10**9)
    times: list[float] = []
    t0 = time.perf_counter()
    gen = backend.train(train, cfg, run_dir)
    last = None
    try:
        for report in gen:
            now = time.perf_counter()
            if isinstance(report, StepReport):
                if last is not None:
                    times.append(now - last)
                last = now
            elif isinstance(report, StartReport):
                last = now
            elif isinstance(report, DoneReport):
                break
    finally:
        gen.close()
    probe_s = time.perf_counter() - t0
    unit = statistics.median(times[2:] if len(times) > 3 else times) if times else float("nan")
    n_weak = len(train.weak)
    per_update = n_weak / (3.0 * base.batch_size) + 1.0
    n_dii = sum(a in DII_ARMS for a in arms)
    fixed_units = n_dii * 5 * per_update + len(arms) * n_eval / (3.0 * base.batch_size)
    per_step_units = sum(COST_FACTOR[a] for a in arms)
    if not math.isfinite(unit) or unit <= 0:
        steps = base.steps
    else:
        steps = int((budget_s / unit - fixed_units) / per_step_units)
    steps = int(min(base.steps, max(20, steps)))
    record = {"probe_steps": probe_steps, "sec_per_step": unit, "probe_s": probe_s, "budget_s": budget_s,
              "cost_factors": {a: COST_FACTOR[a] for a in arms}, "steps": steps,
              "projected_s": unit * (steps * per_step_units + fixed_units) if math.isfinite(unit) else None}
    log(f"calibration: {unit:.2f} s per single-network step here -> {steps} steps per arm "
        f"(projected ~{(record['projected_s'] or 0) / 60:.0f} min for {len(arms)} arm(s), budget "
        f"{budget_s / 60:.0f} min)")
    if record["projected_s"] and record["projected_s"] > budget_s * 1.05:
        log(f"warning: even {steps} steps per arm do not fit the budget on this machine now (busy, or slow); "
            "the run will take longer. Run it on a quiet machine, or with fewer arms or a smaller --size")
    return steps, record
