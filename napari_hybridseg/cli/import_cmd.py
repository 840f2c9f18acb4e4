"""``hybridseg import``, ``hybridseg info`` and ``hybridseg sample-data``.

Heavy modules (numpy, scikit-image, PIL) are imported inside the handlers so
that ``hybridseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from napari_hybridseg.cli import CLIError

LAYOUTS = ("kvasir", "folder", "busi", "images")


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"{value} is not in [0, 1]")
    return value


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "import",
        help="import a dataset folder as a project (optionally hybrid: few masks, weak labels, label noise)",
        description="Import a dataset folder into a project folder. With --strong-fraction, keep masks for that "
                    "fraction of the images and turn the rest into weak labels (--weak), a fraction --noise of "
                    "them deliberately wrong (recorded in the project).",
    )
    p.add_argument("--layout", required=True, choices=LAYOUTS,
                   help="kvasir: images/ masks/ *bbox*.json; folder: images/ + masks/; busi: class folders with "
                        "_mask files; images: images only (unlabeled)")
    p.add_argument("src", type=Path, help="the dataset folder")
    p.add_argument("project", type=Path, help="the project folder to write (must not hold a project yet, "
                                              "unless --force)")
    p.add_argument("--strong-fraction", type=_fraction, default=None, metavar="F",
                   help="keep masks for this fraction of the images (default: keep all)")
    p.add_argument("--weak", choices=("box", "point", "tag"), default="box",
                   help="weak label for images that lose their mask (default: box)")
    p.add_argument("--noise", type=_fraction, default=0.0, metavar="F",
                   help="fraction of the weak labels made wrong on purpose (default: 0)")
    p.add_argument("--point-placement", choices=("anywhere", "deep"), default="anywhere",
                   help="--weak point: where a simulated click lands in its object: anywhere off its border, "
                        "near the boundary as often as a user clicks there (default), or deep inside")
    p.add_argument("--background-clicks", type=int, default=0, metavar="N",
                   help="--weak point: background clicks added to each point image (default: 0)")
    p.add_argument("--seed", type=int, default=0, help="seed for the choice of strong images and the noise")
    p.add_argument("--class-name", default=None, help="name of the foreground class (default: from the dataset)")
    p.add_argument("--masks", choices=("auto", "binary", "labels", "rgb"), default="auto",
                   help="what mask values mean, decided once for the whole dataset: auto (default: from the "
                        "values of every mask; kvasir and busi: binary), binary (threshold), labels (each value "
                        "a class), rgb (colour-coded masks, each colour a class, black background)")
    p.add_argument("--mask-threshold", type=int, default=None, metavar="T",
                   help="binary masks: value > T is foreground (default: 127 for 8-bit, 32767 for 16-bit masks, "
                        "0 for masks whose values stay below 128)")
    p.add_argument("--copy-images", action="store_true",
                   help="copy images into the project (default: reference them by relative path)")
    p.add_argument("--force", action="store_true", help="overwrite an existing project")
    p.set_defaults(handler=run_import)

    p = subparsers.add_parser("info", help="print the counts of a project",
                              description="Counts: samples, strong, weak, unlabeled, boxes, points, tags, classes, "
                                          "corrupted.")
    p.add_argument("project", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(handler=run_info)

    p = subparsers.add_parser("sample-data", help="(re)generate the synthetic demo project",
                              description="Write the seeded synthetic demo project (colonoscopy-like frames, "
                                          "AS-OCT-like B-scans) to OUT (default: sample_data/ of a source checkout, "
                                          "else the cached copy napari opens).")
    p.add_argument("out", type=Path, nargs="?", default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(handler=run_sample_data)


def run_import(args: argparse.Namespace) -> int:
    from napari_hybridseg.core.data.importers import DatasetError, import_dataset
    from napari_hybridseg.core.data.store import StoreError, is_project, save_project

    if not args.src.is_dir():
        raise CLIError(f"{args.src}: no such dataset folder")
    if args.project.exists() and any(args.project.iterdir()) and not args.force:
        what = "a project" if is_project(args.project) else "files"
        raise CLIError(f"{args.project} already holds {what}; choose an empty folder or pass --force")
    if args.strong_fraction is None and args.noise:
        raise CLIError("--noise needs --strong-fraction (only weak labels can be made wrong)")

    def progress(done: int, total: int) -> None:
        if sys.stderr.isatty():
            print(f"\rimporting {done}/{total}", end="" if done < total else "\n", file=sys.stderr, flush=True)

    try:
        collection = import_dataset(args.src, args.layout, class_name=args.class_name,
                                    masks=args.masks, mask_threshold=args.mask_threshold,
                                    strong_fraction=args.strong_fraction, weak=args.weak, noise=args.noise,
                                    seed=args.seed, point_placement=args.point_placement,
                                    background_clicks=args.background_clicks, progress=progress)
        save_project(collection, args.project, copy_images=args.copy_images)
    except (DatasetError, StoreError) as exc:
        raise CLIError(str(exc), code=1) from exc
    for note in collection.meta.get("import", {}).get("notes", []):
        print(f"note: {note}", file=sys.stderr)
    counts = collection.counts()
    print(f"wrote {args.project}: " + ", ".join(f"{v} {k}" for k, v in counts.items()))
    return 0


def run_info(args: argparse.Namespace) -> int:
    from napari_hybridseg.core.data.store import StoreError, load_project

    try:
        collection = load_project(args.project)
    except StoreError as exc:
        raise CLIError(str(exc), code=1) from exc
    counts = collection.counts()
    if args.json:
        print(json.dumps(counts))
        return 0
    print(f"project {args.project}")
    for key, value in counts.items():
        print(f"  {key:<10} {value}")
    print("  classes:   " + ", ".join(f"{c.name} (={c.value})" for c in collection.classes))
    if collection.tag_defs:
        print("  tag vocabulary: " + ", ".join(f"{t.name} ({t.implies.value})" for t in collection.tag_defs))
    hybrid = collection.meta.get("hybrid")
    if hybrid:
        print(f"  hybrid: strong fraction {hybrid['strong_fraction']}, weak {hybrid['weak']}, "
              f"noise {hybrid['noise']}, seed {hybrid['seed']}")
    return 0


def run_sample_data(args: argparse.Namespace) -> int:
    from napari_hybridseg.core.data.sample_data import cached_sample_dir, shipped_sample_dir, write_sample_project

    shipped = shipped_sample_dir()
    # a source checkout regenerates its shipped folder; an installed package its cached copy
    default = shipped if (shipped.parent / "pyproject.toml").is_file() else cached_sample_dir()
    out = args.out or default
    path = write_sample_project(out, seed=args.seed)
    print(f"wrote the demo project to {path}")
    return 0
