"""Dynamic co-regularization: cross pseudo supervision (CPS) on CutMix-mixed pairs.

Two networks of the same architecture, initialised differently, see the same
CutMix-mixed images; each is trained towards the other's argmax on them. Each
mixed image's term is weighted by the mean DII weight of its two sources, so a
distrusted weak image also contributes less here. lambda (default 4, the
paper's best) ramps up with a sigmoid schedule: early pseudo-labels are noise.

Pixels whose label is known (a strong mask, outside every box, a point disk,
an "absent" tag) are left out of CPS (``known``): the supervised terms already
say what they are, and pseudo-labels there, at lambda = 4 against a loss
weighted by gamma, outvoted the labels (both networks agreed on foreground
outside the boxes and drifted there together, measured on Kvasir-SEG). CPS
acts where the labels leave the answer open: box interiors, unlabeled images,
images with only tags.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["cps_loss", "cutmix", "cutmix_boxes", "rampup"]


def rampup(step: int, rampup_steps: int) -> float:
    """Sigmoid ramp-up ``exp(-5 (1 - t)^2)`` from 0 to 1 over ``rampup_steps``."""
    if rampup_steps <= 0 or step >= rampup_steps:
        return 1.0
    t = max(0.0, step / rampup_steps)
    return float(math.exp(-5.0 * (1.0 - t) ** 2))


def cutmix_boxes(n: int, h: int, w: int, rng: np.random.Generator,
                 area: tuple[float, float] = (0.25, 0.5)) -> torch.Tensor:
    """One random rectangle per image as a (n, 1, h, w) float mask (1 = from the partner)."""
    mask = torch.zeros(n, 1, h, w)
    for i in range(n):
        a = rng.uniform(*area)
        ratio = rng.uniform(0.5, 2.0)
        bh = int(round(min(h, math.sqrt(a * h * w * ratio))))
        bw = int(round(min(w, math.sqrt(a * h * w / ratio))))
        r0 = int(rng.integers(0, h - bh + 1))
        c0 = int(rng.integers(0, w - bw + 1))
        mask[i, :, r0:r0 + bh, c0:c0 + bw] = 1.0
    return mask


def cutmix(x: torch.Tensor, perm: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Paste each partner ``x[perm]`` into ``x`` where ``mask`` is 1."""
    mask = mask.to(x.device, x.dtype)
    return x * (1 - mask) + x[perm] * mask


def cps_loss(logits_a: torch.Tensor, logits_b: torch.Tensor, weight: torch.Tensor | None = None,
             known: torch.Tensor | None = None) -> torch.Tensor:
    """Cross pseudo supervision: each network learns the other's argmax.

    Parameters
    ----------
    logits_a, logits_b : Tensor (B, K, H, W)
    weight : Tensor (B,) or (B, H, W), optional
        Per image (mean gamma of the mixed pair) or per pixel.
    known : Tensor (B, H, W) bool, optional
        Pixels whose label is known: they take no CPS cost.

    Returns
    -------
    Tensor
        Scalar: the mean over pixels and images of both cross-entropies
        (known pixels count as 0).
    """
    ya = logits_a.detach().argmax(1)
    yb = logits_b.detach().argmax(1)
    cost = F.cross_entropy(logits_a.float(), yb, reduction="none") + F.cross_entropy(logits_b.float(), ya,
                                                                                     reduction="none")
    if weight is not None:
        w = weight.to(cost.dtype)
        cost = cost * (w.view(-1, 1, 1) if w.dim() == 1 else w)
    if known is not None:
        cost = cost * (~known.to(cost.device)).to(cost.dtype)
    return cost.mean()
