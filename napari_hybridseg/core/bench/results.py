"""The files of a benchmark folder: settings, arms, grid thumbnails and ``results.json`` (see
:mod:`.protocol` for the layout)."""

from __future__ import annotations

import json
import os
import platform
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.data.collection import Collection

from .arms import ARMS
from .data import Prepared, _truth_of


def original_train_scale(train: Collection, size: int) -> float | None:
    """Median factor original -> training pixels of pre-resized training images (None: none is resized)."""
    sides = [max(s.meta["original_shape"]) for s in train if "original_shape" in s.meta]
    return float(size / np.median(sides)) if sides else None


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version(), "platform": platform.platform(), "machine": platform.machine(),
           "processor": platform.processor() or platform.machine(), "cpu_count": str(os.cpu_count())}
    for dist in ("napari-hybridseg", "torch", "segmentation-models-pytorch", "numpy", "scikit-image"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def _save_grid(out: Path, prepared: Prepared, grid_ids: list[str]) -> None:
    """Thumbnails of the grid's test images and truths, so the report can be redrawn from ``out`` alone."""
    from napari_hybridseg.core.data.images import to_float_rgb

    gdir = out / "grid"
    gdir.mkdir(parents=True, exist_ok=True)
    for sid in grid_ids:
        s = prepared.collection[sid]
        img = to_float_rgb(s.load_image())
        truth = _truth_of(s)
        step = max(1, int(np.ceil(max(img.shape[:2]) / 256)))
        np.savez_compressed(gdir / f"{sid}.npz", image=(img[::step, ::step] * 255).astype(np.uint8),
                            truth=truth[::step, ::step].astype(np.uint8), step=step)


def _save_grid_predictions(out: Path, arm: str, grid: Mapping[str, np.ndarray]) -> None:
    gdir = out / "grid"
    gdir.mkdir(parents=True, exist_ok=True)
    safe = arm.replace("+", "_")
    for sid, pred in grid.items():
        meta = np.load(gdir / f"{sid}.npz") if (gdir / f"{sid}.npz").exists() else None
        step = int(meta["step"]) if meta is not None else 1
        tmp = gdir / f".{sid}__{safe}.tmp.npz"
        np.savez_compressed(tmp, pred=np.asarray(pred)[::step, ::step].astype(np.uint8))
        os.replace(tmp, gdir / f"{sid}__{safe}.npz")


def collect_results(out: Path, *, targets: bool = True) -> dict[str, Any]:
    """Assemble ``results.json`` from the files in ``out`` (settings, split, finished arms, baselines).

    ``targets=False`` skips judging the targets (their bootstraps take seconds): between arms.
    """
    out = Path(out)
    settings = json.loads((out / "settings.json").read_text())
    split = json.loads((out / "split.json").read_text())
    arms = {}
    for arm in ARMS:
        path = out / "arms" / f"{arm.replace('+', '_')}.json"
        if path.is_file():
            rec = json.loads(path.read_text())
            rec.pop("gamma_history", None)  # kept in the arm file; results.json holds summaries
            arms[arm] = rec
    errors = {}
    for arm in ARMS:
        path = out / "arms" / f"{arm.replace('+', '_')}.error.txt"
        if arm not in arms and path.is_file():
            errors[arm] = path.read_text().strip()
    from .targets import check_targets

    device = next((rec.get("device") for rec in arms.values() if rec.get("device")), None)
    base_path = out / "baselines.json"
    baselines = json.loads(base_path.read_text()) if base_path.is_file() else None
    run = {"schema": 2, "settings": settings, "split": split, "device": device, "arms": arms, "errors": errors,
           "baselines": baselines}
    run["targets"] = check_targets([run]) if targets else []
    return run


def arm_file(out: Path, arm: str) -> Path:
    return Path(out) / "arms" / f"{arm.replace('+', '_')}.json"
