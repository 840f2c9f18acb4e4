"""One optimisation step: a batch, the supervised terms of each network, the method terms, the update.

:class:`SupervisedLoss` is the hybrid supervision of one network's output
(strong CE + Dice at weight 1, every weak term times its gamma_k).
:class:`TrainStep` composes it with the method terms it is given, each an
object testable alone: the pixel-weight term
(:class:`~.pixel_term.PixelWeightTerm`) and the DCR term
(:class:`~.dcr_term.DCRTerm`). The order of the sums is fixed (float addition
is not associative): per network, supervised then pixel terms; then DCR.
"""

from __future__ import annotations

import math

import torch

from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.errors import DivergedError
from napari_hybridseg.core.network.models import forward
from napari_hybridseg.core.supervision.anchor import anchor_loss
from napari_hybridseg.core.supervision.losses import (
    LossWeights,
    aux_tag_loss,
    box_pairwise,
    colour_affinity,
    strong_loss,
    weak_losses,
)
from napari_hybridseg.core.supervision.size_prior import SizePrior, size_prior_loss
from napari_hybridseg.core.supervision.targets import IGNORE
from napari_hybridseg.core.training.batches import augment, collate, denormalise
from napari_hybridseg.core.training.schedule import LRSchedule

__all__ = ["SupervisedLoss", "TrainStep"]


class SupervisedLoss:
    """Strong terms at weight 1 plus every weak term times gamma, averaged over the batch.

    A ``size_prior`` given to the call (with ``loss_weights.size`` > 0) adds the
    size prior on the weak rows without boxes
    (:mod:`~napari_hybridseg.core.supervision.size_prior`), also times gamma;
    rows with an anchor (``batch.anchor``) get its background term
    (:mod:`~napari_hybridseg.core.supervision.anchor`), times gamma too.
    """

    def __init__(self, loss_weights: LossWeights):
        self.loss_weights = loss_weights

    def affinity(self, batch) -> torch.Tensor | None:
        """Colour affinities of the weak rows (for the pairwise term in boxes), or None without boxes."""
        if not self.loss_weights.pairwise:
            return None
        if not any(r is Role.WEAK and len(bx) for r, bx in zip(batch.roles, batch.boxes)):
            return None
        weak = [i for i, r in enumerate(batch.roles) if r is Role.WEAK]
        with torch.no_grad():
            return colour_affinity(denormalise(batch.x[weak].float()))

    def __call__(self, logits, aux, batch, gamma, affinity=None,
                 size_prior: SizePrior | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``(total, terms)`` of one network's output on ``batch``.

        ``affinity`` (from :meth:`affinity`) adds BoxInst's pairwise term on the
        weak rows with boxes, also times gamma (every term of a weak image is).
        """
        lw = self.loss_weights
        b = logits.shape[0]
        strong = torch.tensor([r is Role.STRONG for r in batch.roles], device=logits.device)
        weak = torch.tensor([r is Role.WEAK for r in batch.roles], device=logits.device)
        terms: dict[str, torch.Tensor] = {}
        total = logits.new_zeros((), dtype=torch.float32)
        if strong.any():
            ls = strong_loss(logits[strong], batch.target[strong])
            la = lw.aux * aux_tag_loss(None if aux is None else aux[strong], batch.tag_target[strong])
            terms["strong"] = ls.sum() / b
            terms["aux"] = la.sum() / b
            total = total + terms["strong"] + terms["aux"]
        if weak.any():
            idx = weak.nonzero().flatten().tolist()
            wl = weak_losses(logits[weak], None if aux is None else aux[weak], batch.target[weak],
                             [batch.boxes[i] for i in idx], batch.present[weak], batch.tag_target[weak],
                             lw, absent=batch.absent[weak])
            g = gamma[weak]
            for name in ("pce", "box", "mil", "aux"):
                val = (g * wl[name]).sum() / b
                terms[name] = terms.get(name, 0.0) + val
            total = total + (g * wl["sum"]).sum() / b
            if affinity is not None:
                probs = logits[weak].float().softmax(1)
                pair = box_pairwise(probs, affinity, [batch.boxes[i] for i in idx])
                terms["pair"] = lw.pairwise * (g * pair).sum() / b
                total = total + terms["pair"]
            # the size prior is the negative evidence points and tags lack; a box has its own (outside
            # every box is background), and the prior there moved DII's weights of wrong boxes up
            no_box = torch.tensor([not len(batch.boxes[i]) for i in idx], device=logits.device)
            if lw.size and size_prior is not None and size_prior.active and no_box.any():
                size = size_prior_loss(logits[weak].float().softmax(1), size_prior, batch.present[weak])
                terms["size"] = lw.size * (g * size * no_box).sum() / b
                total = total + terms["size"]
            if lw.anchor and batch.anchor is not None and (batch.anchor[weak] != IGNORE).any():
                an = anchor_loss(logits[weak], batch.anchor[weak])
                terms["anchor"] = lw.anchor * (g * an).sum() / b
                total = total + terms["anchor"]
        return total, terms


class TrainStep:
    """Draw a batch, sum the terms, update the network(s); returns the logged losses.

    Parameters
    ----------
    state : RunState
        The run (networks, optimiser, sampler, prepared samples, rng).
    schedule : LRSchedule
        Sets the optimiser's learning rate each step.
    pixel_term : PixelWeightTerm, optional
        MLB-Seg pixel weights (``pixel_weights="exact"``).
    dcr_term : DCRTerm, optional
        Cross pseudo supervision of the two networks (``dcr``).
    anchor_term : AnchorTerm, optional
        Which weak samples wait for the anchor (:class:`~.anchor_term.AnchorTerm`).
    dii_term : DIITerm, optional
        With in-batch scoring (``dii.scoring=batch``) it scores the batch's
        weak rows from network 1's forward and sets their weights before the
        loss reads them (:meth:`~.dii_term.DIITerm.score_batch`).
    """

    def __init__(self, state, schedule: LRSchedule, pixel_term=None, dcr_term=None, anchor_term=None,
                 dii_term=None):
        self.state = state
        self.dii_term = dii_term
        self.anchor_term = anchor_term
        self.schedule = schedule
        self.supervised = SupervisedLoss(state.loss_weights)
        self.pixel_term = pixel_term
        self.dcr_term = dcr_term

    def __call__(self, step: int) -> dict[str, float]:
        st = self.state
        cfg = st.config
        weak = st.ids(Role.WEAK)
        held = self.anchor_term.held_back(step) if self.anchor_term is not None else set()
        if held:
            weak = [k for k in weak if k not in held]
        ids = st.sampler.sample(st.ids(Role.STRONG), weak, st.ids(Role.UNLABELED))
        items = [augment(st.prepared[i], st.rng) if cfg.augment else st.prepared[i] for i in ids]
        if st.dist is not None:  # every rank drew (and augmented) the global batch: it trains on its slice
            items = st.dist.shard(items)
        batch = collate(items).to(st.dev.device)
        gamma = st.gamma_of(batch.ids, batch.roles)
        lr = self.schedule.at(step)
        for group in st.optimizer.param_groups:
            group["lr"] = lr
        st.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=st.dev.device)
        logged: dict[str, float] = {}
        scoring = self.dii_term is not None and self.dii_term.in_batch and self.dii_term.gate_open
        feats: list[torch.Tensor] = []
        hook = (st.nets[0].segmentation_head.register_forward_pre_hook(lambda _m, args: feats.append(args[0]))
                if scoring else None)
        try:
            with st.dev.autocast():
                outs = [forward(net, batch.x) for net in st.train_nets]
        finally:
            if hook is not None:
                hook.remove()
        if feats and self.dii_term.score_batch(step, batch, feats[0]):
            gamma = st.gamma_of(batch.ids, batch.roles)  # this step's weak rows, weighed by their own scores
        pw = self.pixel_term.compute(step, batch, outs[0][0], gamma, lr) if self.pixel_term is not None else None
        affinity = self.supervised.affinity(batch)
        for n, (logits, aux) in enumerate(outs):
            sup, terms = self.supervised(logits, aux, batch, gamma, affinity, st.size_prior)
            total = total + sup
            if pw is not None:
                pw_loss, pw_terms = pw.loss_for(n, logits)
                total = total + pw_loss
                terms.update(pw_terms)
            if n == 0:
                logged.update({k: float(v.detach()) if torch.is_tensor(v) else float(v) for k, v in terms.items()})
        if self.dcr_term is not None and len(st.nets) == 2:
            scaled, cps = self.dcr_term.loss(step, batch, gamma, (outs[0][0], outs[1][0]))
            total = total + scaled
            logged["cps"] = float(cps.detach())
        self._update(total)
        if self.pixel_term is not None:
            self.pixel_term.after_update()
        logged["total"] = float(total.detach())
        if not math.isfinite(logged["total"]):
            raise DivergedError(f"the loss became {logged['total']} at step {step}; lower the learning rate "
                               f"(now {cfg.optim.lr}) or use --precision fp32")
        return logged

    def _update(self, total: torch.Tensor) -> None:
        st = self.state
        if st.scaler is not None:
            st.scaler.scale(total).backward()
            st.scaler.unscale_(st.optimizer)
        else:
            total.backward()
        if st.config.optim.grad_clip:
            torch.nn.utils.clip_grad_norm_([p for net in st.nets for p in net.parameters()], st.config.optim.grad_clip)
        if st.scaler is not None:
            st.scaler.step(st.optimizer)
            st.scaler.update()
        else:
            st.optimizer.step()
