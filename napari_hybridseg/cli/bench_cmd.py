"""`hybridseg bench`: the hybrid-supervision benchmark on a fully labelled dataset.

Runs the protocol of ``../shared/BENCHMARK.md`` (split, label budget,
recorded corruption, eight arms, evaluation at original resolution) and writes
``results.json``, ``report.md`` and figures into ``--out``; with several
``--seeds`` or strong fractions, one run folder each plus the summary over
them. Rerun with the same ``--out`` to resume: finished arms are skipped.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

from napari_hybridseg.core.bench.arms import ARMS, LAYOUTS
from napari_hybridseg.core.bench.arms import PRESET_NAMES as PRESETS  # light: no numpy, no torch


def _int_list(value: str) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value.replace(" ", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers separated by commas, e.g. 0,1,2; got {value!r}") from None
    if not out or len(set(out)) != len(out):
        raise argparse.ArgumentTypeError(f"expected distinct integers, e.g. 0,1,2; got {value!r}")
    return out


def _fraction_list(value: str) -> tuple[float, ...]:
    try:
        out = tuple(float(v) for v in value.replace(" ", ",").split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected fractions separated by commas, e.g. 0.05,0.1; got {value!r}") \
            from None
    if not out or len(set(out)) != len(out) or any(not 0.0 < f <= 1.0 for f in out):
        raise argparse.ArgumentTypeError(f"expected distinct fractions in (0, 1], e.g. 0.05,0.1; got {value!r}")
    return out


def _arms(value: str) -> tuple[str, ...]:
    arms = tuple(a.strip() for a in value.replace(" ", ",").split(",") if a.strip())
    bad = [a for a in arms if a not in ARMS]
    if bad or not arms:
        raise argparse.ArgumentTypeError(f"unknown arm(s) {bad}; choose from {','.join(ARMS)}")
    return arms


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "bench",
        help="benchmark hybrid supervision on a fully labelled dataset (eight arms, seeds, report.md)",
        description=(
            "Split DATASET (seeded, group-aware 70/10/20), keep masks for --strong-fraction of the training "
            "images, turn the rest into weak labels with --noise of them deliberately wrong, train the arms "
            f"({', '.join(ARMS)}) with the same network, size, steps and seed, and score each on the test images "
            "at their original resolution; with --seeds and a list of --strong-fraction, every arm at every seed "
            "and fraction, summarised with paired intervals. Writes results.json, report.md and figures into "
            "--out; rerun with the same --out to resume after an interruption."
        ),
    )
    p.add_argument("dataset", metavar="DATASET", nargs="?", help="dataset folder (fully labelled)")
    p.add_argument("--layout", choices=LAYOUTS, help="dataset layout (required to run)")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder (resumes if it holds a run)")
    p.add_argument("--preset", default="quick", choices=PRESETS,
                   help="quick (old name cpu-quick): 128 px Unet/EfficientNet-Lite0 (ImageNet), steps calibrated "
                        "to ~18 min per run on 2 cores, for development; standard: a fixed step budget "
                        "(400: what fits 90 minutes on 2 cores, short of the plateau) for the committed reports, "
                        "expensive arms on the first seed; gpu: paper scale for a "
                        "CUDA machine "
                        "(default: %(default)s)")
    p.add_argument("--strong-fraction", type=_fraction_list, default=(0.1,), metavar="F[,F...]",
                   help="fraction(s) of training images that keep their mask, e.g. 0.05,0.1 (default: 0.1)")
    p.add_argument("--weak", default="box", choices=("box", "point", "tag"),
                   help="weak label of the other training images (default: %(default)s)")
    p.add_argument("--noise", type=float, default=0.3, metavar="F",
                   help="fraction of weak labels made wrong on purpose (default: %(default)s)")
    p.add_argument("--point-placement", choices=("anywhere", "deep"), default="anywhere",
                   help="--weak point: where a simulated click lands in its object: anywhere off its border, "
                        "near the boundary as often as a user clicks there (default), or deep inside")
    p.add_argument("--background-clicks", type=int, default=0, metavar="N",
                   help="--weak point: background clicks added to each point image (default: 0)")
    p.add_argument("--groups", metavar="CSV", help="CSV of image_id,group rows (patient, video): "
                                                    "a group never straddles the split")
    p.add_argument("--no-dedup", action="store_true",
                   help="do not group near-duplicate images (thumbnail correlation) before splitting")
    p.add_argument("--arms", type=_arms, default=ARMS, metavar="A,B,...",
                   help=f"arms to run, comma-separated (default: all: {','.join(ARMS)})")
    p.add_argument("--seeds", type=_int_list, metavar="S[,S...]",
                   help="seeds, e.g. 0,1,2: every arm runs at every seed (split, label budget, corruption and "
                        "initialisation follow it); the report gives mean, spread and paired intervals (default: 0)")
    p.add_argument("--seed", type=int, help="one seed (the same as --seeds S)")
    p.add_argument("--expensive-seeds", type=int, metavar="K",
                   help="run dii+dcr and full on the first K seeds only (default: the preset's: standard 1, else all)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:1, mps (default: auto)")
    p.add_argument("--steps", type=int, metavar="N",
                   help="training steps per arm, the same for every arm and seed (default: quick times a few steps "
                        "and picks the most that fit its time budget, at most 300; standard: 400; "
                        "gpu: 4000)")
    p.add_argument("--budget-min", type=float, metavar="M",
                   help="wall-clock budget of one run (one seed, one fraction) in minutes, used to pick --steps "
                        "(default: 18 for quick, none for standard and gpu)")
    p.add_argument("--batch-size", type=int, metavar="B", help="batch size (default: the preset's)")
    p.add_argument("--size", type=int, metavar="PX", help="training input size (default: the preset's)")
    p.add_argument("--encoder", metavar="NAME", help="encoder of every arm (default: tu-efficientnet_lite0)")
    p.add_argument("--encoder-weights", metavar="{imagenet,none}",
                   help="imagenet (default) or none: every arm from scratch (the reports before 2026-12-01 evening: "
                        "--encoder resnet18 --encoder-weights none)")
    p.add_argument("--limit", type=int, metavar="N", help="use a seeded subset of N images (quick checks)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                   help="a training setting for every arm (a TrainConfig field, e.g. "
                        "pixel_weights_fix_certain=false, box_pairwise_weight=0); repeatable, recorded in results")
    p.add_argument("--note", default="", help="a note printed at the top of the report, e.g. 'measured under load'")
    p.add_argument("--report-only", action="store_true", help="only redraw report.md and figures from --out")
    p.set_defaults(handler=run)


def _settings(items: list[str]) -> dict:
    """``KEY=VALUE`` strings -> TrainConfig overrides (``core.training.config.parse_overrides``)."""
    from napari_hybridseg.cli import CLIError
    from napari_hybridseg.core.errors import ConfigError
    from napari_hybridseg.core.training.config import parse_overrides

    try:
        return parse_overrides(items)
    except ConfigError as exc:
        raise CLIError(f"--set: {exc}") from exc


def _progress():
    """A tqdm bar per arm, fed by the trainer's reports."""
    from tqdm.auto import tqdm

    from napari_hybridseg.core.training.reports import DoneReport, StartReport, StepReport

    bars: dict[str, tqdm] = {}

    def on_report(arm: str, report) -> None:
        bar = bars.get(arm)
        if isinstance(report, StartReport):
            bar = bars[arm] = tqdm(total=report.total_steps, initial=report.start_step, desc=f"{arm:>11}",
                                   unit="step", dynamic_ncols=True, file=sys.stderr)
            bar.set_postfix_str(report.device)
        elif isinstance(report, StepReport) and bar is not None:
            bar.update(max(0, report.step - bar.n))
            loss = report.losses.get("total")
            if loss is not None:
                bar.set_postfix_str(f"loss {loss:.3f}  {report.device}")
        elif isinstance(report, DoneReport) and bar is not None:
            bar.close()

    return on_report


def run(args: argparse.Namespace) -> int:
    from napari_hybridseg.cli import CLIError
    from napari_hybridseg.core.bench.report import write_report

    out = Path(args.out)
    if args.report_only:
        path = write_report(out)
        print(f"report: {path}")
        return 0
    seeds = _seeds(args)

    from napari_hybridseg.core.bench.protocol import BenchSettings

    overrides = _overrides(args)
    try:
        settings = BenchSettings(
            dataset=str(Path(args.dataset).resolve()), layout=args.layout, out=str(out.resolve()),
            preset=args.preset, strong_fraction=args.strong_fraction[0], weak=args.weak, noise=args.noise,
            point_placement=args.point_placement, background_clicks=args.background_clicks, seed=seeds[0],
            arms=args.arms, groups_csv=args.groups, dedup=not args.no_dedup,
            device=args.device, steps=args.steps, limit=args.limit, overrides=overrides, note=args.note,
            budget_min=args.budget_min,
        )
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    missing = _run(args, settings, seeds, out)
    report = write_report(out)
    print(f"results: {out / 'results.json'}")
    print(f"report:  {report}")
    figures = sorted(p.name for p in out.glob("*.png"))
    if figures:
        print(f"figures: {', '.join(str(out / f) for f in figures)}")
    if missing:
        print(f"arms without results: {', '.join(missing)}", file=sys.stderr)
        return 1
    return 0


def _seeds(args: argparse.Namespace) -> tuple[int, ...]:
    """Check the arguments a run needs; the seeds to run."""
    from napari_hybridseg.cli import CLIError

    if args.dataset is None or args.layout is None:
        raise CLIError(f"give the DATASET folder and its --layout {{{','.join(LAYOUTS)}}} (only --report-only "
                       "works without them)")
    if not Path(args.dataset).is_dir():
        raise CLIError(f"{args.dataset}: dataset folder not found")
    if args.seed is not None and args.seeds is not None:
        raise CLIError("give --seeds or --seed, not both")
    seeds = args.seeds if args.seeds is not None else (args.seed if args.seed is not None else 0,)
    for name in ("steps", "batch_size", "size", "limit", "expensive_seeds"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    return seeds


def _overrides(args: argparse.Namespace) -> dict:
    """The TrainConfig overrides of every arm: --batch-size, --size, --encoder(-weights), then each --set."""
    overrides: dict = {}
    if args.batch_size:
        overrides["batch_size"] = args.batch_size
    model: dict = {}
    if args.size:
        model["input_size"] = args.size
    if args.encoder:
        model["encoder"] = args.encoder
    if args.encoder_weights:
        model["encoder_weights"] = None if args.encoder_weights.lower() in ("none", "scratch") else args.encoder_weights
    if model:
        overrides["model"] = model
    overrides.update(_settings(args.set_))
    return overrides


def _run(args: argparse.Namespace, settings, seeds: tuple[int, ...], out: Path) -> list[str]:
    """One run, or a suite of seeds x strong fractions; the arms left without results."""
    from napari_hybridseg.cli import CLIError
    from napari_hybridseg.core.bench.protocol import run_benchmark

    command = "hybridseg " + " ".join(shlex.quote(a) for a in sys.argv[1:]) if sys.argv[1:2] == ["bench"] else None

    def log(msg: str) -> None:
        print(msg, file=sys.stderr)

    fractions = args.strong_fraction
    if len(seeds) == 1 and len(fractions) == 1 and not (out / "suite.json").is_file():
        print(f"benchmark: {', '.join(settings.arms)} -> {out}", file=sys.stderr)
        results = run_benchmark(settings, on_report=_progress(), command_line=command, log=log)
        return [a for a in settings.arms if a not in results["arms"]]
    from napari_hybridseg.core.bench.suite import run_suite

    print(f"benchmark: {', '.join(settings.arms)} x seeds {','.join(map(str, seeds))} x strong fraction(s) "
          f"{','.join(f'{f:g}' for f in fractions)} -> {out}", file=sys.stderr)
    try:
        results = run_suite(settings, seeds, fractions, on_report=_progress(), command_line=command, log=log,
                            **({} if args.expensive_seeds is None else {"expensive_seeds": args.expensive_seeds}))
    except ValueError as exc:
        raise CLIError(str(exc)) from exc
    missing = []
    for run in results["suite"]["runs"]:
        res = out / run["folder"] / "results.json"
        done = json.loads(res.read_text())["arms"] if res.is_file() else {}
        missing += [f"{a} ({run['folder']})" for a in run["arms"] if a not in done]
    return missing
