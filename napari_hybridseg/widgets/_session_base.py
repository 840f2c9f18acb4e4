"""What the session's parts share: the layer names, the weight colormap, the store import, ``connect_once``."""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["LAYER_NAMES", "connect_once", "weight_colormap"]

LAYER_NAMES = {
    "image": "hybridseg image",
    "pixel_weights": "hybridseg pixel weights",
    "prediction": "hybridseg prediction",
    "mask": "hybridseg mask",
    "boxes": "hybridseg boxes",
    "points": "hybridseg points",
}
_BG_POINT_RGBA = (0.1, 0.1, 0.1, 1.0)


def weight_colormap():
    """The learned-weight scale (:data:`~._convert.WEIGHT_COLORMAP`) as a napari colormap, for the heatmap."""
    from napari.utils.colormaps import Colormap

    from ._convert import WEIGHT_COLORMAP

    return Colormap(colors=[(*c, 1.0) for _, c in WEIGHT_COLORMAP], controls=[s for s, _ in WEIGHT_COLORMAP],
                    name="hybridseg weights")



def _store():
    try:
        from napari_hybridseg.core.data import store
    except ImportError as exc:  # the storage module is part of the foundation
        raise RuntimeError(
            "napari_hybridseg.core.data.store is not available: reinstall napari-hybridseg "
            f"(pip install -e .) ({exc})"
        ) from exc
    return store



def connect_once(signal, slot: Callable) -> None:
    """Connect ``slot`` to ``signal`` unless it is already connected."""
    try:
        signal.disconnect(slot)
    except (TypeError, ValueError, RuntimeError):
        pass
    signal.connect(slot)
