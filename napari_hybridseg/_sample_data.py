"""napari sample data (File > Open Sample > HybridSeg): the synthetic demo project as layers.

Each provider returns layer data tuples, one stack per modality: the images,
the strong masks (a Labels layer; empty frames have no mask), the weak boxes
(a Shapes layer) or landmark points (a Points layer), with the sample ids and
tags as layer features. The HybridSeg widget opens the same project with its
roles and learned weights; this is the quick look.

napari draws pixel ``(r, c)`` centred on ``(r, c)``; the project stores pixel
edges (a pixel covers ``[c, c + 1)``), so coordinates are shifted by half a
pixel here.
"""

from __future__ import annotations

import numpy as np

__all__ = ["asoct_sample", "colonoscopy_sample"]


def _load(modality: str):
    from napari_hybridseg.core.data.sample_data import sample_project_path
    from napari_hybridseg.core.data.store import load_project

    collection = load_project(sample_project_path())
    samples = [s for s in collection if s.meta.get("modality") == modality]
    return collection, samples


def _common(samples, name: str) -> list[tuple]:
    images = np.stack([s.load_image() for s in samples])
    masks = np.stack([s.mask if s.mask is not None else np.zeros(s.shape, np.uint8) for s in samples])
    rgb = images.ndim == 4
    return [
        (images, {"name": f"{name} images", "rgb": rgb, "metadata": {"sample_ids": [s.id for s in samples],
                                                                     "tags": [list(s.tags) for s in samples]}},
         "image"),
        (masks.astype(np.uint8), {"name": f"{name} strong masks", "opacity": 0.5}, "labels"),
    ]


def colonoscopy_sample() -> list[tuple]:
    """Colonoscopy-like frames with polyp masks and weak boxes (some wrong on purpose)."""
    collection, samples = _load("colonoscopy")
    layers = _common(samples, "colonoscopy")
    rects, ids, labels = [], [], []
    for f, s in enumerate(samples):
        for b in s.boxes:
            y0, x0, y1, x1 = b.y0 - 0.5, b.x0 - 0.5, b.y1 - 0.5, b.x1 - 0.5
            rects.append(np.array([[f, y0, x0], [f, y0, x1], [f, y1, x1], [f, y1, x0]], float))
            ids.append(s.id)
            labels.append(b.label)
    color = {c.value: c.color for c in collection.classes}
    layers.append((rects, {"name": "colonoscopy boxes", "shape_type": "rectangle", "ndim": 3,
                           "edge_color": [color[v] for v in labels], "face_color": "transparent",
                           "edge_width": 2, "features": {"sample": ids, "label": labels}}, "shapes"))
    return layers


def asoct_sample() -> list[tuple]:
    """AS-OCT-like B-scans with scleral-spur masks and landmark points (some wrong on purpose)."""
    collection, samples = _load("as-oct")
    layers = _common(samples, "AS-OCT")
    coords, ids, labels = [], [], []
    for f, s in enumerate(samples):
        for p in s.points:
            coords.append([f, p.y - 0.5, p.x - 0.5])
            ids.append(s.id)
            labels.append(p.label)
    color = {c.value: c.color for c in collection.classes}
    layers.append((np.asarray(coords, float).reshape(-1, 3),
                   {"name": "AS-OCT landmark points", "size": 7, "ndim": 3,
                    "face_color": [color[v] for v in labels] or "white",
                    "features": {"sample": ids, "label": labels}}, "points"))
    return layers
