"""Geometry and colour conversions between the data model and napari layers.

Pure numpy (no Qt, no napari, no torch) so it is cheap to import and easy to
test.

The data model places pixel ``(row, col)`` on the continuous square
``[col, col + 1) x [row, row + 1)`` (see :mod:`napari_hybridseg.core.data.collection`),
whereas napari puts the *centre* of pixel ``(row, col)`` at the data
coordinate ``(row, col)``. A model coordinate is therefore the napari data
coordinate plus one half, with the axes swapped (napari is ``(y, x)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from napari_hybridseg.core.data.collection import Box, Point

__all__ = [
    "WEIGHT_COLORMAP",
    "box_to_rectangle",
    "boxes_to_shapes",
    "hex_to_rgba",
    "point_to_rc",
    "points_to_layer",
    "rectangle_to_box",
    "weight_to_rgba",
    "weights_to_rgba",
]

#: Colour stops for learned weights: a perceptual diverging scale, magenta for
#: down-weighted (0, "look at this one"), light grey for undecided (0.5), teal
#: for trusted (1); the ends of ColorBrewer's PiYG and BrBG. No default class
#: colour (orange, blue, green, purple, ...), the prediction outline (the class
#: colour) or the "not weighted yet" yellow lies on it, so a weight is never
#: mistaken for a class or for the prediction.
WEIGHT_COLORMAP: tuple[tuple[float, tuple[float, float, float]], ...] = (
    (0.0, (0.816, 0.110, 0.545)),
    (0.25, (0.914, 0.639, 0.788)),
    (0.5, (0.969, 0.969, 0.969)),
    (0.75, (0.502, 0.804, 0.757)),
    (1.0, (0.004, 0.522, 0.443)),
)
#: Colour of an annotation whose weight is not learned yet (yellow: not on the weight scale).
UNWEIGHTED_RGBA = (1.0, 0.85, 0.0, 1.0)
_HALF = 0.5


def hex_to_rgba(color: str, alpha: float = 1.0) -> tuple[float, float, float, float]:
    """``"#rrggbb"`` -> RGBA floats in [0, 1]."""
    c = color.lstrip("#")
    if len(c) != 6:
        raise ValueError(f"colour {color!r} is not of the form #rrggbb")
    r, g, b = (int(c[i : i + 2], 16) / 255.0 for i in (0, 2, 4))
    return (r, g, b, float(alpha))


def weights_to_rgba(weights: Sequence[float | None] | np.ndarray) -> np.ndarray:
    """Map weights in [0, 1] to RGBA rows; ``None``/NaN gets :data:`UNWEIGHTED_RGBA`.

    Examples
    --------
    >>> weights_to_rgba([0.0, 1.0])[:, :3].round(2).tolist()
    [[0.82, 0.11, 0.55], [0.0, 0.52, 0.44]]
    """
    w = np.array([np.nan if v is None else float(v) for v in weights], dtype=float)
    out = np.tile(np.asarray(UNWEIGHTED_RGBA, float), (len(w), 1))
    ok = np.isfinite(w)
    if ok.any():
        stops = np.array([s for s, _ in WEIGHT_COLORMAP])
        cols = np.array([c for _, c in WEIGHT_COLORMAP])
        v = np.clip(w[ok], 0.0, 1.0)
        for ch in range(3):
            out[ok, ch] = np.interp(v, stops, cols[:, ch])
        out[ok, 3] = 1.0
    return out


def weight_to_rgba(weight: float | None) -> tuple[float, float, float, float]:
    """One weight -> RGBA (see :func:`weights_to_rgba`)."""
    return tuple(float(x) for x in weights_to_rgba([weight])[0])  # type: ignore[return-value]


# -- boxes <-> napari rectangles ------------------------------------------
def box_to_rectangle(box: Box) -> np.ndarray:
    """A model box -> the 4 corners of a napari rectangle in data ``(row, col)``.

    Examples
    --------
    >>> box_to_rectangle(Box(2, 1, 3, 2)).tolist()  # exactly the pixel (row 1, col 2)
    [[0.5, 1.5], [0.5, 2.5], [1.5, 2.5], [1.5, 1.5]]
    """
    r0, c0 = box.y0 - _HALF, box.x0 - _HALF
    r1, c1 = box.y1 - _HALF, box.x1 - _HALF
    return np.array([[r0, c0], [r0, c1], [r1, c1], [r1, c0]], dtype=float)


def rectangle_to_box(corners: np.ndarray, label: int, box_id: str | None = None) -> Box:
    """The bounding rectangle of napari shape vertices (data ``(row, col)``) -> a model box.

    Any polygon is accepted (its bounding box is taken), so a rotated or
    hand-drawn shape still becomes a valid box.
    """
    v = np.asarray(corners, dtype=float)[:, -2:]
    (r0, c0), (r1, c1) = v.min(axis=0), v.max(axis=0)
    kwargs = {"id": box_id} if box_id else {}
    return Box(c0 + _HALF, r0 + _HALF, c1 + _HALF, r1 + _HALF, label=int(label), **kwargs)


def boxes_to_shapes(boxes: Sequence[Box]) -> list[np.ndarray]:
    """Every box as napari rectangle corners."""
    return [box_to_rectangle(b) for b in boxes]


# -- points <-> napari points ---------------------------------------------
def point_to_rc(point: Point) -> tuple[float, float]:
    """A model point -> napari data ``(row, col)``."""
    return (point.y - _HALF, point.x - _HALF)


def rc_to_point(rc: Sequence[float], label: int, positive: bool, point_id: str | None = None) -> Point:
    """Napari data ``(row, col)`` -> a model point."""
    r, c = float(rc[-2]), float(rc[-1])
    kwargs = {"id": point_id} if point_id else {}
    return Point(c + _HALF, r + _HALF, label=int(label), positive=bool(positive), **kwargs)


def points_to_layer(points: Sequence[Point]) -> np.ndarray:
    """Every point as an ``(n, 2)`` array of napari data ``(row, col)``."""
    if not points:
        return np.zeros((0, 2), dtype=float)
    return np.array([point_to_rc(p) for p in points], dtype=float)
