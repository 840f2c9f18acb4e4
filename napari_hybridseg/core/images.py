"""Reading images and masks, and turning any image into network input.

Accepts 2D greyscale or RGB images of any size in uint8, uint16 or float;
RGBA is reduced to RGB with a warning. Masks are read as label images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

__all__ = [
    "ImageError",
    "as_image2d",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_labels",
    "to_float_rgb",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageError(ValueError):
    """An image or mask that cannot be used, with what to do about it."""


def as_image2d(image: np.ndarray, name: str = "image") -> np.ndarray:
    """Validate an array as a 2D greyscale or RGB image.

    RGBA is reduced to RGB (alpha dropped) with a warning; a trailing channel
    axis of size 1 is squeezed; 2-channel images are rejected.

    Returns
    -------
    numpy.ndarray
        ``(H, W)`` or ``(H, W, 3)`` with the original dtype.
    """
    arr = np.asarray(image)
    if arr.dtype == bool:
        arr = arr.astype(np.uint8) * 255
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim == 3 and arr.shape[-1] == 4:
        warnings.warn(f"{name}: RGBA image reduced to RGB (alpha channel dropped)", stacklevel=2)
        arr = arr[..., :3]
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] == 3):
        if min(arr.shape[:2]) < 2:
            raise ImageError(f"{name}: image of shape {arr.shape} is too small (need at least 2x2)")
        if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
            raise ImageError(f"{name}: unsupported pixel type {arr.dtype}")
        return arr
    raise ImageError(
        f"{name}: expected a 2D greyscale (H, W) or colour (H, W, 3) image, got shape {arr.shape}. "
        "Stacks and volumes are not supported: split them into 2D images first."
    )


def read_image(path: str | Path) -> np.ndarray:
    """Read a 2D image file (PNG, JPEG, TIFF, BMP) as greyscale or RGB."""
    path = Path(path)
    if not path.exists():
        raise ImageError(f"{path}: file not found")
    try:
        if path.suffix.lower() in (".tif", ".tiff"):
            import tifffile

            arr = tifffile.imread(str(path))
        else:
            import imageio.v3 as iio

            arr = iio.imread(str(path))
    except Exception as exc:  # corrupt or unreadable file
        raise ImageError(f"{path}: cannot read image ({exc.__class__.__name__}: {exc})") from exc
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # RGBA reduction is expected for files
        if np.asarray(arr).ndim == 3 and np.asarray(arr).shape[-1] == 4:
            arr = np.asarray(arr)[..., :3]
        return as_image2d(arr, name=str(path))


def read_mask(path: str | Path, *, binary: bool | None = None) -> np.ndarray:
    """Read a mask file as a uint8/uint16 label image.

    Parameters
    ----------
    binary : bool or None
        ``True``: threshold at half range (lossy JPEG masks, 0/255 masks,
        1-bit, RGB and RGBA masks all become 0/1). ``False``: keep values as
        labels. ``None`` (default): binary if the file is a JPEG, has colour
        channels, or holds only the values {0, 255} or {0, 65535}; labels otherwise (so a
        {0, 1} mask keeps its values, which is the same thing).
    """
    path = Path(path)
    if path.suffix.lower() not in (".tif", ".tiff"):
        fast = _read_mask_pil(path, binary)
        if fast is not None:
            return fast
    arr = np.asarray(read_image(path))
    if arr.ndim == 3:
        # convert('L') as PIL does: ITU-R 601-2 luma
        arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        if binary is None:
            binary = True
    if binary is None:
        values = np.unique(arr)
        present = set(values.tolist())
        # 0/255 and 16-bit 0/65535 are binary masks saved for viewing, not label values 255 or 65535
        binary = path.suffix.lower() in (".jpg", ".jpeg") or present <= {0, 255} or present <= {0, 65535}
    if binary:
        if np.issubdtype(arr.dtype, np.floating) and arr.max(initial=0) <= 1.0:
            return (arr > 0.5).astype(np.uint8)
        top = 65535 if np.asarray(arr).max(initial=0) > 255 else 255
        return (arr > top // 2).astype(np.uint8)
    if np.issubdtype(arr.dtype, np.floating):
        arr = np.rint(arr)
    return arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)


def _read_mask_pil(path: Path, binary: bool | None) -> np.ndarray | None:
    """8-bit, 1-bit and colour masks through PIL's C code (``convert('L') > 127``, as the datasets' own
    recipe says); ``None`` for anything else (16-bit, float, unreadable), which the general path handles."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            if mode == "1":
                return np.asarray(im, dtype=np.uint8)
            if mode == "P":
                # palette masks (PASCAL VOC style) store label values as palette indices; their
                # colours can be dark (label 1 = dark red), so thresholding the grey value would lose them
                idx = np.asarray(im)
                if binary:
                    return (idx > 0).astype(np.uint8)
                present = np.flatnonzero(np.bincount(idx.ravel(), minlength=256))
                return (idx > 127).astype(np.uint8) if set(present.tolist()) <= {0, 255} else idx.copy()
            if mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr") and binary is not False:
                return (np.asarray(im.convert("L")) > 127).astype(np.uint8)
            if mode != "L":
                return None
            arr = np.asarray(im)
    except Exception:  # let the general reader produce the error message
        return None
    if binary is None:
        present = np.flatnonzero(np.bincount(arr.ravel(), minlength=256))
        binary = path.suffix.lower() in (".jpg", ".jpeg") or set(present.tolist()) <= {0, 255}
    return (arr > 127).astype(np.uint8) if binary else arr.copy()


def to_float_rgb(image: np.ndarray) -> np.ndarray:
    """Any accepted image -> float32 ``(H, W, 3)`` in [0, 1].

    uint8 is divided by 255. uint16 and float images are scaled per image by
    their 0.5 and 99.5 percentiles, which is robust to 12-bit data in 16-bit
    containers and to outliers. Greyscale is repeated to three channels.
    """
    arr = as_image2d(image)
    if arr.dtype == np.uint8:
        out = arr.astype(np.float32) / 255.0
    else:
        f = arr.astype(np.float32)
        lo, hi = np.percentile(f, [0.5, 99.5])
        if hi <= lo:
            lo, hi = float(f.min()), float(f.max())
        out = np.clip((f - lo) / (hi - lo), 0, 1) if hi > lo else np.zeros_like(f)
    if out.ndim == 2:
        out = np.repeat(out[..., None], 3, axis=2)
    return np.ascontiguousarray(out, dtype=np.float32)


def resize_image(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float ``(H, W[, C])`` image to ``size = (h, w)``."""
    from skimage.transform import resize

    out_shape = tuple(size) + image.shape[2:]
    if image.shape[:2] == tuple(size):
        return image
    return resize(image, out_shape, order=1, mode="edge", anti_aliasing=True,
                  preserve_range=True).astype(image.dtype)


def resize_labels(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``size = (h, w)``."""
    if labels.shape[:2] == tuple(size):
        return labels
    h, w = labels.shape[:2]
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(int), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(int), w - 1)
    return labels[rows[:, None], cols[None, :]]
