"""Baselines for the learned weights: simple signals a user could compute without DII.

BENCHMARK.md: the learned weights mean something only where they separate
clean from corrupted weak labels better than these. Each signal gives every
weak training image a score; its AUROC (clean = positive, overall and per
corruption kind) is computed exactly as gamma's, with a direction fixed in
advance (:data:`ORIENTATION`), not fitted to the data:

* ``size``: the weak label's size: the boxes' area over the image's area
  (inflated boxes are large: smaller = more trusted); for points, the number
  of positive clicks; undefined for tags.
* ``agreement``: agreement of the weak label with the ``strong-only`` arm's
  prediction on that training image: boxes, the mean over the boxes of the
  best IoU with the bounding box of a predicted component of the box's class;
  points, the share of positive clicks inside the predicted class; tags, the
  share of presence / absence claims the prediction agrees with (a class is
  predicted present when it covers at least ``min_present`` of the image).
* ``naive_loss``: the weak loss of each sample (the per-instance loss DII
  scores) under the final ``naive`` model, on the un-augmented image
  (:func:`weak_sample_losses`, imports torch); a high loss = less trusted.

The numpy parts are torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from napari_hybridseg.core.bench.metrics import auroc
from napari_hybridseg.core.data.collection import Collection, Sample, TagImplies

__all__ = ["ORIENTATION", "SIGNALS", "agreement", "signal_quality", "weak_sample_losses", "weak_size"]

#: The baselines, in report order.
SIGNALS = ("size", "agreement", "naive_loss")

#: Sign that makes each signal a "trust" score (high = clean), fixed before looking at any data.
ORIENTATION = {"size": -1.0, "agreement": 1.0, "naive_loss": -1.0}


def _shape(sample: Sample, pred: np.ndarray | None = None) -> tuple[int, int]:
    if pred is not None:
        return int(pred.shape[0]), int(pred.shape[1])
    shape = sample.meta.get("shape")
    if shape:
        return int(shape[0]), int(shape[1])
    img = sample.load_image()
    return int(img.shape[0]), int(img.shape[1])


def weak_size(sample: Sample) -> float:
    """Boxes: their total area over the image's; points: the number of positive clicks; tags: NaN."""
    if sample.boxes:
        h, w = _shape(sample)
        return float(sum(b.area for b in sample.boxes) / max(1.0, float(h * w)))
    if sample.points:
        return float(sum(1 for p in sample.points if p.positive))
    return float("nan")


def _bbox_iou(a: tuple[float, float, float, float], b: tuple[float, float, float, float]) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _component_boxes(binary: np.ndarray) -> list[tuple[float, float, float, float]]:
    from scipy import ndimage

    lab, n = ndimage.label(binary)
    out = []
    for sl in ndimage.find_objects(lab)[:n]:
        if sl is not None:
            out.append((float(sl[1].start), float(sl[0].start), float(sl[1].stop), float(sl[0].stop)))
    return out


def agreement(sample: Sample, pred: np.ndarray, collection: Collection, *, min_present: float = 0.001) -> float:
    """How far the weak label agrees with a prediction (label values, at the sample's resolution); 0..1."""
    pred = np.asarray(pred)
    h, w = _shape(sample, pred)
    if sample.boxes:
        scores = []
        for b in sample.boxes:
            comps = _component_boxes(pred == b.label)
            scores.append(max((_bbox_iou(b.as_tuple(), c) for c in comps), default=0.0))
        return float(np.mean(scores))
    positives = [p for p in sample.points if p.positive]
    if positives:
        inside = []
        for p in positives:
            r, c = int(np.clip(np.floor(p.y), 0, h - 1)), int(np.clip(np.floor(p.x), 0, w - 1))
            inside.append(float(pred[r, c] == p.label))
        return float(np.mean(inside))
    claims = []
    values = [c.value for c in collection.classes] or [1]
    for name in sample.tags:
        try:
            t = collection.tag_def(name)
        except KeyError:
            continue
        if t.implies is TagImplies.NOTHING:
            continue
        classes = [t.class_value] if t.class_value is not None else values
        if t.implies is TagImplies.PRESENT:
            # "at least one of these classes is present" (a lesion of any kind when class_value is None)
            present = any(float((pred == v).mean()) >= min_present for v in classes)
            claims.append(float(present))
        else:
            absent = all(float((pred == v).mean()) < min_present for v in classes)
            claims.append(float(absent))
    return float(np.mean(claims)) if claims else float("nan")


def signal_quality(scores: Mapping[str, float], corrupted: Mapping[str, Any], orientation: float = 1.0
                   ) -> dict[str, Any]:
    """AUROC of ``orientation * score`` for clean (positive) vs corrupted, overall and per corruption kind.

    Samples whose score is undefined (NaN) are left out and counted in ``n_undefined``.
    """
    ids = sorted(k for k, v in scores.items() if v is not None and np.isfinite(float(v)))
    undefined = len(scores) - len(ids)
    s = np.array([orientation * float(scores[i]) for i in ids], float)
    clean = np.array([i not in corrupted for i in ids], bool)
    by_kind: dict[str, float] = {}
    for kind in sorted({str(v) for v in corrupted.values()}):
        keep = clean | np.array([str(corrupted.get(i)) == kind for i in ids], bool)
        by_kind[kind] = auroc(s[keep], clean[keep]) if keep.any() else float("nan")
    return {"auroc": auroc(s, clean) if len(ids) else float("nan"), "auroc_by_kind": by_kind,
            "n": len(ids), "n_undefined": undefined, "orientation": orientation}


def compute_signals(train: Collection, weak_ids: Iterable[str], *,
                    strong_only_pred: Mapping[str, np.ndarray] | None = None,
                    naive_loss: Mapping[str, float] | None = None) -> dict[str, dict[str, float]]:
    """Every baseline's raw score per weak id (signals that could not be computed are left out)."""
    weak_ids = list(weak_ids)
    out: dict[str, dict[str, float]] = {"size": {i: weak_size(train[i]) for i in weak_ids}}
    if strong_only_pred is not None:
        out["agreement"] = {i: agreement(train[i], strong_only_pred[i], train) for i in weak_ids
                            if i in strong_only_pred}
    if naive_loss is not None:
        out["naive_loss"] = {i: float(naive_loss[i]) for i in weak_ids if i in naive_loss}
    return out


def weak_sample_losses(run_dir: str | Path, collection: Collection, ids: Iterable[str], config, *,
                       device: str = "cpu", batch_size: int = 16) -> dict[str, float]:
    """Each weak sample's loss (``weak_losses(...)["sum"]``, DII's per-instance loss) under ``run_dir``'s model.

    The model is in eval mode, the images un-augmented, at the model's training
    size; ``config`` (a TrainConfig) gives the loss weights and point radius.
    Imports torch.
    """
    import torch

    from napari_hybridseg.core.network.device import resolve_device
    from napari_hybridseg.core.network.models import forward, load_model
    from napari_hybridseg.core.supervision.losses import LossWeights, weak_losses
    from napari_hybridseg.core.training.batches import prepare_sample

    run_dir = Path(run_dir)
    model, mcfg = load_model(run_dir / "model" if (run_dir / "model").is_dir() else run_dir)
    dev = resolve_device(device)
    model = model.to(dev.device).eval()
    lw = LossWeights(config.box_tightness_weight, config.mil_weight, config.aux_weight, config.box_pairwise_weight)
    ids = list(ids)
    out: dict[str, float] = {}
    with torch.no_grad():
        for start in range(0, len(ids), batch_size):
            chunk = ids[start:start + batch_size]
            items = [prepare_sample(collection[i], collection, int(mcfg.input_size), point_radius=config.point_radius)
                     for i in chunk]
            x = torch.stack([p.image for p in items]).to(dev.device)
            logits, aux = forward(model, x)
            dv = dev.device
            wl = weak_losses(logits.float(), None if aux is None else aux.float(),
                             torch.stack([p.target for p in items]).to(dv), [p.boxes for p in items],
                             torch.stack([p.present for p in items]).to(dv),
                             torch.stack([p.tag_target for p in items]).to(dv), lw,
                             absent=torch.stack([p.absent for p in items]).to(dv))
            for sid, v in zip(chunk, wl["sum"].float().cpu().tolist()):
                out[sid] = float(v)
    return out


def measure_baselines(train: Collection, weak_ids: Iterable[str], corrupted: Mapping[str, Any], *,
                      strong_only_predictor=None, naive_losses: Mapping[str, float] | None = None,
                      predict_all=None) -> dict[str, Any]:
    """Every baseline's scores and quality for one run (what ``baselines.json`` holds).

    ``strong_only_predictor``: the strong-only arm's predictor (None: no
    agreement signal); ``predict_all(predictor, samples)`` gives its label
    masks; ``naive_losses``: :func:`weak_sample_losses` of the naive arm.
    """
    weak_ids = sorted(weak_ids)
    pred = None
    if strong_only_predictor is not None and predict_all is not None:
        pred = predict_all(strong_only_predictor, {i: train[i] for i in weak_ids})
    signals = compute_signals(train, weak_ids, strong_only_pred=pred, naive_loss=naive_losses)
    bad = {i: k for i, k in corrupted.items() if i in set(weak_ids)}
    quality = {name: signal_quality(vals, bad, ORIENTATION[name]) for name, vals in signals.items()}
    missing = [s for s in SIGNALS if s not in signals]
    return {"signals": signals, "quality": quality, "missing": missing,
            "orientation": {k: ORIENTATION[k] for k in signals}}
