"""Per-pixel costs of the two targets, their logit gradients, and the weights' normalisation.

The cheap, closed-form half of MLB-Seg's pixel weights (:mod:`.pixel_weights`
holds the exact computation): ``c_p`` against the initial label y~ and the
model's own label y^, ``dc_p/dz_p``, the initial label with its unknown pixels
filled, the batch-wide normalisation, and the maps and summaries reports show.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["fill_ignored", "initial_from_model", "normalise_per_image", "normalise_weights", "pixel_cost_grads",
           "pixel_costs", "weight_maps_at", "weight_summary"]


# -- per-pixel costs -----------------------------------------------------------
def _as_targets(y: Tensor, logits: Tensor) -> Tensor:
    """Targets as class indices (K >= 2, long) or {0, 1} floats (K == 1), invalid values made harmless."""
    if logits.shape[1] == 1:
        return y.to(logits.dtype).clamp(0, 1)
    return y.long().clamp(0, logits.shape[1] - 1)


def _valid(valid: Tensor | None, like: Tensor) -> Tensor:
    if valid is None:
        return torch.ones(like.shape, dtype=torch.bool, device=like.device)
    return valid.to(device=like.device, dtype=torch.bool)


def pixel_costs(
    logits: Tensor,
    targets_init: Tensor,
    targets_own: Tensor,
    valid_init: Tensor | None = None,
    valid_own: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Per-pixel costs ``c = [CE(z, y~), CE(z, y^)]``, 0 where a target is not valid.

    Parameters
    ----------
    logits : Tensor
        (B, K, H, W). ``K >= 2``: softmax cross-entropy against class indices;
        ``K == 1``: binary cross-entropy with logits against {0, 1}.
    targets_init, targets_own : Tensor
        (B, H, W) class indices (values outside [0, K) only where not valid).
    valid_init, valid_own : Tensor, optional
        (B, H, W) bool; None = every pixel.

    Returns
    -------
    (c_init, c_own) : tuple of Tensor
        (B, H, W) each, differentiable in ``logits``.
    """
    out = []
    for y, valid in ((targets_init, valid_init), (targets_own, valid_own)):
        yt = _as_targets(y, logits)
        if logits.shape[1] == 1:
            c = F.binary_cross_entropy_with_logits(logits[:, 0], yt, reduction="none")
        else:
            c = F.cross_entropy(logits, yt, reduction="none")
        out.append(c * _valid(valid, yt))
    return out[0], out[1]


def pixel_cost_grads(logits: Tensor, targets: Tensor) -> Tensor:
    """``dc_p / dz_p`` of the per-pixel cost, (B, K, H, W): ``softmax(z) - onehot(y)`` or ``sigmoid(z) - y``."""
    y = _as_targets(targets, logits)
    if logits.shape[1] == 1:
        return (torch.sigmoid(logits[:, 0]) - y).unsqueeze(1)
    onehot = F.one_hot(y, logits.shape[1]).permute(0, 3, 1, 2).to(logits.dtype)
    return torch.softmax(logits, dim=1) - onehot


def fill_ignored(init_label: Tensor, logits: Tensor, ignore: int = -1) -> tuple[Tensor, Tensor]:
    """Initial label y~: the weak label where it says something, the model's prediction elsewhere.

    Parameters
    ----------
    init_label : Tensor
        (B, H, W) int, :attr:`Targets.init_label` (``ignore`` where unknown).
    logits : Tensor
        (B, K, H, W) current predictions (detached internally).
    ignore : int
        The "says nothing" value. Default -1 (:data:`targets.IGNORE`).

    Returns
    -------
    (y_init, from_label) : tuple of Tensor
        The filled targets (long) and a bool mask of the pixels the label gave.
    """
    with torch.no_grad():
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    known = init_label != ignore
    return torch.where(known, init_label.long(), pred), known


def initial_from_model(init_label: Tensor, certainty: Tensor, logits: Tensor, ignore: int = -1,
                       unknown: int = 0) -> Tensor:
    """Initial label y~ from a model that learnt the strong set (MLB-Seg's y~), kept inside the weak label.

    Where the weak label is certain (outside every box, a click's disk, an
    "absent" tag) y~ is the label; inside a box (labelled, not certain) it is
    the box's class where the model predicts that class and background
    elsewhere (the box intersected with what the model sees); where the
    label says nothing ("present" tags, unlabeled images) it is the model's
    prediction.

    Parameters
    ----------
    init_label : Tensor
        (B, H, W) int, :attr:`Targets.init_label` (``ignore`` where unknown).
    certainty : Tensor
        (B, H, W) :attr:`Targets.certainty` (``unknown`` where the label is not certain).
    logits : Tensor
        (B, K, H, W) the model's predictions of the same rows (detached internally).
    ignore, unknown : int
        :data:`targets.IGNORE` and :data:`targets.UNKNOWN`.

    Returns
    -------
    Tensor
        (B, H, W) long.
    """
    with torch.no_grad():
        pred = (logits[:, 0] > 0).long() if logits.shape[1] == 1 else logits.argmax(1)
    init = init_label.long()
    certain = certainty != unknown
    labelled = init != ignore
    in_box = labelled & ~certain & (init > 0)
    out = torch.where(labelled, init, pred)
    return torch.where(in_box, torch.where(pred == init, init, torch.zeros_like(init)), out)


# -- normalisation -------------------------------------------------------------
def _positive(raw_init: Tensor, raw_own: Tensor, take_part: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor]:
    """``max(w~, 0)`` of both maps as detached float32, 0 where a pixel does not take part."""
    a = raw_init.detach().float().clamp_min(0)
    b = raw_own.detach().float().clamp_min(0)
    if take_part is not None:
        a = a * take_part[0]
        b = b * take_part[1]
    return a, b


def normalise_weights(
    raw_init: Tensor, raw_own: Tensor, take_part: tuple[Tensor, Tensor] | None = None
) -> tuple[Tensor, Tensor]:
    """``w = max(w~, 0) / sum max(w~, 0)`` over both maps and the whole batch; all 0 if nothing is positive.

    ``take_part`` (two bool masks) zeroes pixels that do not take part before
    the sum. Returns float32 tensors, detached.
    """
    a, b = _positive(raw_init, raw_own, take_part)
    total = a.sum() + b.sum()
    # 0-safe: a batch where following any pixel would hurt the strong batch gets no pixel loss at all
    if not torch.isfinite(total) or total <= 0:
        return torch.zeros_like(a), torch.zeros_like(b)
    return a / total, b / total


def normalise_per_image(raw_init: Tensor, raw_own: Tensor, gamma: Tensor | None = None,
                        take_part: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, Tensor]:
    """Each image's ``max(w~, 0)`` at unit mass over its two maps, times its gamma, over the number of images.

    The batch-wide :func:`normalise_weights` leaves only the ratio of the gammas
    inside one batch: a batch of distrusted images gets the same unit mass as
    a batch of trusted ones. Here the weights only say where inside an image
    the mass goes; how much an image counts is its gamma, explicitly: image k
    carries ``gamma_k / B`` (all 0 where nothing of it is positive), so the
    pixel loss is the mean over images of gamma times a weighted mean cost.
    Returns float32 tensors, detached.
    """
    a, b = _positive(raw_init, raw_own, take_part)
    n = a.shape[0]
    total = (a.flatten(1).sum(1) + b.flatten(1).sum(1)).view(-1, 1, 1)
    ok = torch.isfinite(total) & (total > 0)
    g = torch.ones_like(total) if gamma is None else gamma.detach().float().to(a.device).view(-1, 1, 1)
    scale = torch.where(ok, g / (total.clamp_min(1e-30) * max(n, 1)), torch.zeros_like(total))
    return torch.nan_to_num(a * scale), torch.nan_to_num(b * scale)


# -- for reports and the run record ----------------------------------------------
def weight_summary(w_init: Tensor, w_own: Tensor) -> list[tuple[float, float]]:
    """Per sample: (mean weight on its initial label, mean weight on its own prediction), times H*W.

    Scaled by the pixel count so that 1.0 means "as much as a uniform weight
    over one target of one image would give"; comparable across sizes.
    """
    hw = w_init.shape[-1] * w_init.shape[-2]
    a = (w_init.detach().float().flatten(1).mean(1) * hw).tolist()
    b = (w_own.detach().float().flatten(1).mean(1) * hw).tolist()
    return list(zip(a, b))


def weight_maps_at(w: Tensor, shapes: list[tuple[int, int]]) -> list[np.ndarray]:
    """Weight maps (B, H, W) resized (bilinear) to each sample's own (rows, cols), as float32 numpy.

    Values are rescaled so the image's maximum is 1 (a heatmap a person can
    read; the absolute scale is batch-dependent). An all-zero map stays 0.
    """
    out = []
    for i, shape in enumerate(shapes):
        m = F.interpolate(w[i : i + 1, None].detach().float(), size=tuple(shape), mode="bilinear",
                          align_corners=False)[0, 0]
        top = m.max()
        out.append((m / top if top > 0 else m).cpu().numpy().astype(np.float32))
    return out
