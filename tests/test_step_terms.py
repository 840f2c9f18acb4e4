"""The trainer's parts alone: the LR schedule, the supervised loss, the DCR and DII terms, the checkpointer."""

from __future__ import annotations

import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
from napari_hybridseg.core.training.schedule import LRSchedule


@pytest.fixture(autouse=True)
def _one_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def _state(**kw):
    from napari_hybridseg.core.training.state import build_state

    config = TrainConfig(model=ModelConfig(encoder_weights=None, input_size=32), steps=10, batch_size=4,
                         device="cpu", precision="fp32", threads=1, preview_every=0, checkpoint_every=0, **kw)
    return build_state(make_collection(n_strong=2, n_weak=3), config, None, None)


def _batch(st):
    from napari_hybridseg.core.training.batches import collate

    ids = st.sampler.sample(st.ids(Role.STRONG), st.ids(Role.WEAK), st.ids(Role.UNLABELED))
    return collate([st.prepared[i] for i in ids])


def test_schedule_warms_up_linearly_then_decays_or_stays_and_restarts_for_a_continued_run():
    poly = LRSchedule(1.0, 2, "poly", 10)
    assert [poly.at(s) for s in (1, 2)] == [0.5, 1.0]
    assert poly.at(3) == pytest.approx((1 - 1 / 8) ** 0.9) and poly.at(10) == 0.0 and poly.at(99) == 0.0
    assert LRSchedule(1.0, 2, "constant", 10).at(7) == 1.0
    assert LRSchedule(1.0, 2, "poly", 10, start_step=100).at(101) == 0.5


def test_supervised_loss_weighs_weak_rows_by_gamma_and_strong_rows_at_one():
    from napari_hybridseg.core.network.models import forward
    from napari_hybridseg.core.training.step import SupervisedLoss

    st = _state(dcr=False)
    batch = _batch(st)
    logits, aux = forward(st.nets[0], batch.x)
    loss = SupervisedLoss(st.loss_weights)
    ones = torch.ones(len(batch.ids))
    weak = torch.tensor([r is Role.WEAK for r in batch.roles])
    full, terms = loss(logits, aux, batch, ones)
    none, terms0 = loss(logits, aux, batch, torch.where(weak, 0.0, 1.0))
    assert terms0["strong"] == terms["strong"] and float(terms0["pce"]) == 0.0
    assert float(none) < float(full)


def test_size_prior_term_acts_on_point_rows_only_not_on_boxes():
    from dataclasses import replace

    import numpy as np

    from napari_hybridseg.core.network.models import forward
    from napari_hybridseg.core.supervision.size_prior import SizePrior
    from napari_hybridseg.core.training.step import SupervisedLoss

    st = _state(dcr=False)
    batch = _batch(st)
    logits, aux = forward(st.nets[0], batch.x)
    tight = SizePrior(np.array([0.0, 1e-4]), np.array([1.0, 1e-3]), np.array([0, 2]))  # any prediction is too big
    ones = torch.ones(len(batch.ids))
    on, off = SupervisedLoss(replace(st.loss_weights, size=1.0)), SupervisedLoss(replace(st.loss_weights, size=0.0))
    boxes_only = on(logits, aux, batch, ones, size_prior=tight)[1]
    assert "size" not in boxes_only  # every weak row of this collection has a box
    for i, r in enumerate(batch.roles):
        if r is Role.WEAK:
            batch.boxes[i] = np.zeros((0, 5), np.int64)  # now a row without a box: the prior applies
    terms = on(logits, aux, batch, ones, size_prior=tight)[1]
    assert float(terms["size"]) > 0
    assert "size" not in off(logits, aux, batch, ones, size_prior=tight)[1]


def test_dcr_term_is_ramped_cps_and_draws_from_the_run_generator():
    from napari_hybridseg.core.methods.dcr import rampup
    from napari_hybridseg.core.training.dcr_term import DCRTerm

    st = _state(dcr=True, cps_lambda=2.0)
    batch = _batch(st)
    gamma = st.gamma_of(batch.ids, batch.roles)
    before = st.rng.bit_generator.state["state"]["state"]
    scaled, cps = DCRTerm(st).loss(1, batch, gamma)
    assert st.rng.bit_generator.state["state"]["state"] != before  # permutation and boxes from the run's rng
    assert float(scaled) == pytest.approx(2.0 * rampup(1, st.rampup) * float(cps), rel=1e-6)
    scaled.backward()
    assert all(any(p.grad is not None for p in net.parameters()) for net in st.nets)


def test_dcr_on_the_batch_itself_compares_the_two_forwards_without_a_cutmix():
    from napari_hybridseg.core.methods.dcr import cps_loss, rampup
    from napari_hybridseg.core.network.models import forward
    from napari_hybridseg.core.supervision.targets import IGNORE
    from napari_hybridseg.core.training.config_sections import DCRConfig
    from napari_hybridseg.core.training.dcr_term import DCRTerm

    st = _state(dcr=DCRConfig(enabled=True, pairs="batch", cps_lambda=2.0))
    batch = _batch(st)
    gamma = st.gamma_of(batch.ids, batch.roles)
    la, lb = (forward(net, batch.x)[0] for net in st.nets)
    before = st.rng.bit_generator.state["state"]["state"]
    scaled, cps = DCRTerm(st).loss(1, batch, gamma, (la, lb))
    assert st.rng.bit_generator.state["state"]["state"] == before  # no permutation, no boxes drawn
    assert float(cps) == pytest.approx(float(cps_loss(la, lb, gamma, known=batch.target != IGNORE)), rel=1e-6)
    assert float(scaled) == pytest.approx(2.0 * rampup(1, st.rampup) * float(cps), rel=1e-6)
    with pytest.raises(ValueError, match="logits"):
        DCRTerm(st).loss(1, batch, gamma)
    scaled.backward()
    assert all(any(p.grad is not None for p in net.parameters()) for net in st.nets)


def test_dii_term_moves_the_weak_weights_and_records_them_every_tau_steps():
    from napari_hybridseg.core.training.config_sections import DIIConfig
    from napari_hybridseg.core.training.dii_term import DIITerm

    # an untrained network does not pass the gate (strong-set Dice 0.5): the weights stay, the report says why
    st = _state(dcr=False, dii=DIIConfig(tau=3))
    term = DIITerm(st)
    assert [term.due(s) for s in (1, 2, 3, 6)] == [False, False, True, True]
    report = term.update(3)
    assert report.gate.startswith("not counted: strong-set Dice")
    assert set(report.sample_weights.values()) == {0.5} and st.dii_log == [f"step 3: {report.gate}"]
    # with the gate open the weights move, by the evidence rule
    st = _state(dcr=False, dii=DIIConfig(tau=3, gate_dice=0.0))
    term = DIITerm(st)
    report = term.update(3)
    assert report.gate.startswith("counted (strong-set Dice")
    assert set(report.sample_weights) == set(st.ids(Role.WEAK))
    assert any(v != 0.5 for v in report.sample_weights.values())
    assert all(st.collection.sample_weights[k].history[-1] == (3, v) for k, v in report.sample_weights.items())
    assert DIITerm(_state(dcr=False, dii=False)).update(3) is None


def test_dii_scores_tag_only_images_against_the_margin_objective_and_boxes_as_before():
    from napari_hybridseg.core.methods import dii as dii_mod
    from napari_hybridseg.core.training.config_sections import DIIConfig
    from napari_hybridseg.core.training.dii_term import DIITerm, label_stratum
    from napari_hybridseg.core.training.state import build_state

    def term_for(tag_objective, n_weak=24):
        config = TrainConfig(model=ModelConfig(encoder_weights=None, input_size=32), steps=10, batch_size=4,
                             device="cpu", precision="fp32", threads=1, preview_every=0, checkpoint_every=0,
                             dcr=False, dii=DIIConfig(tau=3, gate_dice=0.0, tag_objective=tag_objective))
        st = build_state(make_collection(n_strong=2, n_weak=n_weak, tags=True), config, None, None)
        return st, DIITerm(st)

    def dots(st, term):
        weak = st.ids(Role.WEAK)
        items = [st.prepared[k] for k in weak]
        xs, ys, ts = term._strong_batch(st.ids(Role.STRONG))
        xw = torch.stack([p.image for p in items])
        kinds = [label_stratum(st.collection.samples.get(k), p) for k, p in zip(weak, items)]
        got = term._last_layer_dots(st.nets[0], xs, ys, ts, {}, items, xw, 4, True)
        return got, kinds, (xs, ys, ts, items, xw)

    st, term = term_for("margin")
    got, kinds, (xs, ys, ts, items, xw) = dots(st, term)
    tags = [i for i, k in enumerate(kinds) if k.startswith("tag:")]
    boxes = [i for i, k in enumerate(kinds) if k == "box"]
    assert tags and boxes
    for rows, objective, cosine in ((tags, "margin", True), (boxes, None, False)):
        ref = dii_mod.last_layer_scores(st.nets[0], xs, term._strong_fn(ys, ts, {}, objective), xw[rows],
                                        term._instance_fn([items[i] for i in rows]), chunk=4, equalise=True,
                                        cosine=cosine)
        assert torch.allclose(got[rows], ref, rtol=1e-4, atol=1e-6)
    # "same": the tags scored like the boxes; the boxes' scores do not change
    st2, term2 = term_for("same")
    same, _, _ = dots(st2, term2)
    assert torch.allclose(same[boxes], got[boxes], rtol=1e-4, atol=1e-6)
    assert not torch.allclose(same[tags], got[tags], rtol=1e-3)
    assert term.update(3).gate.startswith("counted")
    # fewer tag images than the smallest stratum (8): pooled with the boxes, so scored like them
    st3, term3 = term_for("margin", n_weak=6)
    st4, term4 = term_for("same", n_weak=6)
    assert not term3._tags_by_margin() and term._tags_by_margin()
    torch.testing.assert_close(dots(st3, term3)[0], dots(st4, term4)[0])


def test_checkpointer_is_due_by_steps_and_writes_nothing_without_a_run_folder(tmp_path):
    from napari_hybridseg.core.training.checkpointer import Checkpointer

    st = _state(dcr=False)
    assert Checkpointer(st).write(1) is None and not Checkpointer(st).due(100)
    st.run_dir = tmp_path / "run"
    st.config = st.config.replace(checkpoint_every=5, checkpoint_minutes=0)
    ck = Checkpointer(st)
    assert [ck.due(s) for s in (4, 5)] == [False, True]
    assert ck.write(5).path == str(st.run_dir) and (st.run_dir / "run.json").exists()
