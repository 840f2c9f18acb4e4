"""The DII term: every tau steps, re-score every weak sample against the strong set and move its gamma_k.

The score of weak sample k is ``g_S . g_k`` (the gradient of the strong loss
against the gradient of k's weak loss, inverse Hessian ~ identity), by the
last-layer scorer or the full-network JVP scorer
(:mod:`napari_hybridseg.core.methods.dii`). With ``dii.update="evidence"``
(the default) the scores become robust z within each label's stratum, and an
update counts only when network 1 segments the strong images it was scored
against with Dice >= ``dii.gate_dice`` (the gate); the bank accumulates the
counted z. With ``"adam"`` the bank takes one Adam step per update (the
published rule, no gate). The new weights go into
``collection.sample_weights`` with their history; every update leaves a line
in ``state.dii_log`` (run.json ``dii_updates``).

With ``dii.scoring="batch"`` an update re-scores no weak image: it refreshes
``g_S`` and the gate, and :meth:`DIITerm.score_batch` scores each training
step's own weak rows from the features of the training forward (robust z
against the recent scores of the same stratum, :class:`~napari_hybridseg.core.
methods.dii.StratumReference`) and sets their weights before the step's loss
uses them. The run's last update scores, the full way, the weak images that no
counted step saw, so that every weight at the end rests on evidence.
"""

from __future__ import annotations

import torch

from napari_hybridseg.core.data.collection import Role, WeightState
from napari_hybridseg.core.methods import dii as dii_mod
from napari_hybridseg.core.supervision.losses import aux_tag_loss, margin_objective, strong_loss, weak_losses
from napari_hybridseg.core.supervision.targets import IGNORE
from napari_hybridseg.core.training.reports import WeightsReport

__all__ = ["DIITerm", "label_stratum", "strong_dice"]


def label_stratum(sample, prepared, by_tag_value: bool = True) -> str:
    """What kind of label a weak sample has, the unit within which its scores are compared.

    "box" and "point" by the label's kind (a box wins over clicks on one image);
    tags by what they say per class ("tag:p-" = class 1 present, class 2
    unknown; "a" absent), so that "present" and "absent" tags, whose scores move
    apart with the network's foreground bias, are each standardised among
    their own. ``by_tag_value=False`` (``dii.tag_objective=margin``): every tag in
    one stratum "tag", since that score does not move with the foreground bias
    and the tag value carries evidence of its own (30% flipped BUSI tags make
    two thirds of the "absent" tags wrong: standardised within their value, the
    wrong ones sit at that stratum's median).
    """
    if sample is not None and sample.boxes:
        return "box"
    if sample is not None and sample.points:
        return "point"
    present, absent = prepared.present.tolist(), prepared.absent.tolist()
    if any(present) or any(absent):
        if not by_tag_value:
            return "tag"
        return "tag:" + "".join("p" if p else "a" if a else "-" for p, a in zip(present[1:], absent[1:]))
    return "other"


def strong_dice(logits: torch.Tensor, target: torch.Tensor) -> float:
    """Foreground Dice of the argmax of ``logits`` (S, C, H, W) against ``target`` (S, H, W), pooled over images.

    Mean over the foreground classes in the target or the prediction;
    IGNORE pixels do not count; 1.0 when neither has any foreground.
    """
    with torch.no_grad():
        pred = logits.detach().argmax(1)
        valid = target != IGNORE
        scores = []
        for c in range(1, logits.shape[1]):
            p, t = (pred == c) & valid, (target == c) & valid
            denom = int(p.sum()) + int(t.sum())
            if denom:
                scores.append(2.0 * int((p & t).sum()) / denom)
        return float(sum(scores) / len(scores)) if scores else 1.0


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
        # in-batch scoring (dii.scoring=batch): the head gradient and gate of the last update
        self.g_head: dict[str, torch.Tensor] | None = None
        self.gate_open = False
        self.reference = dii_mod.StratumReference()
        self.batch_counted = 0
        self._pooled: dict[str, str] = {}

    @property
    def in_batch(self) -> bool:
        """Whether training steps score their own weak rows (``dii.scoring=batch``)."""
        cfg = self.state.config.dii
        return bool(cfg.enabled) and cfg.scoring == "batch"

    def due(self, step: int) -> bool:
        """Every ``tau`` steps of this run, with DII on (in-batch scoring: also at the run's last step)."""
        st = self.state
        if not st.config.dii.enabled:
            return False
        return (step - st.start_step) % st.tau == 0 or (self.in_batch and step == st.total_steps)

    def _strong_batch(self, strong: list[str]):
        """The strong images behind g_S (drawn afresh each update), their targets and tag targets."""
        st = self.state
        cfg = st.config
        # g_S over several batches' worth of strong images (a single batch made the scores noisy) for the
        # last-layer scorer, whose strong forward is feature-only; the jvp scorer backpropagates through the
        # whole network in one go, so it keeps to one batch unless told otherwise
        per = 4 if cfg.dii.scorer == "last-layer" else 1
        n_s = cfg.dii.strong_images or per * cfg.batch_size
        pick = st.rng.permutation(len(strong))[:n_s]
        dev = st.dev.device
        xs = torch.stack([st.prepared[strong[i]].image for i in pick])
        ys = torch.stack([st.prepared[strong[i]].target for i in pick]).to(dev)
        ts = torch.stack([st.prepared[strong[i]].tag_target for i in pick]).to(dev)
        return xs, ys, ts

    def _strong_fn(self, ys, ts, seen: dict, objective: str | None = None):
        st = self.state
        cfg = st.config
        objective = objective or cfg.dii.strong_objective
        equalise = cfg.dii.scorer == "last-layer" and cfg.dii.equalise
        aux_w = st.loss_weights.aux

        def strong_fn(logits, aux):
            if cfg.dii.scorer == "last-layer":  # the head's own output on the strong images: the gate's Dice
                seen["dice"] = strong_dice(logits, ys)
            objective_fn = margin_objective if objective == "margin" else strong_loss
            per_image = objective_fn(logits, ys) + aux_w * aux_tag_loss(aux, ts)
            return per_image if equalise else per_image.mean()

        return strong_fn

    def _instance_fn(self, items):
        st = self.state
        dev = st.dev.device
        yw = torch.stack([p.target for p in items]).to(dev)
        pw = torch.stack([p.present for p in items]).to(dev)
        tw = torch.stack([p.tag_target for p in items]).to(dev)
        aw = torch.stack([p.absent for p in items]).to(dev)

        def instance_fn(logits, aux, idx):
            return weak_losses(logits, aux, yw[idx], [items[i].boxes for i in idx], pw[idx], tw[idx],
                               st.loss_weights, absent=aw[idx])["sum"]

        return instance_fn

    def update(self, step: int) -> WeightsReport | None:
        """One DII update; None when there is no weak sample (or DII is off)."""
        st = self.state
        cfg = st.config
        weak = st.ids(Role.WEAK)
        strong = st.ids(Role.STRONG)
        if not weak or not cfg.dii.enabled:
            return None
        if self.in_batch:
            return self._refresh(step, weak, strong)
        net = st.nets[0]
        xs, ys, ts = self._strong_batch(strong)
        # a distributed run scores its own span of the weak set (the scores are gathered below)
        lo, hi = (0, len(weak)) if st.dist is None else st.dist.span(len(weak))
        if st.dist is not None:
            st.dist.broadcast_buffers(net)  # every rank scores with rank 0's BatchNorm statistics
        items = [st.prepared[k] for k in weak[lo:hi]]
        if not items:  # fewer weak samples than ranks: this one has nothing to score
            dots = st.dist.gather_scores(torch.zeros(0))
            dice = self._strong_dice(net, xs, ys) if cfg.dii.update == "evidence" else None
            return self._step(step, weak, dots, dice)  # the same gate as the ranks that scored
        xw = torch.stack([p.image for p in items])
        equalise = cfg.dii.scorer == "last-layer" and cfg.dii.equalise
        seen: dict[str, float] = {}
        chunk = max(2, cfg.batch_size)
        if cfg.dii.scorer == "jvp":
            dots = dii_mod.jvp_scores(net, xs, self._strong_fn(ys, ts, seen), xw, self._instance_fn(items),
                                      chunk=chunk)
        else:
            # the decoder features (the bulk of the cost) in the run's precision: on a trained Kvasir-SEG model
            # bf16 features gave scores correlated 0.99994 with float32 ones, 1.6x faster
            dots = self._last_layer_dots(net, xs, ys, ts, seen, items, xw, chunk, equalise)
        if st.dist is not None:
            dots = st.dist.gather_scores(dots)  # every rank's span, in order: the same scores on every rank
        dice = seen.get("dice")
        if dice is None and cfg.dii.update == "evidence":
            dice = self._strong_dice(net, xs, ys)
        return self._step(step, weak, dots, dice)

    def _tags_by_margin(self) -> bool:
        """Whether tag-only images get the margin score this run: ``dii.tag_objective=margin``, the last-layer
        scorer and full scoring, and enough of them (8, robust_z's smallest stratum) to be standardised among
        themselves; fewer would be pooled with the other labels, whose scores are on another scale."""
        st = self.state
        cfg = st.config
        if cfg.dii.tag_objective != "margin" or cfg.dii.scorer != "last-layer" or self.in_batch:
            return False
        n = sum(label_stratum(st.collection.samples.get(k), st.prepared[k]).startswith("tag")
                for k in st.ids(Role.WEAK))
        return n >= 8

    def _last_layer_dots(self, net, xs, ys, ts, seen: dict, items, xw, chunk: int, equalise: bool) -> torch.Tensor:
        """The last-layer scores of ``items``; tag-only images the way ``dii.tag_objective`` says.

        ``tag_objective="margin"``: images whose only label is a tag are scored
        against the gradient of the margin objective, each divided by its own
        head-gradient norm (the within-tag-value ranking of flipped BUSI tags
        went from 0.46-0.65 to 0.81-0.88 offline, docs/training.md); boxes and
        clicks keep ``strong_objective`` / ``weak_norm`` (on Kvasir-SEG boxes the
        margin objective ranked worse, 0.86 against 0.97). Their scores are
        standardised within their own strata, so the two kinds of score never
        meet on one scale.
        """
        st = self.state
        cfg = st.config
        tags = []
        if self._tags_by_margin():
            weak = st.ids(Role.WEAK)
            lo = 0 if st.dist is None else st.dist.span(len(weak))[0]
            tags = [i for i, p in enumerate(items)
                    if label_stratum(st.collection.samples.get(weak[lo + i]), p).startswith("tag")]
        tag_set = set(tags)
        rest = [i for i in range(len(items)) if i not in tag_set]
        dev = st.dev.device
        dots = torch.zeros(len(items), device=dev)
        for rows, objective, cosine in ((rest, None, cfg.dii.weak_norm), (tags, "margin", True)):
            if not rows:
                continue
            sub = [items[i] for i in rows]
            got = dii_mod.last_layer_scores(net, xs, self._strong_fn(ys, ts, seen, objective), xw[rows],
                                            self._instance_fn(sub), chunk=chunk,
                                            feature_autocast=st.dev.autocast, equalise=equalise, cosine=cosine)
            dots[torch.tensor(rows, device=dev)] = got.to(dots.dtype)
        return dots

    # -- in-batch scoring ---------------------------------------------------------------------------
    def _refresh(self, step: int, weak: list[str], strong: list[str]) -> WeightsReport:
        """``dii.scoring=batch``: a new g_S and gate for the steps that follow; at the last step, the top-up."""
        st = self.state
        cfg = st.config
        net = st.nets[0]
        xs, ys, ts = self._strong_batch(strong)
        seen: dict[str, float] = {}
        self.g_head = dii_mod.strong_head_gradient(net, xs, self._strong_fn(ys, ts, seen),
                                                   feature_autocast=st.dev.autocast, equalise=cfg.dii.equalise)
        dice = seen["dice"]
        was_open, self.gate_open = self.gate_open, dice >= cfg.dii.gate_dice
        self.reference.reset()  # a new g_S: the scores' scale changes
        strata = [label_stratum(st.collection.samples.get(k), st.prepared[k]) for k in weak]
        self._pooled = dict(zip(weak, dii_mod.pool_strata(strata)))  # robust_z's pooling, over the weak set
        since = f"{self.batch_counted} in-batch score(s) counted since the last update; " if was_open else ""
        self.batch_counted = 0
        gate = ("counted" if self.gate_open else f"not counted: strong-set Dice {dice:.2f} < gate "
                f"{cfg.dii.gate_dice:g}")
        line = f"{since}g_S refreshed, in-batch scores {gate}" + (f" (strong-set Dice {dice:.2f})"
                                                                  if self.gate_open else "")
        if step >= st.total_steps:
            line += "; " + self._top_up(step, weak)
        st.dii_log.append(f"step {step}: {line}")
        values = st.bank.values()
        for k, v in values.items():
            st.collection.sample_weights.setdefault(k, WeightState(v)).record(step, v)
        return WeightsReport(step=step, sample_weights=dict(values), gate=line)

    def _top_up(self, step: int, weak: list[str]) -> str:
        """Score, the full way, the weak images without counted evidence (none of the counted steps saw them).

        ``dii.final="all"``: every weak image, folded into its evidence like any update's scores.
        """
        st = self.state
        every = st.config.dii.final == "all"
        missing = list(weak) if every else [k for k in weak if st.bank.states[k].acc is None]
        if not missing:
            return "every weak image has in-batch evidence"
        if not self.gate_open:
            return f"{len(missing)} weak image(s) keep their weight (gate closed)"
        items = [st.prepared[k] for k in missing]
        dots = dii_mod.weak_head_scores(st.nets[0], self.g_head, torch.stack([p.image for p in items]),
                                        self._instance_fn(items), chunk=max(2, st.config.batch_size),
                                        feature_autocast=st.dev.autocast, cosine=st.config.dii.weak_norm)
        dots = dots.double().cpu().tolist()
        z = dii_mod.robust_z(dots, [label_stratum(st.collection.samples.get(k), st.prepared[k]) for k in missing])
        st.bank.observe(dict(zip(missing, z)))
        if every:
            return f"every weak image ({len(missing)}) scored now by the trained network"
        return f"{len(missing)} weak image(s) no counted step saw scored now"

    def score_batch(self, step: int, batch, feats: torch.Tensor) -> int:
        """Score the batch's weak rows from the training forward's head input ``feats``; the number counted.

        Their weights change in the bank at once (the caller reads gamma again
        for the loss). Nothing happens before the first update with the gate open.
        """
        st = self.state
        if self.g_head is None or not self.gate_open:
            return 0
        rows = [i for i, r in enumerate(batch.roles) if r is Role.WEAK and batch.ids[i] in st.bank.states]
        if not rows:
            return 0
        idx = torch.tensor(rows, device=feats.device)
        ids = [batch.ids[i] for i in rows]
        boxes = [batch.boxes[i] for i in rows]
        yw, pw, tw, aw = (t[idx] for t in (batch.target, batch.present, batch.tag_target, batch.absent))

        def instance_fn(z):
            return weak_losses(z, None, yw, boxes, pw, tw, st.loss_weights, absent=aw)["sum"]

        dots = dii_mod.head_scores(st.nets[0].segmentation_head, self.g_head, feats[idx], instance_fn,
                                   cosine=st.config.dii.weak_norm)
        strata = []
        for k in ids:
            if k not in self._pooled:  # added since the last update
                self._pooled[k] = label_stratum(st.collection.samples.get(k), st.prepared[k])
            strata.append(self._pooled[k])
        counted = self.reference.add(ids, dots.double().cpu().tolist(), strata)
        for k, z in counted:  # every row is in the bank (rows above)
            st.bank.observe({k: z})
            v = st.bank.value(k)
            st.collection.sample_weights.setdefault(k, WeightState(v)).record(step, v)
        self.batch_counted += len(counted)
        return len(counted)

    @staticmethod
    def _strong_dice(net, xs: torch.Tensor, ys: torch.Tensor) -> float:
        """The gate's Dice by a plain forward (the jvp scorer's strong forward runs inside ``torch.func``)."""
        from napari_hybridseg.core.network.models import forward

        was = net.training
        net.eval()
        try:
            with torch.no_grad():
                logits, _ = forward(net, xs.to(ys.device))
        finally:
            net.train(was)
        return strong_dice(logits.float(), ys)

    def _step(self, step: int, weak: list[str], dots: torch.Tensor, dice: float | None = None) -> WeightsReport:
        """The bank's step from every weak sample's score; the new weights into ``collection.sample_weights``."""
        st = self.state
        cfg = st.config
        if cfg.dii.update == "adam":
            # dL_S/dgamma_k ~ -g_S . g_k (inverse Hessian ~ identity), at a scale that does not drift with the loss
            dots = dii_mod.normalise_scores(dots.double())
            values = st.bank.step({k: -float(d) for k, d in zip(weak, dots.cpu().tolist())})
            gate = "counted (adam, no gate)"
        else:
            by_value = not self._tags_by_margin()
            strata = [label_stratum(st.collection.samples.get(k), st.prepared[k], by_value) for k in weak]
            z = dii_mod.robust_z(dots.double().cpu().tolist(), strata)
            if dice is None or dice >= cfg.dii.gate_dice:
                values = st.bank.observe(dict(zip(weak, z)))
                gate = "counted" + ("" if dice is None else f" (strong-set Dice {dice:.2f})")
            else:
                values = st.bank.values()
                gate = f"not counted: strong-set Dice {dice:.2f} < gate {cfg.dii.gate_dice:g}"
        st.dii_log.append(f"step {step}: {gate}")
        if st.dist is not None:
            st.dist.compare_gammas(values)  # recorded in run.json: every rank must hold the same
        for k, v in values.items():
            st.collection.sample_weights.setdefault(k, WeightState(v)).record(step, v)
        return WeightsReport(step=step, sample_weights=dict(values), gate=gate)
