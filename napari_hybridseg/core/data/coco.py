"""COCO export of a collection's boxes and points (with their learned weights)."""

from __future__ import annotations

from pathlib import Path

from napari_hybridseg.core.data.collection import Collection
from napari_hybridseg.core.data.store_journal import _relpath, _write_json
from napari_hybridseg.core.data.store_read import _sample_shape


def export_coco(collection: Collection, out_json: str | Path) -> Path:
    """Write the boxes and points of ``collection`` as a COCO JSON file.

    Boxes become ``bbox`` annotations (``[x, y, width, height]``). Points
    become keypoint annotations with one keypoint ``[x, y, 2]`` and a zero
    size box at the point; ``"positive": false`` marks background clicks.
    Every annotation carries ``"hybridseg_id"`` (the box / point id) and,
    where learned, ``"weight"`` (its sample's gamma). Category ids
    are the class label values; image ids count from 1 in collection order
    with the sample id in ``"hybridseg_sample_id"``.
    """
    out = Path(out_json)
    root = Path(collection.meta.get("project_dir", out.parent))
    images, annotations = [], []
    ann_id = 0
    for image_id, s in enumerate(collection, start=1):
        h, w = _sample_shape(s)
        file_name = _relpath(Path(s.image_path), root) if s.image_path is not None else f"{s.id}.png"
        images.append({"id": image_id, "file_name": file_name, "height": h, "width": w,
                       "hybridseg_sample_id": s.id, "tags": list(s.tags)})
        sample_weight = collection.weight_of(s.id)
        for b in s.boxes:
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": b.label,
                   "bbox": [b.x0, b.y0, b.x1 - b.x0, b.y1 - b.y0], "area": b.area, "iscrowd": 0,
                   "hybridseg_id": b.id}
            if sample_weight is not None:
                ann["weight"] = sample_weight
            annotations.append(ann)
        for p in s.points:
            ann_id += 1
            ann = {"id": ann_id, "image_id": image_id, "category_id": p.label, "bbox": [p.x, p.y, 0.0, 0.0],
                   "area": 0.0, "iscrowd": 0, "keypoints": [p.x, p.y, 2], "num_keypoints": 1,
                   "positive": p.positive, "hybridseg_id": p.id}
            if sample_weight is not None:
                ann["weight"] = sample_weight
            annotations.append(ann)
    categories = [{"id": c.value, "name": c.name, "supercategory": "", "keypoints": ["point"], "skeleton": []}
                  for c in collection.classes]
    _write_json(out, {"info": {"description": "exported by napari-hybridseg", "version": "1.0"},
                      "images": images, "annotations": annotations, "categories": categories})
    return out
