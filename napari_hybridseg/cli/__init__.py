"""The ``hybridseg`` command line.

Each verb lives in its own module that defines ``register(subparsers)``; the
module's handler receives the parsed arguments. Errors the user can act on
are printed as one line (``hybridseg: error: ...``) with a non-zero exit;
set ``HYBRIDSEG_DEBUG=1`` for the full traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

__all__ = ["CLIError", "main"]

#: verb modules, in the order their verbs appear in ``--help``
VERB_MODULES = ("import_cmd", "train_cmd", "export_cmd", "demo_cmd", "bench_cmd", "speed_cmd", "perf_cmd")


class CLIError(Exception):
    """An error to print as one line, with exit status ``code``."""

    def __init__(self, message: str, code: int = 2):
        super().__init__(message)
        self.code = code


def build_parser() -> argparse.ArgumentParser:
    from napari_hybridseg import __version__

    parser = argparse.ArgumentParser(
        prog="hybridseg",
        description="Label-efficient 2D medical image segmentation: a few masks, many weak labels.",
    )
    parser.add_argument("--version", action="version", version=f"napari-hybridseg {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for name in VERB_MODULES:
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    try:
        return int(args.handler(args) or 0)
    except KeyboardInterrupt:
        print("hybridseg: interrupted", file=sys.stderr)
        return 130
    except CLIError as exc:
        if os.environ.get("HYBRIDSEG_DEBUG"):
            raise
        print(f"hybridseg: error: {exc}", file=sys.stderr)
        return exc.code
    except (ValueError, OSError, RuntimeError) as exc:
        if os.environ.get("HYBRIDSEG_DEBUG"):
            raise
        print(f"hybridseg: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
