"""Pixel-weight maps as pictures a person can open: image | w_init | w_own, one colour scale."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_hybridseg.core.data.images import to_float_rgb

__all__ = ["colourise", "write_weight_overview"]


def colourise(weights: np.ndarray, vmax: float, cmap: str = "magma") -> np.ndarray:
    """(H, W) non-negative weights -> (H, W, 3) uint8 through ``cmap``, 0..vmax (clipped above)."""
    from matplotlib import colormaps

    scaled = np.clip(np.asarray(weights, dtype=np.float64) / max(float(vmax), 1e-30), 0.0, 1.0)
    return (colormaps[cmap](scaled)[..., :3] * 255).round().astype(np.uint8)


def write_weight_overview(path: str | Path, image: np.ndarray, w_init: np.ndarray, w_own: np.ndarray,
                          vmax: float, gap: int = 4) -> Path:
    """Write ``image | w_init | w_own`` side by side as one RGB PNG (atomically).

    ``image`` is any image the project accepts (greyscale or RGB, any dtype) at
    the maps' size; the two maps share the colour scale ``0..vmax``.
    """
    from PIL import Image

    rgb = (np.clip(to_float_rgb(image), 0, 1) * 255).round().astype(np.uint8)
    if rgb.shape[:2] != np.shape(w_init) or np.shape(w_init) != np.shape(w_own):
        raise ValueError(f"image {rgb.shape[:2]} and weight maps {np.shape(w_init)}, {np.shape(w_own)} "
                         "must have the same size")
    h = rgb.shape[0]
    spacer = np.full((h, gap, 3), 255, np.uint8)
    row = np.concatenate([rgb, spacer, colourise(w_init, vmax), spacer, colourise(w_own, vmax)], axis=1)
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(row).save(tmp)
    tmp.replace(path)
    return path
