"""Functional forwards of a module at given parameters: buffers copied, and one dual (JVP) forward.

What the exact pixel weights (:mod:`.pixel_weights`) and PLE's views need:
a forward that leaves BatchNorm's running statistics alone
(:func:`stats_kept_forward`), and ``J_z v`` of the logits along a parameter
direction, by forward-mode AD or the double-backward fallback, with the
BatchNorm statistics that forward would write returned for write-back.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

__all__ = ["stats_kept_forward"]

Forward = Callable[[Tensor], Tensor]


# -- helpers for the functional calls -------------------------------------------
def _first(out):
    # smp models with aux_params return (mask, label): the mask logits are what is weighted
    return out[0] if isinstance(out, (tuple, list)) else out


def _params_of(model: nn.Module, params: Mapping[str, Tensor] | None) -> dict[str, Tensor]:
    if params is not None:
        return dict(params)
    return {n: p for n, p in model.named_parameters() if p.requires_grad}


def _buffer_copies(model: nn.Module) -> tuple[dict[str, Tensor], dict[str, Tensor | None]]:
    """(float buffers, cloned; other buffers, with BN's ``num_batches_tracked`` hidden as None)."""
    floats, others = {}, {}
    for name, buf in model.named_buffers():
        if name.endswith("num_batches_tracked"):
            others[name] = None  # BN then uses `momentum` and never touches the counter
        elif buf.is_floating_point():
            floats[name] = buf.detach().clone()
        else:
            others[name] = buf
    return floats, others


def stats_kept_forward(model: nn.Module, params: Mapping[str, Tensor]) -> Forward:
    """``x -> logits`` of ``model`` at ``params`` on copies of its buffers.

    Train-mode BatchNorm still normalises with batch statistics, but what it
    writes goes to the copies: the module's running statistics stay as they
    are. For forwards that are not training data (the virtual and meta steps,
    PLE's zoomed, padded and flipped views).
    """
    floats, others = _buffer_copies(model)

    def forward(x: Tensor) -> Tensor:
        return _first(functional_call(model, {**params, **floats, **others}, (x,), strict=False))

    return forward


def _jvp_logits(
    model: nn.Module, params: dict[str, Tensor], v: list[Tensor], x: Tensor
) -> tuple[Any, Tensor, dict[str, Tensor]]:
    """(full model output, J_z v of its logits, updated float buffers) with one dual forward."""
    floats, others = _buffer_copies(model)
    # a module in eval mode only reads its running stats, and batch_norm refuses dual
    # (forward-grad) running stats: those stay plain constants; train-mode ones are
    # primals with zero tangent so BN may update its (copied) statistics in place
    frozen = {name for name, mod in model.named_modules() if not mod.training}
    for name in [b for b in floats if b.rpartition(".")[0] in frozen]:
        others[name] = floats.pop(name)
    pnames, bnames = list(params), list(floats)

    def f(*primals: Tensor):
        p = dict(zip(pnames, primals[: len(pnames)]))
        b = dict(zip(bnames, primals[len(pnames) :]))
        out = functional_call(model, {**p, **b, **others}, (x,), strict=False)
        return tuple(out) if isinstance(out, (tuple, list)) else out

    primals = tuple(params.values()) + tuple(floats.values())
    tangents = tuple(v) + tuple(torch.zeros_like(b) for b in floats.values())
    out, t = torch.func.jvp(f, primals, tangents)
    return out, _first(t), floats


def _double_backward_logits(
    model: nn.Module, params: dict[str, Tensor], v: list[Tensor], x: Tensor
) -> tuple[Any, Tensor, dict[str, Tensor]]:
    """(full model output, J_z v of its logits, updated float buffers) by reverse mode twice: J v = d/du <J^T u, v>."""
    floats, others = _buffer_copies(model)
    leaves = {n: (p if p.requires_grad else p.detach().requires_grad_(True)) for n, p in params.items()}
    out = functional_call(model, {**leaves, **floats, **others}, (x,), strict=False)
    z = _first(out)
    u = torch.zeros_like(z, requires_grad=True)
    jtu = torch.autograd.grad(z, list(leaves.values()), grad_outputs=u, create_graph=True, allow_unused=True)
    pairs = [(g, vi) for g, vi in zip(jtu, v) if g is not None]
    (t,) = torch.autograd.grad([g for g, _ in pairs], u, grad_outputs=[vi for _, vi in pairs])
    return out, t.detach(), floats


def _write_back(model: nn.Module, floats: dict[str, Tensor]) -> None:
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name in floats:
                buf.copy_(floats[name])
            elif name.endswith("num_batches_tracked"):
                buf.add_(1)
