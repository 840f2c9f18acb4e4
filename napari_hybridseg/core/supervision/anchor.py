"""Background for open weak labels from a network that has learnt the strong masks (the "anchor").

A point says where an object is and a "present" tag that one is somewhere;
neither says where the image is background, so nothing stops a network
trained on them from calling everything foreground (on Kvasir-SEG clicks,
``naive`` fell 0.18 Dice below ``strong-only``). The strong masks do say what
background looks like. The anchor turns that into pixel labels, as MLB-Seg
takes its initial labels from a model trained on the clean set:

1. the weak images whose label leaves the background open (no box; clicks)
   wait while the network trains on the strong masks (and
   the other weak images) alone;
2. then the network's own prediction on each open image (eval mode, the
   un-augmented image) gives its background pixels, minus every pixel
   within the *exclusion radius* of a click: the click says the object
   reaches at least that far, and the network's "background" there is the
   very mistake the click corrects;
3. those pixels become a background term of the weak image (mean
   cross-entropy to background over them, times gamma like every weak term).

The exclusion radius of a class is the median equivalent radius
(``sqrt(area / pi)``) of its connected objects in the strong masks: a rule
from the data, not a per-dataset threshold. A "present" tag whose class the
network predicts nowhere gets no anchor: the network and the label disagree
about that image, and the label wins. Pixels the weak label already fixes
(click disks, background clicks, absent classes) keep their labels.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
import torch.nn.functional as F

from napari_hybridseg.core.supervision.targets import IGNORE

__all__ = ["anchor_background", "anchor_foreground", "anchor_labels", "anchor_loss", "exclusion_radii", "is_open"]


def exclusion_radii(masks: Iterable[np.ndarray], n_channels: int) -> np.ndarray:
    """Per channel, the median equivalent radius in pixels of its connected objects in ``masks``.

    ``masks`` hold channel indices (0 = background, IGNORE allowed). A class
    with no object in any mask gets 0 (no exclusion beyond the click's disk).
    Channel 0 is always 0.
    """
    from skimage.measure import label as cc_label

    radii: list[list[float]] = [[] for _ in range(n_channels)]
    for m in masks:
        m = np.asarray(m)
        for ch in range(1, n_channels):
            comp = cc_label(m == ch, connectivity=2)
            if comp.max() == 0:
                continue
            areas = np.bincount(comp.ravel())[1:]
            radii[ch].extend(np.sqrt(areas / np.pi).tolist())
    return np.array([float(np.median(r)) if r else 0.0 for r in radii])


def is_open(boxes, target) -> bool:
    """Whether a weak label leaves the background open: no box, and clicks (foreground pixels in ``target``).

    "Present" tags without clicks are not anchored: on the sample data's
    colonoscopy frames an anchor from an early network put background over
    the polyps it had not found yet (polyp Dice 0.685 -> 0.580 at 50 steps,
    docs/training.md); the size prior is their negative evidence.
    """
    if boxes is not None and len(boxes):
        return False
    return bool((target > 0).any())


def anchor_background(probs: torch.Tensor, target: torch.Tensor, present: torch.Tensor,
                      radii: np.ndarray) -> torch.Tensor:
    """Pixels of one open weak image the anchor calls background, ``(H, W)`` bool.

    Parameters
    ----------
    probs : Tensor (K, H, W)
        The anchoring network's softmax on the un-augmented image.
    target : Tensor (H, W)
        The weak target (channel indices, IGNORE where the label says nothing).
    present : Tensor (K,) bool
        Classes the label says are in the image.
    radii : array (K,)
        Exclusion radius of each class (:func:`exclusion_radii`).
    """
    from scipy.ndimage import distance_transform_edt

    k = probs.shape[0]
    pred = probs.argmax(0).cpu().numpy()
    tgt = target.cpu().numpy()
    keep = (pred == 0) & (tgt == IGNORE)
    present = np.asarray(present.cpu() if torch.is_tensor(present) else present, dtype=bool)
    for ch in range(1, k):
        if not present[ch]:
            continue
        clicks = tgt == ch
        if clicks.any():
            r = float(radii[ch]) if ch < len(radii) else 0.0
            if r > 0:
                keep &= distance_transform_edt(~clicks) > r
        elif not (pred == ch).any():
            # a tag says the class is here and the network sees none of it: no authority over this image
            return torch.zeros(tgt.shape, dtype=torch.bool)
    return torch.from_numpy(keep)


def anchor_foreground(probs: torch.Tensor, target: torch.Tensor, present: torch.Tensor) -> torch.Tensor:
    """Pixels the anchor calls foreground, ``(H, W)`` int8 (a class index; IGNORE elsewhere).

    Per class with clicks: the connected components (8-connected) of the
    network's argmax of that class that touch a click of that class, minus
    the pixels the label already fixes. A click the network does not see
    (a wrong one, on background) adds nothing beyond its own disk.
    """
    from skimage.measure import label as cc_label

    pred = probs.argmax(0).cpu().numpy()
    tgt = target.cpu().numpy()
    out = np.full(tgt.shape, IGNORE, dtype=np.int8)
    present = np.asarray(present.cpu() if torch.is_tensor(present) else present, dtype=bool)
    for ch in range(1, probs.shape[0]):
        clicks = tgt == ch
        if not (present[ch] and clicks.any()):
            continue
        comp = cc_label(pred == ch, connectivity=2)
        touched = np.unique(comp[clicks & (comp > 0)])
        if len(touched):
            out[np.isin(comp, touched) & (tgt == IGNORE)] = ch
    return torch.from_numpy(out)


def anchor_labels(probs: torch.Tensor, target: torch.Tensor, present: torch.Tensor, radii: np.ndarray,
                  *, foreground: bool = False) -> torch.Tensor:
    """The anchor of one open weak image, ``(H, W)`` int8: 0 background, a class index, IGNORE elsewhere."""
    out = torch.full(target.shape, IGNORE, dtype=torch.int8)
    out[anchor_background(probs, target, present, radii)] = 0
    if foreground:
        fg = anchor_foreground(probs, target, present)
        out[fg != IGNORE] = fg[fg != IGNORE]
    return out


def anchor_loss(logits: torch.Tensor, anchor: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over each sample's anchor pixels, ``(B,)``; 0 for a sample with none.

    ``anchor`` is ``(B, H, W)`` int labels, IGNORE where the anchor says
    nothing (:func:`anchor_labels`).
    """
    labels = anchor.long()
    a = labels != IGNORE
    if not a.any():
        return logits.new_zeros(logits.shape[0], dtype=torch.float32)
    cost = F.cross_entropy(logits.float(), labels.clamp_min(0).to(logits.device), reduction="none")
    n = a.flatten(1).sum(1).clamp_min(1)
    return (cost * a.to(cost.device)).flatten(1).sum(1) / n
