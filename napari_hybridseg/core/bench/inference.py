"""Batched test-set prediction for the benchmark (imports torch).

Every arm is scored on the same test images. Decoding and resizing them is
done once (:class:`InputCache`, shared by all arms); each arm's network 1 then
predicts them in batches at the training size, and its class probabilities
are resized bilinearly back to each image's original size before the argmax,
so Dice is computed at the original resolution. The preprocessing is the
trainer's own (:func:`~napari_hybridseg.core.training.batches.prepare_sample`: float RGB,
anti-aliased square resize, ImageNet normalisation).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from napari_hybridseg.core.data.collection import Sample
from napari_hybridseg.core.data.images import resize_image, to_float_rgb
from napari_hybridseg.core.network.device import resolve_device
from napari_hybridseg.core.network.models import forward, load_model
from napari_hybridseg.core.training.batches import normalise

__all__ = ["BatchedPredictor", "InputCache"]


class InputCache:
    """Test images at the training size, computed once and shared by every arm."""

    def __init__(self) -> None:
        self._items: dict[tuple[str, int], tuple[torch.Tensor, tuple[int, int]]] = {}

    def get(self, sample: Sample, size: int) -> tuple[torch.Tensor, tuple[int, int]]:
        key = (sample.id, int(size))
        if key not in self._items:
            rgb = to_float_rgb(sample.load_image())
            self._items[key] = (normalise(resize_image(rgb, (size, size))), (rgb.shape[0], rgb.shape[1]))
        return self._items[key]


class BatchedPredictor:
    """Network 1 of a run folder, predicting many images per forward pass.

    Parameters
    ----------
    model : torch.nn.Module
    size : int
        The square input size the model was trained at.
    label_values : sequence of int
        Label value of each output channel (channel 0 = background = 0).
    device : str
        ``"auto"``, ``"cpu"``, ``"cuda"``...
    cache : InputCache, optional
        Shared resized inputs (a new one if not given).
    batch_size : int
        Images per forward pass. Default 16.
    """

    def __init__(self, model: torch.nn.Module, size: int, label_values, *, device: str = "auto",
                 cache: InputCache | None = None, batch_size: int = 16) -> None:
        self.dev = resolve_device(device)
        self.model = model.to(self.dev.device).eval()
        self.size = int(size)
        self.values = np.asarray(label_values)
        self.cache = cache or InputCache()
        self.batch_size = int(batch_size)

    @classmethod
    def load(cls, run_dir: str | Path, label_values=None, **kwargs) -> BatchedPredictor:
        """Load ``run_dir/model`` (written by the trainer); ``label_values`` default 0..classes-1."""
        run_dir = Path(run_dir)
        folder = run_dir / "model" if (run_dir / "model").is_dir() else run_dir
        model, config = load_model(folder)
        values = label_values if label_values is not None else list(range(config.classes))
        return cls(model, config.input_size, values, **kwargs)

    def _labels(self, logits: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
        prob = F.interpolate(logits[None].float().softmax(1), size=shape, mode="bilinear", align_corners=False)[0]
        dtype = np.uint16 if self.values.max() > 255 else np.uint8
        return self.values[prob.argmax(0).cpu().numpy()].astype(dtype)

    @torch.no_grad()
    def predict_many(self, samples: Mapping[str, Sample]) -> dict[str, np.ndarray]:
        """Label masks (label values) at each sample's original size."""
        ids = list(samples)
        out: dict[str, np.ndarray] = {}
        for start in range(0, len(ids), self.batch_size):
            chunk = ids[start:start + self.batch_size]
            items = [self.cache.get(samples[i], self.size) for i in chunk]
            x = torch.stack([t for t, _ in items]).to(self.dev.device)
            with self.dev.autocast():
                logits, _ = forward(self.model, x)
            for sid, lg, (_, shape) in zip(chunk, logits, items):
                out[sid] = self._labels(lg, shape)
        return out

    def predict(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """One image -> (labels, foreground probability) at its original size."""
        rgb = to_float_rgb(image)
        x = normalise(resize_image(rgb, (self.size, self.size)))[None].to(self.dev.device)
        with torch.no_grad(), self.dev.autocast():
            logits, _ = forward(self.model, x)
        shape = (rgb.shape[0], rgb.shape[1])
        prob = F.interpolate(logits.float().softmax(1), size=shape, mode="bilinear", align_corners=False)[0]
        return self._labels(logits[0], shape), prob[1:].amax(0).cpu().numpy().astype(np.float32)
