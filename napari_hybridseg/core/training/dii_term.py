"""The DII term: every tau steps, re-score every weak sample against the strong set and move its gamma_k.

The score of weak sample k is ``-g_S . g_k`` (the gradient of the strong loss
against the gradient of k's weak loss, inverse Hessian ~ identity), by the
last-layer scorer or the full-network JVP scorer
(:mod:`napari_hybridseg.core.methods.dii`); the bank takes one step per
update and the new weights go into ``collection.sample_weights`` with their
history.
"""

from __future__ import annotations

import torch

from napari_hybridseg.core.data.collection import Role, WeightState
from napari_hybridseg.core.methods import dii as dii_mod
from napari_hybridseg.core.supervision.losses import aux_tag_loss, strong_loss, weak_losses
from napari_hybridseg.core.training.reports import WeightsReport

__all__ = ["DIITerm"]


class DIITerm:
    """Updates the weak samples' gamma_k from network 1.

    Parameters
    ----------
    state : RunState
        Reads ``nets[0]``, ``prepared``, ``config``, ``rng`` (which strong images
        make g_S), ``loss_weights``, ``dev``; writes ``bank`` and
        ``collection.sample_weights``.
    """

    def __init__(self, state):
        self.state = state

    def due(self, step: int) -> bool:
        """Every ``tau`` steps of this run, with DII on."""
        st = self.state
        return st.config.dii.enabled and (step - st.start_step) % st.tau == 0

    def update(self, step: int) -> WeightsReport | None:
        """One DII update; None when there is no weak sample (or DII is off)."""
        st = self.state
        cfg = st.config
        weak = st.ids(Role.WEAK)
        strong = st.ids(Role.STRONG)
        if not weak or not cfg.dii.enabled:
            return None
        net = st.nets[0]
        dev = st.dev.device
        # g_S over several batches' worth of strong images (a single batch made the scores noisy) for the
        # last-layer scorer, whose strong forward is feature-only; the jvp scorer backpropagates through the
        # whole network in one go, so it keeps to one batch unless told otherwise
        per = 4 if cfg.dii.scorer == "last-layer" else 1
        n_s = cfg.dii.strong_images or per * cfg.batch_size
        pick = st.rng.permutation(len(strong))[:n_s]
        xs = torch.stack([st.prepared[strong[i]].image for i in pick])
        ys = torch.stack([st.prepared[strong[i]].target for i in pick]).to(dev)
        ts = torch.stack([st.prepared[strong[i]].tag_target for i in pick]).to(dev)
        aux_w = st.loss_weights.aux
        # a distributed run scores its own span of the weak set (the scores are gathered below)
        lo, hi = (0, len(weak)) if st.dist is None else st.dist.span(len(weak))
        if st.dist is not None:
            st.dist.broadcast_buffers(net)  # every rank scores with rank 0's BatchNorm statistics
        items = [st.prepared[k] for k in weak[lo:hi]]
        if not items:  # fewer weak samples than ranks: this one has nothing to score
            dots = st.dist.gather_scores(torch.zeros(0))
            return self._step(step, weak, dots)
        xw = torch.stack([p.image for p in items])
        yw = torch.stack([p.target for p in items]).to(dev)
        pw = torch.stack([p.present for p in items]).to(dev)
        tw = torch.stack([p.tag_target for p in items]).to(dev)
        aw = torch.stack([p.absent for p in items]).to(dev)

        equalise = cfg.dii.scorer == "last-layer" and cfg.dii.equalise

        def strong_fn(logits, aux):
            per_image = strong_loss(logits, ys) + aux_w * aux_tag_loss(aux, ts)
            return per_image if equalise else per_image.mean()

        def instance_fn(logits, aux, idx):
            return weak_losses(logits, aux, yw[idx], [items[i].boxes for i in idx], pw[idx], tw[idx],
                               st.loss_weights, absent=aw[idx])["sum"]

        chunk = max(2, cfg.batch_size)
        if cfg.dii.scorer == "jvp":
            dots = dii_mod.jvp_scores(net, xs, strong_fn, xw, instance_fn, chunk=chunk)
        else:
            # the decoder features (the bulk of the cost) in the run's precision: on a trained Kvasir-SEG model
            # bf16 features gave scores correlated 0.99994 with float32 ones, 1.6x faster
            dots = dii_mod.last_layer_scores(net, xs, strong_fn, xw, instance_fn, chunk=chunk,
                                             feature_autocast=st.dev.autocast, equalise=equalise)
        if st.dist is not None:
            dots = st.dist.gather_scores(dots)  # every rank's span, in order: the same scores on every rank
        return self._step(step, weak, dots)

    def _step(self, step: int, weak: list[str], dots: torch.Tensor) -> WeightsReport:
        """The bank's step from every weak sample's score; the new weights into ``collection.sample_weights``."""
        st = self.state
        # dL_S/dgamma_k ~ -g_S . g_k (inverse Hessian ~ identity), at a scale that does not drift with the loss
        dots = dii_mod.normalise_scores(dots.double())
        values = st.bank.step({k: -float(d) for k, d in zip(weak, dots.cpu().tolist())})
        if st.dist is not None:
            st.dist.compare_gammas(values)  # recorded in run.json: every rank must hold the same
        for k, v in values.items():
            st.collection.sample_weights.setdefault(k, WeightState(v)).record(step, v)
        return WeightsReport(step=step, sample_weights=dict(values))
