"""Reading images and masks, and turning any image into network input.

Accepts 2D greyscale or RGB images of any size in uint8, uint16 or float;
RGBA is reduced to RGB with a warning. Masks are read as label images.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from napari_hybridseg.core.errors import HybridsegError

__all__ = [
    "MASK_MODES",
    "ImageError",
    "MaskDecision",
    "MaskStats",
    "decide_masks",
    "read_mask_raw",
    "as_image2d",
    "read_image",
    "read_mask",
    "resize_image",
    "resize_labels",
    "to_float_rgb",
    "truncation",
]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")


class ImageError(HybridsegError, ValueError):
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


# ----------------------------------------------------------------------------------------------
# masks of a whole dataset: read undecided, decide once, convert
# ----------------------------------------------------------------------------------------------
MASK_MODES = ("auto", "binary", "labels", "rgb")

#: a pixel is coloured when its channels differ by more than this (JPEG chroma noise stays below)
_COLOUR_SPREAD = 40
#: a colour of a colour-coded mask must cover this share of all non-black pixels to become a class
_MIN_COLOUR_SHARE = 0.01
#: more distinct non-zero values than this is not a small label set
_MAX_LABELS = 64

_COLOUR_NAMES = {
    "red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255), "yellow": (255, 255, 0),
    "cyan": (0, 255, 255), "magenta": (255, 0, 255), "white": (255, 255, 255), "orange": (255, 165, 0),
    "purple": (128, 0, 128), "grey": (128, 128, 128), "dark red": (128, 0, 0), "dark green": (0, 128, 0),
    "navy": (0, 0, 128), "olive": (128, 128, 0), "teal": (0, 128, 128), "pink": (255, 192, 203),
}


def read_mask_raw(path: str | Path) -> np.ndarray:
    """Read a mask file's values without deciding what they mean.

    Returns a 2D ``uint8``/``uint16`` array of grey values (palette indices for
    palette PNGs, 0/255 for 1-bit files, ITU-R 601-2 luma for colour files whose
    channels agree, float masks in [0, 1] scaled to 0..255), or an ``(H, W, 3)``
    ``uint8`` array for a colour file with coloured pixels (a colour-coded label
    mask). :func:`decide_masks` decides over a whole dataset what the values mean.
    """
    path = Path(path)
    arr = None
    if path.suffix.lower() not in (".tif", ".tiff"):
        from PIL import Image

        try:
            with Image.open(path) as im:
                im.load()
                if im.mode in ("1", "P", "L"):
                    # a 1-bit file is black and white: 0/255, like the 8-bit masks beside it
                    arr = np.asarray(im, dtype=np.uint8) * 255 if im.mode == "1" else np.asarray(im).copy()
                elif im.mode in ("RGB", "RGBA", "LA", "PA", "CMYK", "YCbCr"):
                    rgb = np.asarray(im.convert("RGB"))
                    arr = rgb if _is_coloured(rgb) else np.asarray(im.convert("L")).copy()
        except Exception:  # let the general reader produce the error message
            arr = None
    if arr is None:
        arr = np.asarray(read_image(path))
        if arr.ndim == 3:
            if arr.dtype == np.uint8 and _is_coloured(arr):
                return np.ascontiguousarray(arr[..., :3])
            arr = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        if np.issubdtype(arr.dtype, np.floating):
            top = float(arr.max(initial=0))
            arr = np.rint(arr * 255) if top <= 1.0 else np.rint(arr)
            arr = np.clip(arr, 0, 65535)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        arr = arr.astype(np.uint16 if arr.max(initial=0) > 255 else np.uint8)
    if arr.ndim == 2 and min(arr.shape) < 1:
        raise ImageError(f"{path}: empty mask")
    return arr


def _is_coloured(rgb: np.ndarray) -> bool:
    """Whether an RGB mask holds coloured pixels (more than 1% of its non-black pixels)."""
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    if np.array_equal(r, g) and np.array_equal(g, b):  # grey saved as RGB (Kvasir-SEG, BUSI): the usual case
        return False
    hi = np.maximum(np.maximum(r, g), b)
    lo = np.minimum(np.minimum(r, g), b)
    lit = hi >= 48
    n_lit = int(np.count_nonzero(lit))
    return n_lit > 0 and int(np.count_nonzero((hi - lo)[lit] > _COLOUR_SPREAD)) > 0.01 * n_lit


class MaskStats:
    """Value statistics of every mask of a dataset, gathered as the files are read."""

    def __init__(self) -> None:
        self.grey = np.zeros(65536, np.int64)  # pixel count per grey value
        self.interior = np.zeros(65536, np.int64)  # of those, pixels whose 4 neighbours hold the same value
        self.colours: dict[int, int] = {}  # packed 0xRRGGBB -> pixel count (colour files, and grey ones as v,v,v)
        self.files = 0
        self.colour_files = 0
        self.jpeg_files = 0

    def add(self, raw: np.ndarray, path: str | Path = "") -> None:
        self.files += 1
        jpeg = Path(path).suffix.lower() in (".jpg", ".jpeg")
        self.jpeg_files += jpeg
        if raw.ndim == 3:
            self.colour_files += 1
            packed = (raw[..., 0].astype(np.int64) << 16) | (raw[..., 1].astype(np.int64) << 8) | raw[..., 2]
            values, counts = np.unique(packed, return_counts=True)
            for v, n in zip(values.tolist(), counts.tolist()):
                self.colours[v] = self.colours.get(v, 0) + n
        else:
            counts = np.bincount(raw.ravel(), minlength=1)
            self.grey[: counts.size] += counts
            if jpeg:  # lossy masks are binary whatever their values (decide_masks): no need for regions
                return
            # label values form regions with an inside; the values of soft or resampled edges lie on thin
            # bands between background and foreground, with (almost) no pixel inside such a band
            p = np.pad(raw, 1, mode="edge")
            c = p[1:-1, 1:-1]
            same = (c == p[:-2, 1:-1]) & (c == p[2:, 1:-1]) & (c == p[1:-1, :-2]) & (c == p[1:-1, 2:])
            inside = np.bincount(raw[same], minlength=1)
            self.interior[: inside.size] += inside

    def grey_values(self) -> np.ndarray:
        return np.flatnonzero(self.grey)


class MaskDecision:
    """What a dataset's mask values mean: ``mode`` (binary, labels or rgb), its threshold or palette, a note."""

    def __init__(self, mode: str, note: str, *, threshold: int | None = None,
                 palette: list[tuple[int, int, int]] | None = None, names: list[str] | None = None):
        self.mode = mode
        self.note = note
        self.threshold = threshold
        self.palette = palette or []  # rgb: colour of class value i + 1
        self.names = names or []  # rgb: a colour name per class

    def apply(self, raw: np.ndarray) -> np.ndarray:
        """One raw mask (from :func:`read_mask_raw`) as a label image under this decision."""
        if self.mode == "rgb":
            rgb = raw if raw.ndim == 3 else np.repeat(_to8(raw)[..., None], 3, axis=2)
            return _nearest_colour(rgb, self.palette)
        grey = raw if raw.ndim == 2 else _luma(raw)
        if self.mode == "binary":
            return (grey > (self.threshold or 0)).astype(np.uint8)
        return grey.astype(np.uint16 if grey.max(initial=0) > 255 else np.uint8)


def _to8(grey: np.ndarray) -> np.ndarray:
    return (grey >> 8).astype(np.uint8) if grey.dtype == np.uint16 and grey.max(initial=0) > 255 else \
        grey.astype(np.uint8)


def _luma(rgb: np.ndarray) -> np.ndarray:
    c = rgb[..., :3].astype(np.float32)
    return np.rint(c[..., 0] * 0.299 + c[..., 1] * 0.587 + c[..., 2] * 0.114).astype(np.uint8)


def _nearest_colour(rgb: np.ndarray, palette: list[tuple[int, int, int]]) -> np.ndarray:
    """Each pixel -> 0 (black) or the value (1-based) of the nearest palette colour."""
    colours = np.array([(0, 0, 0), *palette], np.int32)
    flat = rgb[..., :3].reshape(-1, 3).astype(np.int32)
    # unique colours first: a colour mask holds few distinct colours, so this is cheap
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    dist = ((uniq[:, None, :] - colours[None, :, :]) ** 2).sum(-1)
    labels = dist.argmin(1)[np.asarray(inverse).ravel()]
    return labels.reshape(rgb.shape[:2]).astype(np.uint8 if len(palette) <= 255 else np.uint16)


def _colour_name(rgb: tuple[int, int, int]) -> str:
    return min(_COLOUR_NAMES, key=lambda k: sum((a - b) ** 2 for a, b in zip(_COLOUR_NAMES[k], rgb)))


def _hue_order(rgb: tuple[int, int, int]) -> tuple:
    import colorsys

    h, s, v = colorsys.rgb_to_hsv(*(x / 255 for x in rgb))
    return (1, -v, 0.0) if s < 0.2 else (0, h, -v)  # chromatic by hue from red, then greys bright first


def default_threshold(top: int) -> int:
    """``> threshold`` is foreground: half the 8- or 16-bit range when the values reach its upper half,
    else any non-zero value (0/1 masks, or 0/100)."""
    if 128 <= top <= 255:
        return 127
    if top >= 32768:
        return 32767
    if top > 255:
        return top // 2
    return 0


def decide_masks(stats: MaskStats, mode: str = "auto", threshold: int | None = None) -> MaskDecision:
    """Decide over a whole dataset whether its masks are binary, label or colour-coded masks.

    ``auto``: colour-coded RGB when some mask holds coloured pixels; binary when
    the grey values are 0 and one other value, when the masks are lossy JPEG, or
    when more than 1% of the foreground holds values that lie only on thin edges
    (soft, anti-aliased or resampled edges: such a value has no region of its
    own); label masks when every value forms regions and there are at most 64;
    binary otherwise. ``threshold``
    (binary): ``value > threshold`` is foreground (default: :func:`default_threshold`).

    Raises
    ------
    ValueError
        ``labels`` asked for colour masks (use ``rgb``), or an unknown mode.
    """
    if mode not in MASK_MODES:
        raise ValueError(f"unknown mask mode {mode!r}; choose one of {', '.join(MASK_MODES)}")
    values = stats.grey_values()
    nonzero = values[values > 0]
    top = max(int(values.max()) if values.size else 0, 255 if stats.colour_files else 0)
    hint_labels = "pass --masks labels to keep the values as classes"
    hint_binary = "pass --masks binary to threshold instead"
    if stats.files == 0:
        return MaskDecision("binary", "no masks", threshold=0)
    if mode == "rgb" or (mode == "auto" and stats.colour_files):
        return _decide_rgb(stats, mode)
    if mode == "labels" and stats.colour_files:
        raise ValueError(f"{stats.colour_files} mask(s) are colour-coded (RGB): use --masks rgb to map "
                         "colours to classes, or --masks binary to threshold their grey level")
    grey_note = (f" ({stats.colour_files} colour file(s) by grey level)" if stats.colour_files else "")

    def binary(why: str) -> MaskDecision:
        t = default_threshold(top) if threshold is None else int(threshold)
        return MaskDecision("binary", f"masks read as binary{grey_note}: {why}; foreground = value > {t}"
                            + ("" if mode == "binary" else f"; {hint_labels}"), threshold=t)

    shown = ", ".join(str(v) for v in nonzero[:8]) + (" ..." if nonzero.size > 8 else "")
    if mode == "binary":
        return binary(f"as asked (values {shown} over {stats.files} file(s))")
    if mode == "labels":
        return MaskDecision("labels", f"masks read as label images, as asked: values {shown} become classes")
    # auto
    if nonzero.size <= 1:
        return binary(f"values 0 and {top} only" if nonzero.size else "every mask is empty")
    if stats.jpeg_files:
        return binary(f"{stats.jpeg_files} of {stats.files} mask(s) are lossy JPEG ({nonzero.size} grey values)")
    fg = int(stats.grey[nonzero].sum())
    # a value "forms regions" when at least 5% of its pixels lie inside a region of that value
    regions = nonzero[stats.interior[nonzero] >= 0.05 * stats.grey[nonzero]]
    edge = np.setdiff1d(nonzero, regions)
    edge_share = float(stats.grey[edge].sum()) / fg if fg else 0.0
    if edge.size and edge_share > 0.01:
        return binary(f"soft-edged: {edge.size} of {nonzero.size} grey values lie only on thin edges "
                      f"({100 * edge_share:.1f}% of the foreground pixels), not in regions of their own")
    if nonzero.size <= _MAX_LABELS:
        return MaskDecision("labels", f"masks read as label images: values {shown} form a small label set "
                            f"({nonzero.size} classes); {hint_binary}")
    return binary(f"{nonzero.size} distinct values are not a small label set")


def _decide_rgb(stats: MaskStats, mode: str) -> MaskDecision:
    colours = dict(stats.colours)
    for v in stats.grey_values().tolist():  # grey masks in a colour dataset: their values as grey colours
        v8 = v >> 8 if v > 255 else v
        key = (v8 << 16) | (v8 << 8) | v8
        colours[key] = colours.get(key, 0) + int(stats.grey[v])
    lit = {k: n for k, n in colours.items() if max(k >> 16, (k >> 8) & 255, k & 255) >= 48}
    total = sum(lit.values())
    keep = sorted((k for k, n in lit.items() if total and n >= _MIN_COLOUR_SHARE * total),
                  key=lambda k: -lit[k])[:255]
    palette = sorted(((k >> 16, (k >> 8) & 255, k & 255) for k in keep), key=_hue_order)
    names: list[str] = []
    for c in palette:
        name = _colour_name(c)
        names.append(name if name not in names else f"{name} {len(names) + 1}")
    mapping = ", ".join(f"{n} #{r:02x}{g:02x}{b:02x} -> {i}" for i, (n, (r, g, b)) in
                        enumerate(zip(names, palette), start=1))
    why = "as asked" if mode == "rgb" else f"{stats.colour_files} of {stats.files} mask(s) hold coloured pixels"
    note = (f"masks read as colour-coded (RGB) label masks ({why}), mapped by colour: {mapping or 'no colour'}; "
            "black is background, other pixels go to the nearest colour"
            + ("; pass --masks binary to threshold the grey level instead" if mode == "auto" else ""))
    return MaskDecision("rgb", note, palette=palette, names=names)


def truncation(path: str | Path) -> str | None:
    """Why an image file is visibly incomplete (cut off by a failed copy or download), or ``None``.

    Cheap (reads the file's last bytes, decodes nothing): a PNG must end with its
    ``IEND`` chunk, a JPEG hold its end-of-image marker near its end, a BMP be as
    long as its header says. Other formats (TIFF) are not checked here.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return "empty file (0 bytes)"
        with open(path, "rb") as fh:
            head = fh.read(32)
            fh.seek(max(0, size - 4096))
            tail = fh.read()
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    if head.startswith(b"\x89PNG\r\n\x1a\n"):
        return None if tail.rstrip(b"\x00").endswith(b"IEND\xaeB`\x82") else \
            "truncated PNG (no IEND chunk at its end)"
    if head.startswith(b"\xff\xd8"):
        return None if b"\xff\xd9" in tail else "truncated JPEG (no end-of-image marker)"
    if head.startswith(b"BM") and len(head) >= 6:
        declared = int.from_bytes(head[2:6], "little")
        return None if declared <= size or declared == 0 else f"truncated BMP ({size} of {declared} bytes)"
    return None
