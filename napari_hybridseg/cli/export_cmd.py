"""``hybridseg export RUN --bioimageio OUT.zip``: a trained run as a bioimage.io model package.

torch and bioimageio are imported inside the handler so that ``hybridseg --help`` stays fast.
"""

from __future__ import annotations

import argparse
import getpass
from pathlib import Path

from napari_hybridseg.cli import CLIError


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "export",
        help="write a trained run as a bioimage.io model package (for other tools)",
        description="Write network 1 of RUN as a bioimage.io model package: TorchScript weights, the ImageNet "
                    "preprocessing, a test input and its output, the class list, the citations, and the learned "
                    "per-image weights (gamma.json) as an attachment. The package is validated with "
                    "bioimageio.spec before the command returns. Needs: pip install 'napari-hybridseg[bioimageio]'.",
    )
    p.add_argument("run", type=Path, metavar="RUN", help="run folder written by `hybridseg train --out`")
    p.add_argument("--bioimageio", required=True, type=Path, metavar="OUT.zip", help="the package to write")
    p.add_argument("--name", help="the model's name (default: hybridseg <run folder name>)")
    p.add_argument("--author", action="append", default=[], metavar="NAME",
                   help="an author (repeatable; default: your user name)")
    p.add_argument("--license", default="CC-BY-4.0", metavar="SPDX", help="the weights' licence (default: %(default)s)")
    p.add_argument("--test-image", type=Path, metavar="IMAGE",
                   help="an image for the package's test input (default: a synthetic one)")
    p.add_argument("--test", action="store_true",
                   help="also run the test input with bioimageio.core and compare with the test output")
    p.set_defaults(handler=run_export)


def run_export(args: argparse.Namespace) -> int:
    from napari_hybridseg.core.prediction.bioimageio_export import check_package, export_bioimageio

    if not (args.run / "run.json").is_file():
        raise CLIError(f"{args.run}: not a run folder (no run.json); pass the --out folder of `hybridseg train`")
    out: Path = args.bioimageio
    if out.suffix.lower() != ".zip":
        raise CLIError(f"{out}: a bioimage.io package is a .zip file; name it e.g. {out.with_suffix('.zip').name}")
    if args.test_image is not None and not args.test_image.is_file():
        raise CLIError(f"--test-image {args.test_image}: no such file")
    authors = tuple(args.author) or (getpass.getuser() or "napari-hybridseg user",)
    result = export_bioimageio(args.run, out, name=args.name, authors=authors, license=args.license,
                               test_image=args.test_image)
    print(f"wrote {result.path} (bioimage.io model: {', '.join(result.weights)} weights, classes "
          f"{', '.join(result.classes)}); it validates with bioimageio.spec")
    if args.test:
        problems = check_package(out, reproduce=True)
        if problems:
            raise CLIError(f"{out}: bioimageio.core's test failed: {problems}", code=1)
        print("bioimageio.core reproduces the test output")
    return 0
