"""The run folder: model(s), ``run.json`` and ``gamma.json``.

Layout of ``RUN/``::

    model/            network 1 (inference), segmentation-models-pytorch format
    model_b/          network 2 when dynamic co-regularization is on
    run.json          settings, seed, versions, classes, tags, step, loss history,
                      learned weights and their histories
    gamma.json        every weak sample id -> final weight, history, corrupted flag

JSON files are written to a temporary file and renamed into place, so an
interrupted write never leaves a truncated file.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from .collection import Collection, WeightState

__all__ = ["gamma_record", "read_run", "versions", "write_json", "write_run"]


def write_json(path: Path, data: Any) -> None:
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


def versions() -> dict[str, str]:
    import segmentation_models_pytorch as smp
    import torch

    from napari_hybridseg import __version__

    return {"napari_hybridseg": __version__, "torch": torch.__version__,
            "segmentation_models_pytorch": smp.__version__, "python": platform.python_version()}


def _weights(states: dict[str, WeightState]) -> dict[str, dict]:
    return {k: {"value": s.value, "history": [list(h) for h in s.history]} for k, s in states.items()}


def gamma_record(collection: Collection) -> dict[str, dict]:
    """``gamma.json`` content: per weak sample, its weight, history and corruption flag."""
    out = {}
    for sid, state in sorted(collection.sample_weights.items(), key=lambda kv: kv[1].value):
        sample = collection.samples.get(sid)
        out[sid] = {
            "weight": state.value,
            "history": [list(h) for h in state.history],
            "corrupted": bool(sample.corrupted) if sample is not None else False,
            "corruption": sample.corruption if sample is not None else None,
        }
    return out


def write_run(run_dir: Path, *, collection: Collection, config_dict: dict, step: int, total_steps: int,
              loss_history: list, extra: dict | None = None) -> None:
    """Write ``run.json`` and ``gamma.json`` (models are written by :func:`models.save_model`)."""
    run_dir = Path(run_dir)
    record = {
        "format": 1,
        "step": int(step),
        "total_steps": int(total_steps),
        "settings": config_dict,
        "seed": config_dict.get("seed"),
        "versions": versions(),
        "classes": [{"name": c.name, "value": c.value, "color": c.color}
                    for c in sorted(collection.classes, key=lambda c: c.value)],
        "tags": [{"name": t.name, "implies": t.implies.value, "class_value": t.class_value}
                 for t in collection.tag_defs],
        "loss_history": loss_history,
        "sample_weights": _weights(collection.sample_weights),
        "annotation_weights": _weights(collection.annotation_weights),
        **(extra or {}),
    }
    write_json(run_dir / "run.json", record)
    write_json(run_dir / "gamma.json", gamma_record(collection))


def read_run(run_dir: str | Path) -> dict:
    """Read ``run.json`` of a run folder, with a clear error if it is not one."""
    path = Path(run_dir) / "run.json"
    if not path.exists():
        raise ValueError(f"{run_dir}: no run.json; pass a folder written by `hybridseg train --out`")
    return json.loads(path.read_text())
