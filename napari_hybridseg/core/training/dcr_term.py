"""The DCR term of a step: cross pseudo supervision of the two networks on a CutMix of the batch.

With ``dcr.pairs = "batch"`` CPS compares the two networks' forwards of the
batch itself (the ones their supervised terms use), without a CutMix: no
forward or backward beyond the two networks' own.
"""

from __future__ import annotations

import torch

from napari_hybridseg.core.methods import dcr as dcr_mod
from napari_hybridseg.core.network.models import forward
from napari_hybridseg.core.supervision.targets import IGNORE

__all__ = ["DCRTerm"]


class DCRTerm:
    """``lambda(step) * CPS`` between network 1 and 2 on CutMix pairs of the batch, pairs weighed by gamma.

    (or on the batch itself, each image weighed by its gamma, with ``dcr.pairs = "batch"``)

    Parameters
    ----------
    state : RunState
        Reads ``nets`` (two), ``rng`` (the permutation and the boxes), ``dev``,
        ``config.dcr.cps_lambda``, ``rampup`` and ``start_step``.
    """

    def __init__(self, state):
        self.state = state

    def loss(self, step: int, batch, gamma: torch.Tensor,
             logits: tuple[torch.Tensor, torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lambda * cps, cps)`` for this step's batch (the second, unscaled, is what the log shows).

        ``logits``: the two networks' forwards of ``batch`` (needed with ``dcr.pairs = "batch"``).
        """
        st = self.state
        lam = st.config.dcr.cps_lambda * dcr_mod.rampup(step - st.start_step, st.rampup)
        known = batch.target != IGNORE
        if st.config.dcr.pairs == "batch":
            if logits is None:
                raise ValueError('dcr.pairs = "batch" needs the two networks\' logits of the batch')
            cps = dcr_mod.cps_loss(logits[0], logits[1], gamma, known=known)
            return lam * cps, cps
        bsz, _, h, w = batch.x.shape
        perm = torch.as_tensor(st.rng.permutation(bsz), device=st.dev.device)
        mask = dcr_mod.cutmix_boxes(bsz, h, w, st.rng)
        xm = dcr_mod.cutmix(batch.x, perm, mask)
        with st.dev.autocast():
            la, _ = forward(st.train_nets[0], xm)
            lb, _ = forward(st.train_nets[1], xm)
        pair_gamma = 0.5 * (gamma + gamma[perm])
        known_mixed = torch.where(mask[:, 0].to(known.device) > 0, known[perm], known)
        cps = dcr_mod.cps_loss(la, lb, pair_gamma, known=known_mixed)
        return lam * cps, cps
