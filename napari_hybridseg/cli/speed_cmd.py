"""``hybridseg speed``: median seconds per training step of each method arm.

Trains on a synthetic in-memory collection (no files, no downloads) at the
size, batch and network given (default: 128 px, batch 8, Unet with the default
encoder, EfficientNet-Lite0 from ImageNet; ``--encoder resnet18 --encoder-weights none``
for the earlier from-scratch network) and times each arm through the real trainer generator:

* a step is the time from one :class:`StepReport` to the next report;
* a DII update is the time from a StepReport to the :class:`WeightsReport`
  that follows it (each DII arm makes one, at its last step); its cost is
  amortised over tau steps: ``amortised = median step + update / tau``, tau
  from the trainer's rule for the synthetic set (``--tau`` to change).

The rows are :data:`napari_hybridseg.core.bench.arms.SPEED_ARMS` (with the benchmark's
arms, in one place); add a row there.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from napari_hybridseg.core.bench.arms import SPEED_ARMS

# the rows live with the benchmark's arms (one list of arms); light to import
ARMS = SPEED_ARMS


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "speed",
        help="time a training step of each method arm (one network, +DII, DCR...) on this machine",
        description="Median seconds per training step on a synthetic collection, per arm: "
                    + "; ".join(a.name for a in ARMS) + ". DII update cost is amortised over tau steps.",
    )
    p.add_argument("--size", type=int, default=128, help="training size in pixels (default: %(default)s)")
    p.add_argument("--batch-size", type=int, default=8, help="batch size (default: %(default)s)")
    p.add_argument("--arch", default="Unet", help="architecture (default: %(default)s)")
    p.add_argument("--encoder", default="tu-efficientnet_lite0", help="encoder (default: %(default)s)")
    p.add_argument("--encoder-weights", default="imagenet", metavar="{imagenet,none}",
                   help="encoder start (default: %(default)s; none = from scratch)")
    p.add_argument("--steps", type=int, default=8, help="timed steps per arm (default: %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default: %(default)s)")
    p.add_argument("--strong", type=int, default=8, help="strong images in the synthetic set (default: 8)")
    p.add_argument("--weak", type=int, default=24, help="weak (box) images in the synthetic set (default: 24)")
    p.add_argument("--tau", type=int, default=None,
                   help="DII interval the update cost is amortised over (default: the trainer's rule for the "
                        "synthetic set); the timed run makes one update at its last step whatever tau is")
    p.add_argument("--scorer", choices=("last-layer", "jvp"), default="last-layer", help="DII scorer")
    p.add_argument("--device", default="cpu", help="device (default: %(default)s)")
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto", help="precision (default: auto)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--arms", default=None, help="comma-separated arm numbers to run, 1-based (default: all)")
    p.add_argument("--json", type=Path, default=None, metavar="FILE", help="also write the results as JSON")
    p.set_defaults(handler=run_speed)


def synthetic_collection(n_strong: int, n_weak: int, size: int, seed: int = 0):
    """Disks on noise: ``n_strong`` with masks, ``n_weak`` with boxes (a recipe of :mod:`~.core.data.synthetic`)."""
    import numpy as np

    from napari_hybridseg.core.data.synthetic import Drawn, Spec, box_around, strong
    from napari_hybridseg.core.data.synthetic import synthetic_collection as build

    rr, cc = np.mgrid[0:size, 0:size]

    def paint(rng: np.random.Generator) -> Drawn:
        r = int(rng.integers(size // 10, size // 5))
        cy, cx = (int(v) for v in rng.integers(r + 1, size - r - 1, 2))
        mask = ((rr - cy) ** 2 + (cc - cx) ** 2 <= r * r).astype(np.uint8)
        img = np.clip(rng.normal(0.3, 0.1, (size, size, 3)) + mask[..., None] * 0.4, 0, 1)
        return Drawn((img * 255).astype(np.uint8), mask, (cy, cx, r))

    return build([Spec(f"img{i:03d}", paint, strong if i < n_strong else box_around, reference=False)
                  for i in range(n_strong + n_weak)], seed=seed)


def time_arm(collection, config) -> dict:
    """Run the trainer for ``config`` and time its steps and DII updates."""
    import numpy as np

    from napari_hybridseg.core.training.reports import DoneReport, StartReport, StepReport, WeightsReport
    from napari_hybridseg.core.training.trainer import train

    steps, updates = [], []
    device = ""
    gen = train(collection, config)
    t_prev = time.perf_counter()
    for report in gen:
        now = time.perf_counter()
        dt, t_prev = now - t_prev, now
        if isinstance(report, StartReport):
            device = report.device
        elif isinstance(report, StepReport):
            steps.append(dt)
        elif isinstance(report, WeightsReport):
            updates.append(dt)
        elif isinstance(report, DoneReport):
            break
    return {"steps": steps, "updates": updates, "device": device,
            "median_step_s": float(np.median(steps)) if steps else float("nan"),
            "mean_update_s": float(np.mean(updates)) if updates else 0.0}


def run_speed(args: argparse.Namespace) -> int:
    import platform

    import torch

    from napari_hybridseg.cli import CLIError
    from napari_hybridseg.core.methods.dii import default_tau
    from napari_hybridseg.core.training.config import ModelConfig, TrainConfig

    if args.threads:
        torch.set_num_threads(args.threads)
    arms = list(enumerate(ARMS, 1))
    if args.arms:
        try:
            wanted = {int(a) for a in args.arms.split(",")}
        except ValueError:
            raise CLIError(f"--arms {args.arms!r}: give arm numbers such as 1,3") from None
        arms = [(i, a) for i, a in arms if i in wanted]
    collection = synthetic_collection(args.strong, args.weak, args.size)
    tau = args.tau or default_tau(args.weak, args.batch_size)
    n_steps = max(1, args.steps)
    weights = None if str(args.encoder_weights).lower() in ("none", "scratch", "") else args.encoder_weights
    model = ModelConfig(arch=args.arch, encoder=args.encoder, encoder_weights=weights, input_size=args.size)
    rows = []
    print(f"{args.arch}/{args.encoder} ({weights or 'from scratch'}), {args.size} px, batch {args.batch_size}, "
          f"{args.strong} strong + "
          f"{args.weak} weak images, tau {tau}, {n_steps} timed steps per arm (+{args.warmup} warm-up), "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", file=sys.stderr)
    for index, arm in arms:
        # one DII update at the last step is timed, then amortised over tau
        cfg = TrainConfig(model=model, steps=args.warmup + n_steps, batch_size=args.batch_size, device=args.device,
                          precision=args.precision, dii_tau=args.warmup + n_steps, dii_scorer=args.scorer,
                          warmup_steps=0,
                          preview_every=0, checkpoint_every=0, augment=True,
                          threads=torch.get_num_threads()).replace(**arm.settings)  # fixed: no thread probing
        result = time_arm(collection, cfg)
        timed = result["steps"][args.warmup:]
        import numpy as np

        median = float(np.median(timed)) if timed else float("nan")
        amortised = median + (result["mean_update_s"] / tau if cfg.dii else 0.0)
        row = {"arm": arm.name, "settings": arm.settings, "median_step_s": median,
               "dii_update_s": result["mean_update_s"] if cfg.dii else None, "amortised_step_s": amortised,
               "device": result["device"], "step_times_s": timed}
        rows.append(row)
        print(f"  [{index}] {arm.name}: {amortised:.3f} s/step", file=sys.stderr)
    base = rows[0]["amortised_step_s"] if rows else float("nan")
    print(f"\n{'arm':<28} {'median s/step':>14} {'DII update s':>13} {'amortised s/step':>17} {'vs first':>9}")
    for row in rows:
        upd = f"{row['dii_update_s']:.3f}" if row["dii_update_s"] is not None else "-"
        print(f"{row['arm']:<28} {row['median_step_s']:>14.3f} {upd:>13} {row['amortised_step_s']:>17.3f} "
              f"{row['amortised_step_s'] / base:>8.2f}x")
    by_name = {row["arm"]: row["amortised_step_s"] for row in rows}
    ratios = {}
    for label, num, den, target in (("DII / one network", "one network + DII", "one network", 1.10),
                                    ("pixel weights / DCR + DII", "DCR + DII + pixel weights", "DCR + DII", 1.5)):
        if num in by_name and den in by_name:
            ratio = by_name[num] / by_name[den]
            ratios[label] = ratio
            print(f"{label}: {ratio:.2f}x (target <= {target:.2f}x: {'met' if ratio <= target else 'NOT met'})")
    if args.json:
        record = {"settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
                               if k != "handler"},
                  "tau": tau, "timed_steps": n_steps, "torch": torch.__version__, "threads": torch.get_num_threads(),
                  "machine": platform.processor() or platform.machine(), "rows": rows, "ratios": ratios}
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))
        print(f"wrote {args.json}", file=sys.stderr)
    return 0
