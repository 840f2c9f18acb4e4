"""The control arms' weights: `fixed` holds every weak weight at DII's initial value, `oracle` 0 / 1 by corruption."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.core.bench import protocol as P
from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
from napari_hybridseg.core.training.reports import DoneReport, StepReport, WeightsReport
from napari_hybridseg.core.training.trainer import train


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _tiny(**kw) -> TrainConfig:
    base = dict(model=ModelConfig(input_size=32), steps=4, batch_size=4, dcr=False, dii=False, preview_every=0,
                checkpoint_every=0, warmup_steps=1, strong_per_batch=1)
    base.update(kw)
    return TrainConfig(**base)


def _drive(gen) -> list:
    reports = [next(gen)]
    while not isinstance(reports[-1], DoneReport):
        reports.append(gen.send(None))
    return reports


def test_arm_config_gives_fixed_the_initial_weight_and_oracle_zero_for_corrupted_one_for_clean():
    base = TrainConfig(dii_init=0.5)
    weak = ["a", "b", "c", "d"]
    corrupted = {"b": "shifted", "d": "inflated"}
    fixed = P.arm_config(base, "fixed", weak_ids=weak, corrupted=corrupted)
    oracle = P.arm_config(base, "oracle", weak_ids=weak, corrupted=corrupted)
    assert fixed.dii.enabled is False and fixed.fixed_weights == {k: 0.5 for k in weak}
    assert oracle.dii.enabled is False and oracle.fixed_weights == {"a": 1.0, "b": 0.0, "c": 1.0, "d": 0.0}
    # the same network, steps and seed as the other arms; only the method switches differ
    naive = P.arm_config(base, "naive", weak_ids=weak, corrupted=corrupted)
    for cfg in (fixed, oracle):
        assert (cfg.model, cfg.steps, cfg.seed, cfg.dcr, cfg.pixel_weights) == \
            (naive.model, naive.steps, naive.seed, naive.dcr, naive.pixel_weights)
    with pytest.raises(ValueError, match="weak ids"):
        P.arm_config(base, "oracle")


def test_fixed_weights_stay_put_through_training_and_weigh_the_weak_terms():
    coll = make_collection(n_strong=2, n_weak=6, n_corrupt=3)
    weak = [s.id for s in coll.weak]
    oracle = {k: 0.0 if coll[k].corrupted else 1.0 for k in weak}
    reports = _drive(train(coll, _tiny(fixed_weights=oracle)))
    assert not any(isinstance(r, WeightsReport) for r in reports)  # no DII update ever
    assert {k: s.value for k, s in coll.sample_weights.items()} == oracle

    coll = make_collection(n_strong=2, n_weak=6, n_corrupt=3)
    reports = _drive(train(coll, _tiny(fixed_weights={k: 0.5 for k in weak})))
    assert {k: s.value for k, s in coll.sample_weights.items()} == {k: 0.5 for k in weak}
    half = [r.losses["box"] for r in reports if isinstance(r, StepReport)]
    # at weight 0 every weak term vanishes from the loss; at 0.5 it does not
    coll = make_collection(n_strong=2, n_weak=6, n_corrupt=3)
    reports = _drive(train(coll, _tiny(fixed_weights={k: 0.0 for k in weak})))
    zero = [r.losses.get("box", 0.0) for r in reports if isinstance(r, StepReport)]
    assert all(v == 0.0 for v in zero) and all(v > 0.0 for v in half)


def test_fixed_weights_need_dii_off_and_values_in_unit_range(tmp_path: Path):
    coll = make_collection(n_strong=2, n_weak=2)
    with pytest.raises(ValueError, match="dii off"):
        train(coll, _tiny(dii=True, fixed_weights={"w0": 0.5}))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):  # a ConfigError when the config is built
        train(coll, _tiny(fixed_weights={"w0": 1.5}))
