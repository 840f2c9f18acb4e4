"""``hybridseg perf``: the figures of docs/performance.md that concern real-world robustness.

``hybridseg perf predict``: seconds per megapixel of prediction on large images
(a network trained at a small size, tiled at the training scale).
``hybridseg perf threads``: seconds per training step with and without a
competing CPU job, with torch's thread count fixed at all cores and chosen by
:class:`~napari_hybridseg.core.network.device.ThreadTuner`.

torch is imported inside the handlers so that ``hybridseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path


def register(subparsers) -> None:
    p = subparsers.add_parser("perf", help="measure large-image prediction (s/megapixel) and CPU threads under load",
                              description="Measurements recorded in docs/performance.md.")
    sub = p.add_subparsers(dest="what", metavar="WHAT", required=True)
    q = sub.add_parser("predict", help="seconds per megapixel predicting large images (tiled at the training scale)")
    q.add_argument("--sizes", default="1000,2500,5000", help="square image sides in pixels (default %(default)s)")
    q.add_argument("--train-size", type=int, default=64, help="the network's training size (default %(default)s)")
    q.add_argument("--train-scale", type=float, default=1.0,
                   help="training pixels per original pixel (default %(default)s: training images as large as "
                        "their originals, the most tiles)")
    q.add_argument("--encoder", default=None, help="encoder (default: the package default)")
    q.add_argument("--device", default="cpu")
    q.add_argument("--json", type=Path, default=None, help="also write the figures as JSON")
    q.set_defaults(handler=run_perf_predict)
    t = sub.add_parser("threads", help="s/step with and without a competing CPU job, threads fixed vs chosen")
    t.add_argument("--steps", type=int, default=24, help="timed training steps per case (default %(default)s)")
    t.add_argument("--size", type=int, default=128)
    t.add_argument("--batch-size", type=int, default=8)
    t.add_argument("--competitors", type=int, default=1, help="busy processes started as the competing job")
    t.add_argument("--json", type=Path, default=None)
    t.set_defaults(handler=run_perf_threads)


def _model_config(encoder: str | None, size: int):
    from napari_hybridseg.core.training.config import ModelConfig

    cfg = ModelConfig(input_size=size, encoder_weights=None)
    return cfg.replace(encoder=encoder) if encoder else cfg


def run_perf_predict(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from napari_hybridseg.core.network.models import build_model
    from napari_hybridseg.core.prediction.predict import Predictor

    cfg = _model_config(args.encoder, args.train_size)
    model = build_model(cfg, seed=0)
    rows = []
    print(f"{cfg.arch}/{cfg.encoder}, trained at {args.train_size} px, train_scale {args.train_scale}, "
          f"device {args.device}, torch {torch.__version__}, {torch.get_num_threads()} threads at start",
          file=sys.stderr)
    for side in (int(s) for s in args.sizes.split(",")):
        predictor = Predictor(model, args.train_size, [1], device=args.device, train_scale=args.train_scale)
        tiles: list[int] = []
        predictor.tile_progress = lambda done, total, seen=tiles: seen.append(total)
        image = np.random.default_rng(side).integers(0, 256, (side, side, 3), dtype=np.uint8)
        t0 = time.perf_counter()
        labels, _ = predictor.predict(image)
        seconds = time.perf_counter() - t0
        mp = side * side / 1e6
        rows.append({"side": side, "megapixels": mp, "seconds": seconds, "s_per_megapixel": seconds / mp,
                     "tiles": tiles[-1] if tiles else 1, "threads": torch.get_num_threads()})
        print(f"{side} x {side}: {seconds:.1f} s, {seconds / mp:.2f} s/MP, {rows[-1]['tiles']} tiles", flush=True)
        assert labels.shape == (side, side)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "model": cfg.to_dict()}, indent=1))
    return 0


_BUSY = "import time\nend = time.time() + 3600\nwhile time.time() < end:\n    pass\n"


def run_perf_threads(args: argparse.Namespace) -> int:
    import os

    import numpy as np
    import torch

    from napari_hybridseg.cli import CLIError
    from napari_hybridseg.cli.speed_cmd import synthetic_collection, time_arm
    from napari_hybridseg.core.network.device import available_cpus
    from napari_hybridseg.core.training.config import TrainConfig

    if os.environ.get("OMP_NUM_THREADS"):
        raise CLIError("unset OMP_NUM_THREADS for this measurement (it fixes the thread count)")
    cores = available_cpus()
    default_threads = torch.get_num_threads()
    collection = synthetic_collection(8, 24, args.size)
    model = _model_config(None, args.size)
    rows = []

    def case(name: str, threads: int, competing: bool) -> None:
        procs = [subprocess.Popen([sys.executable, "-c", _BUSY]) for _ in range(args.competitors if competing else 0)]
        try:
            time.sleep(0.5 if procs else 0)
            cfg = TrainConfig(model=model, steps=args.steps + 1, batch_size=args.batch_size, dcr=False, dii=False,
                              warmup_steps=0, preview_every=0, checkpoint_every=0, threads=threads)
            torch.set_num_threads(default_threads)
            result = time_arm(collection, cfg)
        finally:
            for p in procs:
                p.kill()
                p.wait()
        timed = result["steps"][1:]
        rows.append({"case": name, "threads": threads or "auto", "competing_jobs": len(procs),
                     "median_step_s": float(np.median(timed)), "mean_step_s": float(np.mean(timed)),
                     "total_s": float(np.sum(timed)), "step_times_s": timed})
        print(f"  {name}: median {rows[-1]['median_step_s']:.3f} s/step, {rows[-1]['total_s']:.1f} s for "
              f"{len(timed)} steps", file=sys.stderr, flush=True)

    print(f"Unet/{model.encoder} from scratch, {args.size} px, batch {args.batch_size}, one network, "
          f"{args.steps} timed steps per case, {cores} cores, torch default {default_threads} threads, "
          f"competing job: {args.competitors} busy Python process(es)", file=sys.stderr)
    case("quiet, threads fixed at torch's default", default_threads, False)
    case("quiet, threads chosen (auto)", 0, False)
    case("competing job, threads fixed at torch's default", default_threads, True)
    case("competing job, one thread", 1, True)
    case("competing job, threads chosen (auto)", 0, True)
    print(f"\n{'case':<50} {'threads':>8} {'median s/step':>14} {'mean s/step':>12}")
    for r in rows:
        print(f"{r['case']:<50} {r['threads']!s:>8} {r['median_step_s']:>14.3f} {r['mean_step_s']:>12.3f}")
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "cores": cores, "default_threads": default_threads}, indent=1))
    return 0
