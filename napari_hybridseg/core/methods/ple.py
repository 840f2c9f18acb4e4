"""Pseudo-label enhancement (PLE, MLB-Seg): a 5-view ensemble of the model's own prediction.

The five views of a batch (one geometry for the whole batch, drawn afresh
each call, as :func:`sample_views` does):

0. identity;
1. zoom-in: the image resized up by ``2 * zoom_in`` px and centre-cropped;
2. and 3. zoom-outs: the image resized down by ``2 * pad`` px and padded with
   ``fill`` (two different pads);
4. one flip (left-right, up-down or both).

Pads are drawn from 4..30 px at 144 px (the paper's size) and scaled to the
training size. Each view's prediction is mapped back to the original frame,
the probabilities are averaged where each view covers the pixel (a zoom-in
does not see the border: it is averaged over the views that do, instead of
counting zeros as the original code does), and thresholded at 0.5 (one
channel) or arg-maxed (several) into y^. The consistency term is the mean
over the 10 view pairs of the MSE between their mapped-back probabilities on
the pixels both cover (weight 1 in the total loss); unlike the original code
both members of a pair carry gradient.

Usage in the trainer::

    views = sample_views(x.shape[-2:], generator=g)
    res = enhance(model, x, views)            # res.y_hat (B, H, W), res.consistency (scalar)
    loss = ... + 1.0 * res.consistency
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "N_VIEWS",
    "PLEResult",
    "PLEViews",
    "consistency_loss",
    "enhance",
    "fuse",
    "make_views",
    "sample_views",
    "views_to_original",
]

N_VIEWS = 5
#: pad sizes (px at :data:`REFERENCE_SIZE`) the original draws from
PAD_CHOICES = tuple(range(4, 31, 2))
REFERENCE_SIZE = 144
_FLIPS = {"lr": (-1,), "ud": (-2,), "both": (-2, -1)}


@dataclass(frozen=True)
class PLEViews:
    """The geometry of the five views at one training size.

    Attributes
    ----------
    size : (int, int)
        Training size (rows, cols).
    zoom_in : int
        Pixels added on each side before the centre crop (view 1).
    zoom_out : (int, int)
        Padding on each side of the two shrunk views (views 2 and 3).
    flip : str
        ``"lr"``, ``"ud"`` or ``"both"`` (view 4).
    """

    size: tuple[int, int]
    zoom_in: int
    zoom_out: tuple[int, int]
    flip: str = "lr"

    def __post_init__(self):
        h, w = self.size
        if self.flip not in _FLIPS:
            raise ValueError(f"flip must be one of {sorted(_FLIPS)}, not {self.flip!r}")
        if self.zoom_in < 1 or min(self.zoom_out) < 1 or 2 * max(self.zoom_out) >= min(h, w):
            raise ValueError(f"PLE pads {self.zoom_in}, {self.zoom_out} do not fit a {h}x{w} image; "
                             "use a training size of at least 16 px")


def sample_views(
    size: Sequence[int], generator: torch.Generator | None = None, pads: Sequence[int] = PAD_CHOICES
) -> PLEViews:
    """Draw a view geometry: pads from ``pads`` (px at 144 px) scaled to ``size``; two different zoom-outs."""
    h, w = int(size[0]), int(size[1])
    scale = min(h, w) / REFERENCE_SIZE
    idx = torch.randperm(len(pads), generator=generator)[:3].tolist()
    chosen = [max(1, round(pads[i] * scale)) for i in idx]
    limit = max(1, (min(h, w) - 1) // 2 - 1)  # a shrunk view keeps at least a few pixels
    chosen = [min(p, limit) for p in chosen]
    flip = list(_FLIPS)[int(torch.randint(len(_FLIPS), (1,), generator=generator))]
    return PLEViews((h, w), chosen[0], (chosen[1], chosen[2]), flip)


def _resize(t: Tensor, size: tuple[int, int], mode: str) -> Tensor:
    if mode == "nearest":
        return F.interpolate(t, size=size, mode="nearest")
    return F.interpolate(t, size=size, mode=mode, align_corners=False)


def _zoom_in(t: Tensor, q: int, mode: str) -> Tensor:
    h, w = t.shape[-2:]
    big = _resize(t, (h + 2 * q, w + 2 * q), mode)
    return big[..., q : q + h, q : q + w]


def _zoom_out(t: Tensor, p: int, mode: str, fill: float) -> Tensor:
    h, w = t.shape[-2:]
    small = _resize(t, (h - 2 * p, w - 2 * p), mode)
    return F.pad(small, (p, p, p, p), value=fill)


def make_views(t: Tensor, views: PLEViews, *, mode: str = "bilinear", fill: float = 0.0) -> Tensor:
    """The five views of a batch ``t`` (B, C, H, W), stacked view-major: (5 * B, C, H, W).

    ``mode="nearest"`` maps label maps (as float) the same way as images.
    """
    if tuple(t.shape[-2:]) != tuple(views.size):
        raise ValueError(f"batch is {tuple(t.shape[-2:])}, views were drawn for {views.size}")
    out = [
        t,
        _zoom_in(t, views.zoom_in, mode),
        _zoom_out(t, views.zoom_out[0], mode, fill),
        _zoom_out(t, views.zoom_out[1], mode, fill),
        torch.flip(t, _FLIPS[views.flip]),
    ]
    return torch.cat(out, 0)


def views_to_original(p: Tensor, views: PLEViews) -> tuple[Tensor, Tensor]:
    """Map per-view maps (5 * B, K, H, W) back to the original frame.

    Returns
    -------
    (maps, coverage) : tuple of Tensor
        (5, B, K, H, W) maps and (5, 1, 1, H, W) coverage in [0, 1] (how much
        of each pixel the view saw; 0 outside a zoom-in).
    """
    h, w = views.size
    b = p.shape[0] // N_VIEWS
    v = p.reshape(N_VIEWS, b, *p.shape[1:])
    ones = torch.ones((1, 1, h, w), dtype=p.dtype, device=p.device)
    q = views.zoom_in
    # the zoom-in saw the centre: place it on a larger canvas and shrink, with its coverage
    canvas = F.pad(v[1], (q, q, q, q))
    back_in = _resize(canvas, (h, w), "bilinear")
    cov_in = _resize(F.pad(ones, (q, q, q, q)), (h, w), "bilinear")
    back_in = back_in / cov_in.clamp_min(1e-6)
    maps = [v[0], back_in]
    for k, pad in enumerate(views.zoom_out):
        maps.append(_resize(v[2 + k][..., pad : h - pad, pad : w - pad], (h, w), "bilinear"))
    maps.append(torch.flip(v[4], _FLIPS[views.flip]))
    cov = torch.stack([ones, cov_in, ones, ones, ones])
    return torch.stack(maps), cov


def _probs(logits: Tensor) -> Tensor:
    return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)


def fuse(maps: Tensor, cov: Tensor, threshold: float = 0.5) -> tuple[Tensor, Tensor]:
    """Coverage-weighted mean of mapped-back probabilities and the enhanced label y^ (B, H, W) long."""
    mean = (maps * cov).sum(0) / cov.sum(0).clamp_min(1e-6)
    y_hat = (mean[:, 0] > threshold).long() if mean.shape[1] == 1 else mean.argmax(1)
    return mean, y_hat


def consistency_loss(maps: Tensor, cov: Tensor) -> Tensor:
    """Mean over the 10 view pairs of the MSE between mapped-back probabilities on jointly covered pixels."""
    terms = []
    k = maps.shape[2]
    for a, b in itertools.combinations(range(maps.shape[0]), 2):
        both = cov[a] * cov[b]
        denom = both.sum() * maps.shape[1] * k
        terms.append((both * (maps[a] - maps[b]) ** 2).sum() / denom.clamp_min(1e-6))
    return torch.stack(terms).mean()


@dataclass
class PLEResult:
    """What :func:`enhance` returns.

    Attributes
    ----------
    y_hat : Tensor
        (B, H, W) long, the enhanced prediction (detached).
    probabilities : Tensor
        (B, K, H, W) the averaged probabilities (detached).
    consistency : Tensor
        Scalar pairwise consistency term, differentiable (0-dim).
    view_logits : Tensor
        (5 * B, K, H, W) the logits of the views, view-major (view 0 = the
        batch as given: reusable as the identity forward).
    """

    y_hat: Tensor
    probabilities: Tensor
    consistency: Tensor
    view_logits: Tensor


def enhance(
    forward: Callable[[Tensor], Tensor],
    x: Tensor,
    views: PLEViews | None = None,
    *,
    generator: torch.Generator | None = None,
    threshold: float = 0.5,
    fill: float = 0.0,
    with_consistency: bool = True,
) -> PLEResult:
    """Run the 5-view ensemble of ``forward`` (a model, or any ``x -> logits``) on ``x`` (B, C, H, W).

    One forward of a 5x batch. Under ``torch.no_grad()`` (pseudo-labels only)
    the consistency term is still computed but carries no gradient; pass
    ``with_consistency=False`` to skip it.
    """
    views = views or sample_views(x.shape[-2:], generator)
    out = forward(make_views(x, views, fill=fill))
    logits = out[0] if isinstance(out, (tuple, list)) else out
    maps, cov = views_to_original(_probs(logits), views)
    mean, y_hat = fuse(maps.detach(), cov, threshold)
    cons = consistency_loss(maps, cov) if with_consistency else logits.new_zeros(())
    return PLEResult(y_hat, mean, cons, logits)
