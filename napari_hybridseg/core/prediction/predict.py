"""Prediction at the original image size, for one image, a project or a folder.

The network was trained on whole images resized to ``input_size`` (square),
so an ordinary image is resized to that size, predicted, and its class
probabilities resized back (bilinear) to the original rows and columns. An
image much larger than the training images (e.g. a whole slide next to
training crops) would lose its detail in one resize: it is brought to the
scale the network saw in training (``train_scale`` in ``run.json``) and
predicted in overlapping tiles of ``input_size``, whose probabilities are
averaged with a smooth window.

Optional test-time augmentation averages the prediction of the image and of
its left-right and up-down flips.

Many images at once (:meth:`Predictor.predict_many`, the benchmark's scoring)
go through the network in batches; their resized inputs can be shared by
several predictors (:class:`InputCache`, one per benchmark run). The last step,
class probabilities -> label values at the original size, is
:func:`labels_from_probs` (:func:`labels_from_logits` from network outputs),
also used by the training previews.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from napari_hybridseg.core.data.collection import Collection, Sample
from napari_hybridseg.core.data.images import (
    IMAGE_SUFFIXES,
    ImageError,
    read_image,
    resize_image,
    to_float_rgb,
    truncation,
)
from napari_hybridseg.core.network.device import ThreadTuner, resolve_device
from napari_hybridseg.core.network.models import forward
from napari_hybridseg.core.training.batches import normalise

__all__ = ["InputCache", "Predictor", "labels_from_logits", "labels_from_probs", "predict_collection",
           "predict_folder", "write_mask"]


def labels_from_probs(probs: torch.Tensor, shape: tuple[int, int],
                      class_values: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Class probabilities at the network's size -> label values and probabilities at ``shape``.

    Parameters
    ----------
    probs : torch.Tensor (1, K, h, w)
        Softmax probabilities (channel 0 background).
    shape : (int, int)
        The original rows and columns.
    class_values : numpy.ndarray (K,)
        Label value of each channel (0 first).

    Returns
    -------
    labels : numpy.ndarray (H, W)
        Label values of the argmax after a bilinear resize (uint8, uint16 above 255).
    probabilities : torch.Tensor (K, H, W)
        The resized probabilities (on the input's device).
    """
    probs = F.interpolate(probs, size=shape, mode="bilinear", align_corners=False)[0]
    labels = class_values[probs.argmax(0).cpu().numpy()]
    dtype = np.uint16 if class_values.max() > 255 else np.uint8
    return labels.astype(dtype), probs


def labels_from_logits(logits: torch.Tensor, shape: tuple[int, int],
                       class_values: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """Network outputs (1, K, h, w) -> :func:`labels_from_probs` of their softmax (in fp32)."""
    return labels_from_probs(logits.float().softmax(1), shape, class_values)


class InputCache:
    """Normalised inputs at the training size, computed once per image and shared by several predictors."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, int], tuple[torch.Tensor, tuple[int, int]]] = {}

    def get(self, sample: Sample, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        """The (3, size, size) input of ``sample`` and its original (rows, columns)."""
        key = (sample.id, int(size))
        if key not in self._items:
            rgb = to_float_rgb(sample.load_image())
            self._items[key] = (normalise(resize_image(rgb, (size, size))), (rgb.shape[0], rgb.shape[1]))
        return self._items[key]


def write_mask(path: str | Path, labels: np.ndarray) -> Path:
    """Write a label mask as PNG (uint8, or uint16 for values above 255), atomically."""
    import imageio.v3 as iio

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.png")
    iio.imwrite(tmp, labels.astype(np.uint16 if labels.max(initial=0) > 255 else np.uint8))
    os.replace(tmp, path)
    return path


class Predictor:
    """A trained network ready to segment images of any size.

    Parameters
    ----------
    model : torch.nn.Module
        Network 1 of a run (eval mode).
    input_size : int
        The training size (square).
    class_values : sequence of int
        Label value of each foreground channel 1..K-1 (the collection's classes
        sorted by value).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    train_scale : float or None
        Typical factor original -> training pixels (for tiling huge images).
    tile_above : float
        Tile when the image at ``train_scale`` is larger than this many
        training sizes on its long side. Default 2.
    tile_size : int or None
        Side of the tiles at the training scale (:meth:`tile_shape`); ``None``
        (default): the training size times ``512 // input_size``.
    tile_pixels : int
        Pixels per batch of tiles (tiles of 512 px: 4 a batch). Default 2**20.
    threads : int or None
        CPU threads for torch; ``None`` (default) chooses them and adapts them to
        a competing CPU load (:class:`~.device.ThreadTuner`).
    cache : InputCache or None
        Resized inputs of :meth:`predict_many`, shared with other predictors
        (a new one if not given).
    batch_size : int
        Images per forward pass in :meth:`predict_many`. Default 16.

    Attributes
    ----------
    tile_progress : callable or None
        Called as ``tile_progress(done, total)`` while a large image's tiles are predicted.
    """

    def __init__(self, model: torch.nn.Module, input_size: int, class_values: Iterable[int], *,
                 device: str = "auto", train_scale: float | None = None, tile_above: float = 2.0,
                 class_names: Iterable[str] | None = None, tile_size: int | None = None, tile_pixels: int = 2**20,
                 threads: int | None = None, cache: InputCache | None = None, batch_size: int = 16):
        self.dev = resolve_device(device, "fp32")
        self.cache = cache if cache is not None else InputCache()
        self.batch_size = int(batch_size)
        self.tile_pixels = int(tile_pixels)
        self.tile_size = tile_size
        self.tile_progress = None
        self.threads = ThreadTuner.for_device(self.dev.device, threads)
        self.model = model.to(self.dev.device).eval()
        self.input_size = int(input_size)
        self.class_values = np.array([0, *[int(v) for v in class_values]])
        self.class_names = list(class_names) if class_names is not None else None
        self.train_scale = train_scale
        self.tile_above = float(tile_above)

    @classmethod
    def load(cls, path: str | Path, device: str = "auto", **kwargs) -> Predictor:
        """Load from a run folder (``RUN/``) or its model folder (``RUN/model``); ``kwargs`` go to the constructor."""
        from napari_hybridseg.core.training.checkpoint import RunError, load_run_model, read_run, recover_run

        path = Path(path)
        recover_run(path)
        model_dir = path / "model" if (path / "model").is_dir() else path
        if not (model_dir / "model.safetensors").exists():
            raise RunError(f"{path}: no trained model here; pass the --out folder of `hybridseg train`")
        run_json = model_dir.parent / "run.json"  # RUN/run.json beside RUN/model
        model, config = load_run_model(model_dir, what_to_do="train again, or continue an earlier copy of the run")
        values: list[int] = list(range(1, config.classes))
        names = None
        scale = None
        if run_json.exists():
            record = read_run(model_dir.parent)
            if record.get("classes"):
                values = [int(c["value"]) for c in record["classes"]]
                names = [c["name"] for c in record["classes"]]
            scale = record.get("train_scale")
        return cls(model, config.input_size, values, device=device, train_scale=scale, class_names=names, **kwargs)

    # -- core ---------------------------------------------------------------
    @torch.no_grad()
    def _probs(self, x: torch.Tensor, tta: bool) -> torch.Tensor:
        """Softmax of a normalised (B, 3, s, s) batch, flip-averaged with ``tta``."""
        x = x.to(self.dev.device)
        out = forward(self.model, x)[0].float().softmax(1)
        if tta:
            for dims in ((-1,), (-2,)):
                out = out + forward(self.model, x.flip(dims))[0].float().softmax(1).flip(dims)
            out = out / 3
        return out

    def tile_shape(self, hh: int, ww: int) -> tuple[int, int]:
        """Tile rows and columns for an image of ``hh x ww`` pixels at the training scale.

        The network is fully convolutional, so a tile can be larger than the
        training size at the same scale: ``tile_size`` (default: the training size
        times ``512 // input_size``, e.g. 512 px for a network trained at 64 px) cuts
        the overlap and runs larger, faster convolutions (measured: 2x fewer s/MP).
        """
        s = self.input_size
        tile = self.tile_size or s * max(1, 512 // s)

        def fit(n: int) -> int:
            t = min(tile, n)
            return max(s, t - t % 32) if t >= 32 else t

        return fit(hh), fit(ww)

    def _tiled(self, rgb: np.ndarray, tta: bool) -> torch.Tensor:
        s = self.input_size
        h, w = rgb.shape[:2]
        scaled_shape = (max(s, round(h * self.train_scale)), max(s, round(w * self.train_scale)))
        small = resize_image(rgb, scaled_shape)
        x = normalise(small)
        del small
        hh, ww = scaled_shape
        th, tw = self.tile_shape(hh, ww)
        # overlap: a quarter of the training size (tiles of the training size: 3/4 stride, as before)
        sr, sc = max(1, th - max(s // 4, th // 8)), max(1, tw - max(s // 4, tw // 8))
        rows = sorted({*range(0, hh - th + 1, sr), hh - th})
        cols = sorted({*range(0, ww - tw + 1, sc), ww - tw})

        # a smooth window so tile borders (less context) count less
        def hann(n: int) -> torch.Tensor:
            return torch.hann_window(n + 2, periodic=False)[1:-1]

        win = (hann(th)[:, None] * hann(tw)[None, :]).clamp_min(1e-3).to(self.dev.device)
        acc = None
        norm = torch.zeros(hh, ww, device=self.dev.device)
        positions = [(r, c) for r in rows for c in cols]
        total = len(positions)
        # tiles go through the network in batches (one forward per small tile made a 5000 x 5000 image take hours)
        batch = max(1, self.tile_pixels // (th * tw))
        if self.tile_progress is not None:
            self.tile_progress(0, total)
        for i in range(0, total, batch):
            chunk = positions[i:i + batch]
            t0 = time.perf_counter()
            probs = self._probs(torch.stack([x[:, r:r + th, c:c + tw] for r, c in chunk]), tta)
            if self.threads is not None:
                self.threads.record(time.perf_counter() - t0, len(chunk))
            if acc is None:
                acc = torch.zeros(probs.shape[1], hh, ww, device=self.dev.device)
            for (r, c), p in zip(chunk, probs):
                acc[:, r:r + th, c:c + tw] += p * win
                norm[r:r + th, c:c + tw] += win
            if self.tile_progress is not None:
                self.tile_progress(min(i + batch, total), total)
        return (acc / norm)[None]

    def predict(self, image: np.ndarray, tta: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Segment one image at its original size.

        Parameters
        ----------
        image : numpy.ndarray
            (H, W) or (H, W, 3), uint8/uint16/float, any size.
        tta : bool
            Average over flips (3 forward passes).

        Returns
        -------
        labels : numpy.ndarray (H, W)
            Label values of the collection's classes (uint8, uint16 above 255).
        probabilities : numpy.ndarray (K, H, W) float32
            Class probabilities, channel 0 background.
        """
        rgb = to_float_rgb(image)
        h, w = rgb.shape[:2]
        s = self.input_size
        if self._tiles((h, w)):
            probs = self._tiled(rgb, tta)
        else:
            x = normalise(resize_image(rgb, (s, s)))[None]
            t0 = time.perf_counter()
            probs = self._probs(x, tta)
            if self.threads is not None:
                self.threads.record(time.perf_counter() - t0)
        labels, probs = labels_from_probs(probs, (h, w), self.class_values)
        return labels, probs.cpu().numpy().astype(np.float32)

    def _tiles(self, shape: tuple[int, int]) -> bool:
        """Whether an image of ``shape`` is predicted in tiles (much larger than the training scale)."""
        return bool(self.train_scale) and max(shape) * self.train_scale > self.tile_above * self.input_size

    def predict_many(self, samples: Mapping[str, Sample], tta: bool = False) -> dict[str, np.ndarray]:
        """Label masks of many samples at their original sizes, as :meth:`predict` gives them.

        Images that :meth:`predict` resizes whole go through the network
        :attr:`batch_size` at a time, their inputs from :attr:`cache`; images it
        tiles are predicted one by one, in tiles.
        """
        out: dict[str, np.ndarray] = {}
        whole = []
        for sid, sample in samples.items():
            if self._tiles(self.cache.get(sample, self.input_size)[1]):
                out[sid] = self.predict(sample.load_image(), tta=tta)[0]
            else:
                whole.append(sid)
        for start in range(0, len(whole), self.batch_size):
            chunk = whole[start:start + self.batch_size]
            items = [self.cache.get(samples[i], self.input_size) for i in chunk]
            t0 = time.perf_counter()
            probs = self._probs(torch.stack([t for t, _ in items]), tta)
            if self.threads is not None:
                self.threads.record(time.perf_counter() - t0, len(chunk))
            for sid, p, (_, shape) in zip(chunk, probs, items):
                out[sid] = labels_from_probs(p[None], shape, self.class_values)[0]
        return {sid: out[sid] for sid in samples}


def _load_or_skip(key, path: Path | None, load: Callable[[], np.ndarray],
                  on_skip: Callable[[Any, Exception], None] | None) -> np.ndarray | None:
    """``load()``, after checking the file at ``path`` (if any) is not cut off; for an unreadable image, ``None``
    after ``on_skip(key, error)``, or the error raised when there is no ``on_skip``."""
    try:
        broken = truncation(path) if path is not None else None
        if broken:
            raise ImageError(f"{path}: {broken}")
        return load()
    except (ImageError, OSError) as exc:
        if on_skip is None:
            raise
        on_skip(key, exc)
        return None


def predict_collection(predictor: Predictor, collection: Collection, out_dir: str | Path, *,
                       ids: Iterable[str] | None = None, tta: bool = False, progress=None,
                       on_skip: Callable[[str, Exception], None] | None = None) -> dict[str, Path]:
    """Predict every sample (or ``ids``) of a collection; write ``OUT/<id>.png``.

    ``progress``, if given, wraps the iterable (e.g. ``tqdm``). ``on_skip``, if
    given, is called as ``on_skip(sample_id, error)`` for a sample whose image
    cannot be read, and the others are predicted; without it the error is raised.
    """
    out_dir = Path(out_dir)
    todo = list(ids) if ids is not None else collection.ids
    written = {}
    for sid in progress(todo) if progress else todo:
        sample = collection[sid]
        from_disk = sample.image is None
        image = _load_or_skip(sid, sample.image_path if from_disk else None, sample.load_image, on_skip)
        if image is None:
            continue
        labels, _ = predictor.predict(image, tta=tta)
        if from_disk:
            sample.image = None  # do not keep every full-size image of a large project in memory
        written[sid] = write_mask(out_dir / f"{sid}.png", labels)
    return written


def predict_folder(predictor: Predictor, folder: str | Path, out_dir: str | Path, *, tta: bool = False,
                   progress=None, on_skip: Callable[[Path, Exception], None] | None = None) -> dict[str, Path]:
    """Predict every image file in ``folder`` (not recursive); write ``OUT/<stem>.png``.

    ``on_skip``, if given, is called as ``on_skip(path, error)`` for a file that
    cannot be read (cut off, not an image), and the rest are predicted; without
    it the error is raised.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    written = {}
    for path in progress(files) if progress else files:
        image = _load_or_skip(path, path, lambda path=path: read_image(path), on_skip)
        if image is None:
            continue
        labels, _ = predictor.predict(image, tta=tta)
        written[path.name] = write_mask(Path(out_dir) / f"{path.stem}.png", labels)
    return written
