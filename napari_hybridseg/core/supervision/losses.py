"""Hybrid supervision losses (METHOD.md section 3).

Every function returns one value PER SAMPLE (shape ``(B,)``) so that the
trainer can multiply weak samples' terms by their DII weight gamma_k and the
DII scorer can differentiate each weak sample's own loss. Pixel-level weak
terms are built from per-pixel cost maps (:func:`pixel_ce`) so that MLB-Seg
pixel weights (``core/pixel_weights.py``) can multiply them.

Channel 0 is background; ``K = n_classes + 1`` softmax channels; targets hold
channel indices with :data:`~napari_hybridseg.core.supervision.targets.IGNORE` (-1) where
the label says nothing. Losses are computed in float32 whatever the autocast
dtype, because log-probabilities of near-certain pixels underflow in bf16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_hybridseg.core.supervision.targets import IGNORE

__all__ = [
    "LossWeights",
    "absent_loss",
    "aux_tag_loss",
    "box_pairwise",
    "box_tightness",
    "colour_affinity",
    "dice_loss",
    "margin_objective",
    "mil_loss",
    "partial_ce",
    "pixel_ce",
    "strong_loss",
    "weak_losses",
]


@dataclass(frozen=True)
class LossWeights:
    """Weights of the weak terms relative to the partial cross-entropy."""

    box: float = 1.0
    mil: float = 1.0
    aux: float = 0.4
    pairwise: float = 1.0
    #: the size prior on weak images without boxes (``core/supervision/size_prior.py``; the step applies it)
    size: float = 1.0
    #: the anchor's background on open weak images (``core/supervision/anchor.py``; the step applies it)
    anchor: float = 1.0


def pixel_ce(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pixel softmax cross-entropy and the mask of pixels that have a target.

    Returns
    -------
    cost : (B, H, W) float32, 0 where the target is IGNORE
    valid : (B, H, W) bool
    """
    valid = target != IGNORE
    cost = F.cross_entropy(logits.float(), target.clamp_min(0), reduction="none")
    return cost * valid, valid


def partial_ce(logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over each sample's known pixels, ``(B,)``; 0 for a sample with none.

    ``pixel_weight`` (B, H, W), if given, multiplies the cost map before the mean
    (the MLB-Seg hook).
    """
    cost, valid = pixel_ce(logits, target)
    if pixel_weight is not None:
        cost = cost * pixel_weight
    n = valid.flatten(1).sum(1).clamp_min(1)
    return cost.flatten(1).sum(1) / n


def dice_loss(probs: torch.Tensor, target: torch.Tensor, smooth: float = 1.0) -> torch.Tensor:
    """Soft Dice loss over the foreground channels, per sample ``(B,)``.

    The smoothing term makes an empty mask predicted empty score a loss of 0
    rather than 0/0.
    """
    k = probs.shape[1]
    onehot = F.one_hot(target.clamp_min(0), k).permute(0, 3, 1, 2).float()
    valid = (target != IGNORE).unsqueeze(1).float()
    p, t = probs[:, 1:] * valid, onehot[:, 1:] * valid
    inter = (p * t).flatten(2).sum(2)
    denom = p.flatten(2).sum(2) + t.flatten(2).sum(2)
    return 1.0 - ((2 * inter + smooth) / (denom + smooth)).mean(1)


def strong_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice of strong samples, per sample ``(B,)``."""
    probs = logits.float().softmax(1)
    return partial_ce(logits, target) + dice_loss(probs, target)


def margin_objective(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """A non-saturating, class-balanced objective on strong samples, per sample ``(B,)``.

    Minus the mean centred logit (``z_c - mean_c' z_c'``) of each class over the
    pixels of that class in the mask, averaged over the classes the mask holds
    (pixels at IGNORE left out). Its gradient with respect to the logits is a
    constant per pixel, ``-(e_c - 1/K) / n_c``: unlike cross-entropy + Dice it
    does not vanish where the network already fits the mask. DII's
    ``dii.strong_objective=margin`` takes ``g_S`` from it: "which way do the
    strong masks pull the head", not "which way does the strong loss still
    pull" (the residual, small and of changing sign once the strong set is
    learnt).
    """
    z = logits.float()
    zc = z - z.mean(1, keepdim=True)
    k = z.shape[1]
    valid = (target != IGNORE).unsqueeze(1).float()
    onehot = F.one_hot(target.clamp_min(0).long(), k).permute(0, 3, 1, 2).float() * valid
    count = onehot.flatten(2).sum(2)  # (B, K)
    mean_c = (zc * onehot).flatten(2).sum(2) / count.clamp_min(1.0)
    present = (count > 0).float()
    return -(mean_c * present).sum(1) / present.sum(1).clamp_min(1.0)


def box_tightness(probs: torch.Tensor, boxes: Sequence[np.ndarray], eps: float = 1e-6) -> torch.Tensor:
    """BoxInst-style projection term, per sample ``(B,)``.

    Inside a box of class c, every row and every column of the box must hold at
    least one pixel of class c: the max of the class probability along each row
    and column should be 1 (``-log`` of it is the cost). Pixels outside the box
    are supervised as background by the partial cross-entropy.
    """
    out = probs.new_zeros(probs.shape[0])
    for b, bx in enumerate(boxes):
        if bx is None or not len(bx):
            continue
        terms = []
        for ch, r0, c0, r1, c1 in np.asarray(bx).tolist():
            p = probs[b, ch, r0:r1, c0:c1]
            rows = p.amax(1).clamp_min(eps)
            cols = p.amax(0).clamp_min(eps)
            terms.append(0.5 * (-rows.log().mean() - cols.log().mean()))
        out[b] = torch.stack(terms).mean()
    return out


#: 8-neighbourhood offsets (dy, dx) of the pairwise term, at dilation 1
_NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _rgb_to_lab(rgb: torch.Tensor) -> torch.Tensor:
    """sRGB in [0, 1], (B, 3, H, W) -> CIE L*a*b* (D65), L in [0, 100]."""
    lin = torch.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    m = rgb.new_tensor([[0.412453, 0.357580, 0.180423],
                        [0.212671, 0.715160, 0.072169],
                        [0.019334, 0.119193, 0.950227]])
    xyz = torch.einsum("ij,bjhw->bihw", m, lin)
    xyz = xyz / rgb.new_tensor([0.950456, 1.0, 1.088754]).view(1, 3, 1, 1)
    f = torch.where(xyz > 0.008856, xyz.clamp_min(1e-12) ** (1 / 3), 7.787 * xyz + 16 / 116)
    lab_l = 116 * f[:, 1] - 16
    lab_a = 500 * (f[:, 0] - f[:, 1])
    lab_b = 200 * (f[:, 1] - f[:, 2])
    return torch.stack([lab_l, lab_a, lab_b], 1)


def _shift(t: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``out[..., y, x] = t[..., y + dy, x + dx]``, zero where that falls outside."""
    h, w = t.shape[-2:]
    out = torch.zeros_like(t)
    ys, yd = (slice(dy, h), slice(0, h - dy)) if dy >= 0 else (slice(0, h + dy), slice(-dy, h))
    xs, xd = (slice(dx, w), slice(0, w - dx)) if dx >= 0 else (slice(0, w + dx), slice(-dx, w))
    out[..., yd, xd] = t[..., ys, xs]
    return out


def colour_affinity(rgb: torch.Tensor, dilation: int = 2, theta: float = 2.0) -> torch.Tensor:
    """Colour similarity of every pixel to its 8 neighbours at ``dilation``, as BoxInst computes it.

    ``S = exp(-||lab_i - lab_j|| / theta)`` in CIE L*a*b* (greyscale images, with
    equal channels, compare brightness only). Returns (B, 8, H, W); 0 for
    neighbours outside the image.
    """
    lab = _rgb_to_lab(rgb.float().clamp(0, 1))
    out = []
    for dy, dx in _NEIGHBOURS:
        other = _shift(lab, dy * dilation, dx * dilation)
        inside = _shift(torch.ones_like(lab[:, :1]), dy * dilation, dx * dilation)[:, 0]
        # ((.)**2).sum().sqrt() rather than .norm(dim=1): 20x faster on the CPU for 3 channels
        out.append(torch.exp(-((lab - other) ** 2).sum(1).sqrt() / theta) * inside)
    return torch.stack(out, 1)


def box_pairwise(probs: torch.Tensor, affinity: torch.Tensor, boxes: Sequence[np.ndarray],
                 dilation: int = 2, threshold: float = 0.3, eps: float = 1e-6) -> torch.Tensor:
    """BoxInst's pairwise term inside boxes, per sample ``(B,)``.

    Neighbouring pixels of similar colour (affinity >= ``threshold``) should take
    the same label: the cost of an edge is ``-log P(same label)``,
    ``P = sum_c p_i,c p_j,c``; the mean over the edges whose two pixels lie in a
    box. The projection term alone is met by one pixel per row and column (thin
    stripes); this term fills a box's object the way its colours run. It says
    nothing about the box being right, so DII does not score it.

    Parameters
    ----------
    probs : Tensor (B, K, H, W)
        Softmax probabilities.
    affinity : Tensor (B, 8, H, W)
        From :func:`colour_affinity` at the same ``dilation``.
    boxes : sequence of (n, 5) int arrays
        ``channel, r0, c0, r1, c1`` per box (end exclusive), per sample.
    """
    b, _, h, w = probs.shape
    out = probs.new_zeros(b)
    region = torch.zeros(b, 1, h, w, dtype=torch.bool, device=probs.device)
    for i, bx in enumerate(boxes):
        for _, r0, c0, r1, c1 in np.asarray(bx).reshape(-1, 5).tolist():
            region[i, 0, r0:r1, c0:c1] = True
    if not region.any():
        return out
    cost = probs.new_zeros(b)
    count = probs.new_zeros(b)
    for n, (dy, dx) in enumerate(_NEIGHBOURS):
        other = _shift(probs, dy * dilation, dx * dilation)
        same = (probs * other).sum(1)  # (B, H, W)
        edge = (affinity[:, n] >= threshold) & region[:, 0] & _shift(region, dy * dilation, dx * dilation)[:, 0]
        edge = edge.float()
        cost = cost + (-same.clamp_min(eps).log() * edge).flatten(1).sum(1)
        count = count + edge.flatten(1).sum(1)
    return torch.where(count > 0, cost / count.clamp_min(1), out)


def mil_loss(probs: torch.Tensor, present: torch.Tensor, skip: torch.Tensor | None = None,
             top_fraction: float = 0.01) -> torch.Tensor:
    """Multiple-instance term for "structure present" tags, per sample ``(B,)``.

    The mean of the top-k probabilities of each present class (k = 1% of the
    pixels, at least 1) should be 1. ``skip`` (B, K) bool excludes channels that
    already have a stronger signal (a box or a point of that class).
    """
    b, k, h, w = probs.shape
    want = present.clone()
    want[:, 0] = False
    if skip is not None:
        want &= ~skip
    if not want.any():
        return probs.new_zeros(b)
    n_top = max(1, int(round(top_fraction * h * w)))
    top = probs.flatten(2).topk(n_top, dim=2).values.mean(2).clamp_min(1e-6)  # (B, K)
    cost = -top.log() * want
    return cost.sum(1) / want.sum(1).clamp_min(1)


def absent_loss(probs: torch.Tensor, absent: torch.Tensor | None, eps: float = 1e-6) -> torch.Tensor:
    """"Structure absent" tags for single classes, per sample ``(B,)``.

    When every class is absent the targets already make the whole image
    background; when only some are (e.g. "no polyp" in a collection that also
    segments scleral spurs) the other classes stay possible, so the
    probability of each absent class is pushed to 0 everywhere:
    mean over pixels of ``-log(1 - p_c)``. Samples whose every class is
    absent get 0 here: their all-background target already says it (with one
    class, ``-log(1 - p_1)`` is that target's cross-entropy), and counting it
    twice made a flipped "absent" tag, the most harmful kind, weigh double.
    """
    if absent is None:
        return probs.new_zeros(probs.shape[0])
    want = absent.clone()
    want[:, 0] = False
    if want.shape[1] > 1:
        want[absent[:, 1:].all(1)] = False  # every class absent: the partial CE's all-background target has it
    if not want.any():
        return probs.new_zeros(probs.shape[0])
    cost = -(1 - probs).clamp_min(eps).log().flatten(2).mean(2) * want  # (B, K)
    return cost.sum(1) / want.sum(1).clamp_min(1)


def aux_tag_loss(aux_logits: torch.Tensor | None, tag_target: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy of the image-level head on known tags, per sample ``(B,)``."""
    if aux_logits is None or tag_target.numel() == 0:
        return tag_target.new_zeros(tag_target.shape[0])
    known = tag_target >= 0
    cost = F.binary_cross_entropy_with_logits(aux_logits.float(), tag_target.clamp_min(0), reduction="none")
    return (cost * known).sum(1) / known.sum(1).clamp_min(1)


def weak_losses(logits: torch.Tensor, aux_logits: torch.Tensor | None, target: torch.Tensor,
                boxes: Sequence[np.ndarray], present: torch.Tensor, tag_target: torch.Tensor,
                weights: LossWeights = LossWeights(), pixel_weight: torch.Tensor | None = None,
                absent: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Every weak term of each sample against its own weak target.

    Returns
    -------
    dict
        ``"pce"`` (partial CE: box exteriors, point disks, absent tags),
        ``"box"`` (tightness), ``"mil"`` (present tags, and absent tags of
        single classes), ``"aux"`` (tag head),
        each ``(B,)`` and already multiplied by its :class:`LossWeights` factor,
        plus ``"sum"``: their total, the per-instance loss DII scores.
    """
    probs = logits.float().softmax(1)
    k = logits.shape[1]
    # channels with a box or a positive point already get a pixel-level signal
    has_pixels = torch.zeros_like(present)
    for b, bx in enumerate(boxes):
        if bx is not None and len(bx):
            has_pixels[b, np.unique(np.asarray(bx)[:, 0])] = True
    fg_known = F.one_hot(target.clamp_min(0), k).bool() & (target != IGNORE).unsqueeze(-1)
    has_pixels |= fg_known.flatten(1, 2).any(1)
    has_pixels[:, 0] = False
    terms = {
        "pce": partial_ce(logits, target, pixel_weight),
        "box": weights.box * box_tightness(probs, boxes) if weights.box else probs.new_zeros(len(boxes)),
        "mil": weights.mil * (mil_loss(probs, present, skip=has_pixels) + absent_loss(probs, absent)),
        "aux": weights.aux * aux_tag_loss(aux_logits, tag_target),
    }
    terms["sum"] = terms["pce"] + terms["box"] + terms["mil"] + terms["aux"]
    return terms
