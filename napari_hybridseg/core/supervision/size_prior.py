"""A size prior from the strong masks: negative evidence for points and "present" tags.

A click says "the object is here" and a "present" tag says "it is somewhere";
neither says where the object is NOT, so with points or present tags on most
images nothing in the other weak terms stops the network from calling the
whole image foreground. The strong masks say how large a structure of each
class is: :class:`SizePrior` takes the range of its foreground fraction over
the strong masks that contain it, widened by a factor ``margin`` either side
(a handful of masks under-covers the true range), and :func:`size_prior_loss`
holds each weak image's predicted size inside it, as size-constrained CNN
losses do (Kervadec et al., "Constrained-CNN losses for weakly supervised
segmentation", Medical Image Analysis 2019).

The size is the soft one (the mean softmax probability of the class over the
image, differentiable); the penalty is a squared hinge on its logarithm, so it
is the same for twice too large at 2% of the image as at 20%:

    upper:  relu(log f_c - log hi_c) ** 2     every foreground class with a range
    lower:  relu(log lo_c - log f_c) ** 2     classes the label says are present

The upper bound holds whatever the weak label is (no structure grows past what
the masks show); the lower bound only where the label says the class is there.
A class that no strong mask contains has no range and no penalty.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["SizePrior", "size_prior_loss"]


@dataclass(frozen=True)
class SizePrior:
    """Per softmax channel, the foreground fraction a structure may take: ``[low, high]``.

    Attributes
    ----------
    low, high : ndarray (K,)
        Bounds on the mean probability of each channel; channel 0 (background)
        and classes without a range have ``low = 0``, ``high = 1`` (no penalty).
    seen : ndarray (K,) of int
        How many strong masks each range comes from.
    """

    low: np.ndarray
    high: np.ndarray
    seen: np.ndarray

    @classmethod
    def from_masks(cls, masks: Iterable[np.ndarray], n_channels: int, margin: float = 2.0) -> SizePrior:
        """The range over ``masks`` (channel indices, 0 = background) of each class that appears.

        Parameters
        ----------
        masks : iterable of (H, W) int arrays
            Strong masks as channel indices (IGNORE pixels are not counted).
        n_channels : int
            Softmax channels ``K`` (classes + 1).
        margin : float
            The observed range is widened to ``[min / margin, max * margin]`` (>= 1).
        """
        if margin < 1:
            raise ValueError(f"margin must be >= 1, got {margin}")
        fracs: list[list[float]] = [[] for _ in range(n_channels)]
        for m in masks:
            m = np.asarray(m)
            known = m >= 0
            n = int(known.sum())
            if not n:
                continue
            counts = np.bincount(m[known].ravel(), minlength=n_channels)[:n_channels]
            for ch in range(1, n_channels):
                if counts[ch]:
                    fracs[ch].append(counts[ch] / n)
        low = np.zeros(n_channels)
        high = np.ones(n_channels)
        seen = np.array([len(f) for f in fracs])
        for ch in range(1, n_channels):
            if fracs[ch]:
                low[ch] = min(fracs[ch]) / margin
                high[ch] = min(1.0, max(fracs[ch]) * margin)
        return cls(low, high, seen)

    @property
    def active(self) -> bool:
        """Whether any class has a range (else the loss is 0)."""
        return bool((self.seen[1:] > 0).any())

    def describe(self, names: Iterable[str]) -> list[str]:
        """One line per class: its range in percent of the image and the masks behind it."""
        out = []
        for ch, name in enumerate(names, 1):
            if ch < len(self.seen) and self.seen[ch]:
                out.append(f"{name}: {100 * self.low[ch]:.2g}-{100 * self.high[ch]:.3g}% of the image "
                           f"(from {self.seen[ch]} mask(s))")
            else:
                out.append(f"{name}: no size range (no strong mask contains it)")
        return out


def size_prior_loss(probs: torch.Tensor, prior: SizePrior, present: torch.Tensor) -> torch.Tensor:
    """The size prior of each sample, ``(B,)``: see the module docstring.

    Parameters
    ----------
    probs : Tensor (B, K, H, W)
        Softmax probabilities.
    prior : SizePrior
        Bounds per channel.
    present : Tensor (B, K) bool
        Channels the weak label says are in the image (the lower bound's rows).
    """
    b, k = probs.shape[:2]
    has = torch.as_tensor(prior.seen[:k] > 0, device=probs.device)
    has[0] = False
    if not has.any():
        return probs.new_zeros(b)
    log_f = probs.float().flatten(2).mean(2).clamp_min(1e-8).log()  # (B, K)
    log_hi = torch.as_tensor(np.log(prior.high[:k]), dtype=log_f.dtype, device=probs.device)
    log_lo = torch.as_tensor(np.log(np.maximum(prior.low[:k], 1e-8)), dtype=log_f.dtype, device=probs.device)
    upper = (log_f - log_hi).clamp_min(0) ** 2 * has
    lower = (log_lo - log_f).clamp_min(0) ** 2 * (has & present.to(probs.device))
    return (upper + lower).sum(1) / has.sum()
