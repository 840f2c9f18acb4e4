"""Behaviour records: seeded runs whose numbers a refactoring must not change.

The same commands a user types (``hybridseg train`` and ``hybridseg bench``),
on one thread in fp32 so that a CPU gives the same bits every time. The record
is the loss history and the final weight of every weak image of a train run,
and every arm's scores and weights of a bench run.

Record (before a change) and compare (after it)::

    python tests/_golden.py record            # the test-sized runs -> tests/golden/NAME.CAPABILITY.json
    python tests/_golden.py full KVASIR OUT.json   # the issue's full-size runs -> OUT.json

``tests/test_behaviour_identity.py`` reruns the test-sized ones and compares.
A record holds for one CPU capability (torch's kernels differ between AVX2 and
AVX512, and 8 training steps amplify a last-bit difference to 17% in a small
loss term), so there is one file per capability: :func:`record_path`.
"""

from __future__ import annotations

import json
import platform
import shutil
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
GOLDEN = Path(__file__).resolve().parent / "golden"

#: flags every recorded train run uses: seeded, one thread, fp32, every method term on
TRAIN_FLAGS = ["--seed", "0", "--dcr", "--pixel-weights", "exact", "--precision", "fp32", "--threads", "1",
               "--no-save-weights", "--quiet"]


def fingerprint() -> dict:
    """What decides the bits of a CPU float computation besides the code."""
    import torch

    return {"torch": torch.__version__, "machine": platform.machine(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "python": platform.python_version()}


def record_path(name: str, fp: dict | None = None) -> Path:
    """Where the record ``name`` of a machine with fingerprint ``fp`` (default: this one) lives."""
    fp = fp or fingerprint()
    return GOLDEN / f"{name}.{fp['cpu_capability']}.json"


def _main(argv: list[str]) -> int:
    from napari_hybridseg.cli import main

    return main(argv)


def record_train(workdir: Path, *, steps: int = 20, size: int | None = None) -> dict:
    """A seeded train run on a copy of the sample data (DII, DCR, exact pixel weights)."""
    import torch

    project, run = workdir / "project", workdir / "run"
    shutil.rmtree(project, ignore_errors=True)
    shutil.copytree(REPO / "sample_data", project)
    argv = ["train", str(project), "--out", str(run), "--force", "--steps", str(steps), *TRAIN_FLAGS]
    if size is not None:
        argv += ["--size", str(size)]
    threads = torch.get_num_threads()
    try:
        assert _main(argv) == 0, "hybridseg train failed"
    finally:
        torch.set_num_threads(threads)
    rec = json.loads((run / "run.json").read_text())
    gamma = json.loads((run / "gamma.json").read_text())
    return {"loss_history": rec["loss_history"],
            "weights": {k: v["weight"] for k, v in sorted(gamma.items())}}


def synthetic_dataset(root: Path, n: int = 24, seed: int = 1) -> Path:
    """A folder dataset (images/, masks/) of grey images with one bright disk each."""
    import imageio.v3 as iio

    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(n):
        h, w = 40, 48
        r = int(rng.integers(5, 9))
        cy, cx = int(rng.integers(r + 1, h - r - 1)), int(rng.integers(r + 1, w - r - 1))
        yy, xx = np.mgrid[0:h, 0:w]
        mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
        img = (40 + 160 * mask + rng.integers(0, 30, (h, w))).astype(np.uint8)
        iio.imwrite(root / "images" / f"case{i:02d}.png", img)
        iio.imwrite(root / "masks" / f"case{i:02d}.png", mask * 255)
    return root


def _scores(value):
    """The numbers of a results.json arm, without timings and paths."""
    skip = ("config", "versions", "mem", "sec", "wall", "time", "_s", "path", "run_dir", "eta", "threads",
            "command", "minutes", "dir")
    if isinstance(value, dict):
        return {k: _scores(v) for k, v in sorted(value.items())
                if not any(s in k for s in skip)}
    if isinstance(value, list):
        return [_scores(v) for v in value]
    return value


def record_bench(dataset: Path, layout: str, out: Path, *, steps: int, limit: int | None = None,
                 arms: str | None = None, size: int | None = None, extra: list[str] = ()) -> dict:
    """A seeded bench run; every arm's scores and learned weights."""
    import torch

    shutil.rmtree(out, ignore_errors=True)
    argv = ["bench", str(dataset), "--layout", layout, "--out", str(out), "--steps", str(steps),
            "--seed", "0", "--set", "threads=1", "--set", "precision=fp32", *extra]
    if limit is not None:
        argv += ["--limit", str(limit)]
    if arms is not None:
        argv += ["--arms", arms]
    if size is not None:
        argv += ["--size", str(size)]
    threads = torch.get_num_threads()
    try:
        assert _main(argv) == 0, "hybridseg bench failed"
    finally:
        torch.set_num_threads(threads)
    results = json.loads((out / "results.json").read_text())
    return {"arms": _scores(results["arms"])}


#: the test-sized records: what tests/test_behaviour_identity.py reruns
def small_train(workdir: Path) -> dict:
    return record_train(workdir, steps=8, size=64)


def small_bench(workdir: Path) -> dict:
    data = synthetic_dataset(workdir / "ds")
    return record_bench(data, "folder", workdir / "bench", steps=6, size=32,
                        arms="strong-only,naive,fixed,dii,oracle,dii+dcr,full,all-strong",
                        extra=["--strong-fraction", "0.25"])


def main(argv: list[str]) -> int:
    import tempfile

    if argv[:1] == ["record"]:
        GOLDEN.mkdir(exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            for name, fn in (("train", small_train), ("bench", small_bench)):
                rec = {"fingerprint": fingerprint(), "record": fn(Path(tmp) / name)}
                record_path(name).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
                print(f"wrote {record_path(name)}")
        return 0
    if argv[:1] == ["full"] and len(argv) == 3:
        with tempfile.TemporaryDirectory() as tmp:
            rec = {"fingerprint": fingerprint(),
                   "train": record_train(Path(tmp) / "train", steps=20),
                   "bench": record_bench(Path(argv[1]), "kvasir", Path(tmp) / "bench", steps=20, limit=60)}
        Path(argv[2]).write_text(json.dumps(rec, indent=1, sort_keys=True) + "\n")
        print(f"wrote {argv[2]}")
        return 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main(sys.argv[1:]))
