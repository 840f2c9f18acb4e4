"""A collection made of the layers the user already has in napari ("use the selected layers").

As napari-convpaint and micro-sam do, the plugin works on what is in the viewer: the selected
Image layers are the images, and Labels / Shapes / Points layers selected with them are their
mask, boxes and clicks. The session then shows and edits those very layers (see
``Session.set_collection(..., bound=...)``): nothing is copied into a second layer or hidden.

No Qt here; napari layers are inspected by type name so that importing this module is cheap.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.data.collection import Collection, Sample

from ._convert import rc_to_point, rectangle_to_box

__all__ = ["collection_from_layers", "default_layers_project"]


def _kind(layer: Any) -> str:
    return type(layer).__name__  # Image, Labels, Shapes, Points


def _source_path(layer: Any) -> Path | None:
    path = getattr(getattr(layer, "source", None), "path", None)
    return Path(path) if path else None


def _image_array(layer: Any) -> np.ndarray:
    data = layer.data
    if getattr(layer, "multiscale", False):
        data = data[0]
    arr = np.asarray(data)
    rgb = bool(getattr(layer, "rgb", False))
    if arr.ndim != (3 if rgb else 2):
        raise ValueError(f"layer {layer.name!r} is {arr.ndim}-D ({arr.shape}): HybridSeg segments 2-D images "
                         "(greyscale or RGB); pick one plane first (e.g. Layers > Split Stack)")
    return arr


def _to_data(image_layer: Any, layer: Any, coords: np.ndarray) -> np.ndarray:
    """``layer``'s data coordinates -> the image layer's data coordinates (through world space)."""
    coords = np.asarray(coords, dtype=float)
    if np.allclose(layer.scale, image_layer.scale) and np.allclose(layer.translate, image_layer.translate):
        return coords[:, -2:]
    world = np.array([layer.data_to_world(c) for c in coords])
    return np.array([image_layer.world_to_data(c) for c in world])[:, -2:]


def collection_from_layers(layers: list[Any], class_value: int = 1) -> tuple[Collection, dict[str, dict[str, Any]]]:
    """Build a collection from napari layers.

    Parameters
    ----------
    layers : list of napari layers
        The selection: at least one Image layer; Labels, Shapes and Points layers are optional.
    class_value : int
        Class given to boxes and points that carry no ``label`` feature.

    Returns
    -------
    (Collection, dict)
        The collection (one sample per Image layer, named after it) and, per sample id, the
        user's layers that hold it (``{"image": ..., "mask": ..., "boxes": ..., "points": ...}``).

    Raises
    ------
    ValueError
        No Image layer selected, an image that is not 2-D, or a mask of another size than its image.
    """
    images = [lyr for lyr in layers if _kind(lyr) == "Image" and not lyr.name.startswith("hybridseg ")]
    if not images:
        raise ValueError("Select at least one Image layer in napari's layer list (with its Labels, Shapes or "
                         "Points layers if you drew any), then press 'Use the selected layers'.")
    coll = Collection()
    bound: dict[str, dict[str, Any]] = {}
    arrays = {}
    for lyr in images:
        arr = _image_array(lyr)
        sid = coll.unique_id(lyr.name)
        path = _source_path(lyr)
        sample = Sample(id=sid, image=None if path is not None and path.is_file() else arr,
                        image_path=path if path is not None and path.is_file() else None,
                        meta={"shape": [int(arr.shape[0]), int(arr.shape[1])], "layer": lyr.name})
        coll.add(sample)
        bound[sid] = {"image": lyr}
        arrays[sid] = arr
    others = [lyr for lyr in layers if _kind(lyr) in ("Labels", "Shapes", "Points")
              and not lyr.name.startswith("hybridseg ")]
    for lyr in others:
        # which image does it belong to: the only one, or the only one of the same size
        if len(images) == 1:
            sid = coll.ids[0]
        else:
            same = [sid for sid, a in arrays.items() if _kind(lyr) == "Labels" and
                    tuple(np.shape(lyr.data)[-2:]) == tuple(a.shape[:2])]
            if len(same) != 1:
                continue  # ambiguous: left alone, not guessed
            sid = same[0]
        key = {"Labels": "mask", "Shapes": "boxes", "Points": "points"}[_kind(lyr)]
        if key in bound[sid]:
            continue  # one layer of each kind per image
        sample, image_layer = coll[sid], bound[sid]["image"]
        if key == "mask":
            data = np.asarray(lyr.data)
            if tuple(data.shape) != tuple(arrays[sid].shape[:2]):
                raise ValueError(f"Labels layer {lyr.name!r} is {data.shape}, image {image_layer.name!r} is "
                                 f"{arrays[sid].shape[:2]}: a mask must have its image's size")
            if data.any():
                sample.mask = data.copy()
        elif key == "boxes":
            feats = lyr.features
            labels = list(feats["label"]) if "label" in feats and len(feats) == len(lyr.data) else \
                [class_value] * len(lyr.data)
            sample.boxes = [rectangle_to_box(_to_data(image_layer, lyr, v), int(lbl))
                            for v, lbl in zip(lyr.data, labels)]
        else:
            feats = lyr.features
            n = len(lyr.data)
            labels = list(feats["label"]) if "label" in feats and len(feats) == n else [class_value] * n
            positive = list(feats["positive"]) if "positive" in feats and len(feats) == n else [True] * n
            coords = _to_data(image_layer, lyr, np.asarray(lyr.data)) if n else np.zeros((0, 2))
            sample.points = [rc_to_point(rc, int(lbl), bool(pos)) for rc, lbl, pos in zip(coords, labels, positive)]
        bound[sid][key] = lyr
    return coll, bound


def default_layers_project(layers: list[Any]) -> Path:
    """Where the project of the selected layers goes.

    Beside the first image's file (``<file stem>_hybridseg``) when it came from a file, else
    ``~/napari-hybridseg-projects/<layer name>`` (``HYBRIDSEG_PROJECTS_DIR`` replaces that folder).
    """
    images = [lyr for lyr in layers if _kind(lyr) == "Image"]
    first = images[0] if images else None
    path = _source_path(first) if first is not None else None
    if path is not None and path.is_file():
        return path.with_name(path.stem + "_hybridseg")
    root = Path(os.environ.get("HYBRIDSEG_PROJECTS_DIR", Path.home() / "napari-hybridseg-projects"))
    name = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in (first.name if first else "layers"))
    return root / (name or "layers")
