"""The anchor term: open weak images wait for the strong masks, then take background from the network.

See :mod:`napari_hybridseg.core.supervision.anchor` for what the anchor is and
why. This term holds the schedule: during the first ``loss.anchor_after``
steps (default a quarter of the run, at least the learning-rate warm-up) the
open weak images (clicks, no box) are left out of the batches, so network 1
learns the strong masks (and the other weak images) undisturbed; after that
step it labels each open image's background once. Images added or edited
later are anchored at the next multiple of that interval by the network of
that moment. A continued run (``init_from``) anchors before its first step:
its network has already trained.

With no open weak image (every box, tag or strong-only collection), or a
run too short to reach its first anchor (``steps`` <= the warm-up), the term
does nothing and a run is what it was without it.
"""

from __future__ import annotations

import numpy as np
import torch

from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.network.models import forward
from napari_hybridseg.core.supervision.anchor import anchor_labels, exclusion_radii, is_open

__all__ = ["AnchorTerm", "strong_set_learnt"]


def strong_set_learnt(state, after: int | None = None) -> tuple[int, int, bool]:
    """When network 1 counts as having learnt the strong masks: ``(interval, step, continued)``.

    The interval is ``after`` or a quarter of the run, at least the
    learning-rate warm-up (a network still inside the warm-up has not learnt
    the strong masks yet); the step is the first one after the start plus
    that interval, or the start itself in a continued run (``init_from``),
    whose network has already trained.
    """
    cfg = state.config
    every = int(after or max(1, cfg.steps // 4, cfg.optim.warmup_steps))
    continued = state.init_from is not None and state.start_step > 0
    return every, (state.start_step if continued else state.start_step + every), continued


class AnchorTerm:
    """When and on what the anchor labels background.

    Parameters
    ----------
    state : RunState
        Reads ``config``, ``prepared``, ``nets[0]``, ``dev``, ``start_step``;
        writes ``prepared[k].anchor`` of open weak samples.
    """

    def __init__(self, state):
        self.state = state
        cfg = state.config
        self.every, self.first, self.continued = strong_set_learnt(state, cfg.loss.anchor_after)
        # a run too short to reach its first anchor trains the click images as before, from step 1
        self.enabled = bool(cfg.loss.anchor) and (self.continued or self.first < state.start_step + cfg.steps)

    def open_ids(self) -> list[str]:
        """Weak samples whose label leaves the background open (no box; clicks)."""
        st = self.state
        return [k for k in st.ids(Role.WEAK) if is_open(st.prepared[k].boxes, st.prepared[k].target)]

    def pending(self) -> list[str]:
        """Open weak samples without an anchor yet."""
        return [k for k in self.open_ids() if self.state.prepared[k].anchor is None]

    def held_back(self, step: int) -> set[str]:
        """Weak samples left out of the batch of ``step``: the open ones, until the first anchor."""
        if not self.enabled or step > self.first or self.continued:
            return set()
        return set(self.open_ids())

    def due(self, step: int) -> bool:
        """At the end of step ``first`` and every ``every`` steps after, while some open sample has no anchor."""
        if not self.enabled or step < self.first or (step - self.first) % self.every:
            return False
        return bool(self.pending())

    @torch.no_grad()
    def compute(self, step: int) -> str | None:
        """Anchor every pending open sample with network 1 (eval mode, restored); a one-line summary, or None."""
        st = self.state
        ids = self.pending()
        if not ids:
            return None
        strong = [st.prepared[k].target.numpy() for k in st.ids(Role.STRONG)]
        radii = exclusion_radii(strong, st.model_config.classes)
        net = st.nets[0]
        if st.dist is not None:
            st.dist.broadcast_buffers(net)  # every rank anchors with rank 0's BatchNorm statistics
        was = net.training
        net.eval()
        fractions = []
        try:
            chunk = max(2, st.config.batch_size)
            for lo in range(0, len(ids), chunk):
                part = [st.prepared[k] for k in ids[lo:lo + chunk]]
                x = torch.stack([p.image for p in part]).to(st.dev.device)
                with st.dev.autocast():
                    logits, _ = forward(net, x)
                probs = logits.float().softmax(1).cpu()
                for p, pr in zip(part, probs):
                    p.anchor = anchor_labels(pr, p.target, p.present, radii,
                                             foreground=st.config.loss.anchor_foreground)
                    fractions.append(float((p.anchor == 0).float().mean()))
        finally:
            net.train(was)
        named = ", ".join(f"{r:.1f}" for r in radii[1:])
        return (f"step {step}: background anchored on {len(ids)} open weak image(s) (median "
                f"{100 * np.median(fractions):.0f}% of each image; exclusion radius around clicks {named} px)")
