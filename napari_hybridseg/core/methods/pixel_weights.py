"""MLB-Seg meta-learned pixel weights, computed exactly with one forward-mode JVP.

Interface for the trainer
-------------------------
Per-pixel costs, their gradients and the normalisation live in
:mod:`.pixel_costs`; the functional and dual forwards in :mod:`.dual_forward`;
this module computes the weights (:func:`exact_pixel_weights`, and the
unrolled reference :func:`unrolled_pixel_weights`) and re-exports the rest.

For the non-strong samples of a batch (weak and unlabeled; strong samples may
sit in the same batch with ``valid_* = False``) the trainer has two per-pixel
targets:

* ``targets_init`` = y~: :attr:`Targets.init_label` with its IGNORE pixels
  filled by the current model's prediction (:func:`fill_ignored`); for an
  unlabeled sample, the prediction of the model trained so far (refreshed
  every ``config.unlabeled_refresh`` steps);
* ``targets_own`` = y^: the model's own enhanced prediction (:mod:`.ple`).

The trainer's one pixel-weight path is
:class:`napari_hybridseg.core.training.pixel_term.PixelWeightTerm` (y~, y^ with
PLE, the mean teacher, the ramp-up). Underneath, per step it calls (a general
form; the trainer passes ``keep_graph=False`` and takes each network's costs on
its own forward)::

    pw = exact_pixel_weights(model, x, y_init, y_own, v_init, v_own, xs, ys, strong_loss,
                             alpha=config.meta_lr or lr, sample_gamma=gamma,
                             fixed_init=fixed if config.pixel_weights_fix_certain else None,
                             virtual_loss_fn=unweighted_terms, return_details=True,
                             update_buffers=True)
    c_init, c_own = pixel_costs(pw.logits, y_init, y_own, v_init, v_own)
    loss_pw = (pw.w_init * c_init + pw.w_own * c_own).sum()       # gamma is already inside w
    loss = loss_pw + other terms; loss.backward(); optimizer.step()

* **gamma** (DII instance weight): pass it as ``sample_gamma`` (shape (B,)). The
  weighted training loss is then ``sum_p eps_p * gamma_k * c_p``, so the raw
  weights scale with gamma_k before clamping and normalisation:
  ``w_p ∝ gamma_k * max(w~_p, 0)``. Do **not** multiply ``loss_pw`` by gamma
  again. (Without ``sample_gamma`` the weights ignore gamma; then multiply
  per sample yourself.)
* **alpha** is the virtual step's learning rate: ``config.meta_lr``, or the
  optimiser's current lr when that is None (what the original code does: it
  takes the virtual step with the real optimiser). alpha only scales w~, which
  the normalisation removes, except through ``virtual_loss_fn``'s step size.
* **logits**: ``pw.logits`` is the primal output of the dual forward, still on
  the autograd graph of the model's parameters: reuse it for the real update
  instead of a second forward ("sharing the dual forward"). With
  ``update_buffers=True`` the BatchNorm running statistics are updated exactly
  as an ordinary train-mode forward would.
* **cost per step** (measured by ``benchmarks/pw_speed.py``): one backward of the
  unweighted terms (only with ``virtual_loss_fn``), one forward + backward of
  the meta loss on the strong batch at theta', and one dual (JVP) forward of
  the weak batch, which replaces the real step's forward.

What is computed, and why it is exact
-------------------------------------
Per-pixel costs ``c_p`` (softmax cross-entropy for ``K >= 2`` channels, BCE
with logits for ``K == 1``) against both targets, with weights eps = 0. The
virtual step is ::

    theta' = theta - alpha * grad_theta [ sum_p eps_p * gamma_k(p) * c_p(theta) + U(theta) ]

where ``U`` are the *unweighted* terms (``virtual_loss_fn``; in the original
MLB-Seg code: the PLE consistency term and the mean-teacher MSE; None means
U = 0, the learning-to-reweight choice, theta' = theta). At eps = 0 only U
moves theta', and since ``d theta' / d eps_p = -alpha * gamma_k grad c_p(theta)``
(U does not depend on eps) ::

    w~_p = -dL_meta(theta')/d eps_p = alpha * gamma_k * < grad L_meta(theta'), grad c_p(theta) >.

With ``v = grad L_meta(theta')`` and the chain rule through the logits z,
``<v, grad c_p> = <dc_p/dz_p, (J_z v)_p>`` where ``dc_p/dz_p = softmax(z_p) -
onehot(y_p)`` (``sigmoid(z_p) - y_p`` for BCE). ``t = J_z v`` is one forward-mode
JVP of the logits of the weak batch along v, and it serves both targets. No
approximation is made (the test checks the unrolled double-backward computation
to a relative error below 1e-4); momentum and weight decay of a real
optimiser would shift theta' but not this derivative.

Normalisation: ``w = max(w~, 0) / sum max(w~, 0)`` over the whole batch, both
targets, all pixels that take part; all zeros when nothing is positive.

Held-fixed pixels (``fixed_init``): pixels the weak label makes certain
(``Targets.certainty != UNKNOWN``: outside every box, an "absent" tag, point
disks) can be excluded from the competition: both weights are 0 there and they
do not enter the normaliser. The trainer supervises them through its ordinary
(gamma-weighted) partial cross-entropy on ``Targets.target``, so they keep
their certain label at full strength instead of sharing the batch's unit mass.

BatchNorm: train-mode BN updates running statistics in place, which ``jvp``
rejects. The dual forward runs through :func:`torch.func.functional_call` with
the model's float buffers passed as primals (zero tangents) on copies and
``num_batches_tracked`` hidden, so it uses batch statistics like an ordinary
train-mode forward; with ``update_buffers=True`` the updated copies are written
back to the module afterwards. The meta forward at theta' uses discarded copies.

Precision: the dual forward ignores the caller's autocast (forward-mode AD has
no autocast rules) and runs in the model's dtype; the returned logits are then
fp32 for an fp32 model. The meta forward follows the caller's autocast.

Fallback: where an operation has no forward-mode rule the same t = J_z v is
computed with the double-backward trick (``J v = d/du <J^T u, v>``), with one
:class:`UserWarning` per call. ``method="double-backward"`` forces it.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor, nn

from napari_hybridseg.core.methods.dual_forward import (
    Forward,
    _buffer_copies,  # noqa: F401  (tests reach the helpers through this module)
    _double_backward_logits,
    _first,
    _jvp_logits,
    _params_of,
    _write_back,
    stats_kept_forward,
)
from napari_hybridseg.core.methods.pixel_costs import (
    _valid,
    fill_ignored,
    initial_from_model,
    normalise_per_image,
    normalise_weights,
    pixel_cost_grads,
    pixel_costs,
    weight_maps_at,
    weight_summary,
)

__all__ = [
    "PixelWeights",
    "exact_pixel_weights",
    "fill_ignored",
    "initial_from_model",
    "normalise_per_image",
    "normalise_weights",
    "pixel_costs",
    "pixel_cost_grads",
    "stats_kept_forward",
    "unrolled_pixel_weights",
    "weight_maps_at",
    "weight_summary",
]

StrongLoss = Callable[[Tensor, Tensor], Tensor]
VirtualLoss = Callable[[Forward], Tensor]


@dataclass
class PixelWeights:
    """Result of a pixel-weight computation (``return_details=True``).

    Attributes
    ----------
    w_init, w_own : Tensor
        Normalised weights (B, H, W), float32, detached; together they sum to 1
        (or are all 0).
    raw_init, raw_own : Tensor
        The raw weights w~ before clamping and normalisation (0 where a pixel
        does not take part), in the model's dtype.
    logits : Tensor or None
        The primal logits of the weak batch at theta (B, K, H, W), on the
        autograd graph of the parameters (reuse them for the real update).
        None for the unrolled reference.
    method : str
        ``"jvp"``, ``"double-backward"`` or ``"unrolled"``.
    meta_loss : float
        L_meta(theta') on the strong batch.
    notes : tuple of str
        One-line notices (the fallback).
    meta_grad : list of Tensor or None
        v = grad L_meta(theta'), one tensor per parameter. Without
        ``virtual_loss_fn`` theta' = theta, so v is also the gradient of the
        strong loss at theta: the real step may add it to ``p.grad`` instead
        of running the strong batch forward and backward again.
    output : Tensor or tuple or None
        The model's full primal output of the dual forward (e.g. ``(mask
        logits, aux logits)`` for an smp model with ``aux_params``), on the
        autograd graph like ``logits``.
    """

    w_init: Tensor
    w_own: Tensor
    raw_init: Tensor
    raw_own: Tensor
    logits: Tensor | None
    method: str
    meta_loss: float
    notes: tuple[str, ...] = field(default_factory=tuple)
    meta_grad: list[Tensor] | None = None
    output: Any = None


def _virtual_params(
    model: nn.Module, params: dict[str, Tensor], alpha: float, virtual_loss_fn: VirtualLoss | None
) -> dict[str, Tensor]:
    """theta' = theta - alpha * grad U(theta), as fresh leaves (eps = 0: the weighted costs vanish)."""
    if virtual_loss_fn is None:
        return {n: p.detach().requires_grad_(True) for n, p in params.items()}
    leaves = {n: p.detach().requires_grad_(True) for n, p in params.items()}
    u = virtual_loss_fn(stats_kept_forward(model, leaves))
    grads = torch.autograd.grad(u, list(leaves.values()), allow_unused=True)
    return {
        n: (p - alpha * g if g is not None else p).detach().requires_grad_(True)
        for (n, p), g in zip(leaves.items(), grads)
    }


def _meta_grad(
    model: nn.Module, theta_prime: dict[str, Tensor], x_strong: Tensor, y_strong: Tensor, strong_loss_fn: StrongLoss,
    equalise: bool = False,
) -> tuple[list[Tensor], float]:
    """``v = grad L_meta(theta')``; with ``equalise`` the mean of the strong images' unit-norm gradients."""
    forward = stats_kept_forward(model, theta_prime)
    leaves = list(theta_prime.values())
    if not equalise or x_strong.shape[0] < 2:
        loss = strong_loss_fn(forward(x_strong), y_strong)
        grads = torch.autograd.grad(loss, leaves, allow_unused=True)
        v = [g.detach() if g is not None else torch.zeros_like(p) for g, p in zip(grads, leaves)]
        return v, float(loss.detach())
    # one image at a time (the same work as the batch; BatchNorm then uses each image's own statistics)
    v = [torch.zeros_like(p) for p in leaves]
    total = 0.0
    n = x_strong.shape[0]
    for j in range(n):
        loss = strong_loss_fn(forward(x_strong[j : j + 1]), y_strong[j : j + 1])
        grads = [g.detach() if g is not None else torch.zeros_like(p)
                 for g, p in zip(torch.autograd.grad(loss, leaves, allow_unused=True), leaves)]
        norm = torch.sqrt(sum(g.pow(2).sum() for g in grads)).clamp_min(1e-12)
        for acc, g in zip(v, grads):
            acc.add_(g / (norm * n))
        total += float(loss.detach()) / n
    return v, total


def _gamma_map(sample_gamma: Tensor | None, like: Tensor) -> Tensor:
    if sample_gamma is None:
        return torch.ones((like.shape[0], 1, 1), dtype=like.dtype, device=like.device)
    g = torch.as_tensor(sample_gamma, dtype=like.dtype, device=like.device).reshape(-1, 1, 1)
    if g.shape[0] != like.shape[0]:
        raise ValueError(f"sample_gamma has {g.shape[0]} entries for a batch of {like.shape[0]}; give one per sample")
    if (g < 0).any():
        raise ValueError("sample_gamma must be >= 0 (DII weights live in [0, 1])")
    return g


def _take_part(valid_init, valid_own, fixed_init, like: Tensor) -> tuple[Tensor, Tensor]:
    """Bool (B, H, W) masks of the pixels that compete, per target; ``like`` is a (B, H, W) map."""
    vi, vo = _valid(valid_init, like), _valid(valid_own, like)
    if fixed_init is not None:
        free = ~fixed_init.to(device=like.device, dtype=torch.bool)
        vi, vo = vi & free, vo & free
    return vi, vo


def _check_shapes(x_weak: Tensor, *maps: Tensor | None) -> None:
    want = (x_weak.shape[0], *x_weak.shape[2:])
    for m in maps:
        if m is not None and tuple(m.shape) != tuple(want):
            raise ValueError(f"per-pixel maps must have shape (B, H, W) = {want}, got {tuple(m.shape)}")


# -- the exact weights -----------------------------------------------------------
def exact_pixel_weights(
    model: nn.Module,
    x_weak: Tensor,
    targets_init: Tensor,
    targets_own: Tensor,
    valid_init: Tensor | None,
    valid_own: Tensor | None,
    x_strong: Tensor,
    y_strong: Tensor,
    strong_loss_fn: StrongLoss,
    alpha: float,
    *,
    sample_gamma: Tensor | None = None,
    fixed_init: Tensor | None = None,
    params: Mapping[str, Tensor] | None = None,
    virtual_loss_fn: VirtualLoss | None = None,
    meta_grad: list[Tensor] | None = None,
    method: str = "auto",
    update_buffers: bool = False,
    return_details: bool = False,
    keep_graph: bool = True,
    equalise_strong: bool = False,
) -> tuple[Tensor, Tensor] | PixelWeights:
    """MLB-Seg pixel weights for both targets, exactly, with one forward-mode JVP.

    See the module docstring for the formula and the trainer interface.

    Parameters
    ----------
    model : nn.Module
        The segmentation network in the mode the real step uses (train mode:
        BatchNorm with batch statistics). Its output (or the first element of
        a tuple output) are logits (B, K, H, W).
    x_weak : Tensor
        (B, C, H, W) the non-strong images of the batch.
    targets_init, targets_own : Tensor
        (B, H, W) y~ and y^ as class indices (K >= 2) or {0, 1} (K == 1).
    valid_init, valid_own : Tensor or None
        (B, H, W) bool, pixels where each target takes part; None = all.
    x_strong, y_strong : Tensor
        The strong (meta) batch and what ``strong_loss_fn`` compares against.
    strong_loss_fn : callable
        ``strong_loss_fn(logits_strong, y_strong) -> scalar`` = L_meta.
    alpha : float
        Virtual-step learning rate (``config.meta_lr`` or the optimiser's lr).
    sample_gamma : Tensor, optional
        (B,) DII weight per sample, >= 0; the weighted costs are gamma_k * c_p.
        Default None (all 1).
    fixed_init : Tensor, optional
        (B, H, W) bool, pixels held fixed (excluded: weight 0 for both targets,
        outside the normaliser). Default None (every valid pixel takes part).
    params : mapping, optional
        The parameters the virtual step moves; default every parameter of
        ``model`` that requires grad.
    virtual_loss_fn : callable, optional
        ``virtual_loss_fn(forward) -> scalar``: the unweighted terms U of the
        virtual step, computed with ``forward(x)`` (the model at theta with
        copied buffers). Default None: U = 0, theta' = theta.
    meta_grad : list of Tensor, optional
        ``grad L_meta(theta')`` if the caller already has it (one per param,
        same order); skips the meta forward/backward.
    method : {"auto", "jvp", "double-backward"}
        "auto" (default) tries the JVP and falls back to double-backward with
        one warning when an op has no forward-mode rule.
    update_buffers : bool
        Write the BatchNorm running statistics of the dual forward back to the
        module, as an ordinary train-mode forward would. Default False.
    return_details : bool
        Return a :class:`PixelWeights` instead of ``(w_init, w_own)``.
    keep_graph : bool
        True (default): the dual forward's output stays on the autograd graph
        of the parameters, so it can serve the real update. False: the dual
        forward runs without a graph (only ``t = J_z v`` is wanted) and the
        caller computes the pixel-weighted costs on its own forward: cheaper
        when that forward runs in lower precision than the float32 JVP
        (bf16/fp16 autocast), where backpropagating through the float32 dual
        forward costs more than the low-precision forward it would replace.
    equalise_strong : bool
        False (default, the published method): ``v`` is the gradient of the
        meta loss over the strong batch. True: each strong image's gradient at
        theta' is taken on its own, scaled to unit norm, and ``v`` is their mean,
        so no single strong image decides the direction (the same change as
        DII's ``equalise``, see :func:`napari_hybridseg.core.methods.dii.last_layer_scores`).
        The weights are then exact for that ``v``.

    Returns
    -------
    (w_init, w_own) : tuple of Tensor, or PixelWeights
        Float32 (B, H, W) weights, non-negative, summing to 1 over both (or all 0).

    Examples
    --------
    >>> w_init, w_own = exact_pixel_weights(net, x, y_init, y_own, None, None, xs, ys,
    ...                                     lambda z, y: F.cross_entropy(z, y), alpha=1e-3)  # doctest: +SKIP
    """
    if method not in ("auto", "jvp", "double-backward"):
        raise ValueError(f"method must be 'auto', 'jvp' or 'double-backward', not {method!r}")
    _check_shapes(x_weak, targets_init, targets_own, valid_init, valid_own, fixed_init)
    theta = _params_of(model, params)
    meta_loss = float("nan")
    if meta_grad is None:
        theta_prime = _virtual_params(model, theta, alpha, virtual_loss_fn)
        v, meta_loss = _meta_grad(model, theta_prime, x_strong, y_strong, strong_loss_fn, equalise_strong)
    else:
        v = [g.detach() for g in meta_grad]
        if len(v) != len(theta):
            raise ValueError(f"meta_grad has {len(v)} tensors for {len(theta)} parameters")

    notes: list[str] = []
    used = method
    # forward-mode AD has no autocast rules (tangents stay fp32 while autocast casts primals to
    # bf16/fp16): the dual forward runs in the model's own precision, whatever the caller's autocast
    no_autocast = torch.autocast(device_type=x_weak.device.type, enabled=False)
    graph = contextlib.nullcontext() if keep_graph else torch.no_grad()
    dual_theta = theta if keep_graph else {n: p.detach() for n, p in theta.items()}
    if method in ("auto", "jvp"):
        try:
            with no_autocast, graph:
                out, t, floats = _jvp_logits(model, dual_theta, v, x_weak)
            used = "jvp"
        except (RuntimeError, NotImplementedError) as exc:
            if method == "jvp":
                raise
            reason = str(exc).strip().splitlines()[0][:120] if str(exc).strip() else type(exc).__name__
            note = (f"pixel weights: forward-mode JVP unavailable for this model ({reason}); "
                    "using the double-backward fallback (same values, slower)")
            warnings.warn(note, UserWarning, stacklevel=2)
            notes.append(note)
            used = "double-backward"
    if used == "double-backward":
        with no_autocast:
            out, t, floats = _double_backward_logits(model, theta, v, x_weak)
        if not keep_graph:
            out = tuple(o.detach() for o in out) if isinstance(out, tuple) else out.detach()
    if update_buffers:
        _write_back(model, floats)

    z = _first(out)
    zd, t = z.detach(), t.detach()
    gamma = _gamma_map(sample_gamma, zd)
    # w~_p = alpha * gamma_k * <dc_p/dz_p, (J_z v)_p>: one JVP serves both targets
    raw_init = alpha * gamma * (pixel_cost_grads(zd, targets_init) * t).sum(1)
    raw_own = alpha * gamma * (pixel_cost_grads(zd, targets_own) * t).sum(1)
    vi, vo = _take_part(valid_init, valid_own, fixed_init, raw_init)
    raw_init, raw_own = raw_init * vi, raw_own * vo
    w_init, w_own = normalise_weights(raw_init, raw_own, (vi, vo))
    if not return_details:
        return w_init, w_own
    return PixelWeights(w_init, w_own, raw_init, raw_own, z, used, meta_loss, tuple(notes), v, out)


def unrolled_pixel_weights(
    model: nn.Module,
    x_weak: Tensor,
    targets_init: Tensor,
    targets_own: Tensor,
    valid_init: Tensor | None,
    valid_own: Tensor | None,
    x_strong: Tensor,
    y_strong: Tensor,
    strong_loss_fn: StrongLoss,
    alpha: float,
    *,
    sample_gamma: Tensor | None = None,
    fixed_init: Tensor | None = None,
    params: Mapping[str, Tensor] | None = None,
    virtual_loss_fn: VirtualLoss | None = None,
    return_details: bool = False,
) -> tuple[Tensor, Tensor] | PixelWeights:
    """The original MLB-Seg computation, as a reference: a differentiable virtual step and a backward to eps.

    eps is a (2, B, H, W) tensor of zeros requiring grad; theta' = theta -
    alpha * grad(sum eps * gamma * c + U) with ``create_graph=True``; the meta
    loss at theta' is differentiated back to eps and w~ = -dL_meta/deps. Same
    arguments and result as :func:`exact_pixel_weights` (``logits`` is None).
    Costs about 5-8x a plain step; use it to check, not to train.
    """
    _check_shapes(x_weak, targets_init, targets_own, valid_init, valid_own, fixed_init)
    theta = {n: p.detach().requires_grad_(True) for n, p in _params_of(model, params).items()}
    forward = stats_kept_forward(model, theta)
    z = forward(x_weak)
    c_init, c_own = pixel_costs(z, targets_init, targets_own, valid_init, valid_own)
    eps = torch.zeros((2, *c_init.shape), dtype=z.dtype, device=z.device, requires_grad=True)
    gamma = _gamma_map(sample_gamma, z)
    loss = (eps[0] * gamma * c_init).sum() + (eps[1] * gamma * c_own).sum()
    if virtual_loss_fn is not None:
        loss = loss + virtual_loss_fn(forward)
    grads = torch.autograd.grad(loss, list(theta.values()), create_graph=True, allow_unused=True)
    theta_prime = {n: (p - alpha * g if g is not None else p) for (n, p), g in zip(theta.items(), grads)}
    meta = strong_loss_fn(stats_kept_forward(model, theta_prime)(x_strong), y_strong)
    (g_eps,) = torch.autograd.grad(meta, eps)
    raw = -g_eps.detach()
    vi, vo = _take_part(valid_init, valid_own, fixed_init, c_init)
    raw_init, raw_own = raw[0] * vi, raw[1] * vo
    w_init, w_own = normalise_weights(raw_init, raw_own, (vi, vo))
    if not return_details:
        return w_init, w_own
    return PixelWeights(w_init, w_own, raw_init, raw_own, None, "unrolled", float(meta.detach()))
