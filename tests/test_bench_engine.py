"""The benchmark with the real trainer and predictor: a tiny run, end to end (a few seconds on 2 cores)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from test_bench import fake_hybridize, synthetic_collection

from napari_hybridseg.core.bench import protocol as P
from napari_hybridseg.core.bench.report import write_report


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.slow
def test_benchmark_trains_real_arms_and_scores_them_at_original_size(tmp_path):
    settings = P.BenchSettings(dataset=str(tmp_path / "data"), layout="folder", out=str(tmp_path / "out"),
                               arms=("strong-only", "naive", "oracle", "dii"), steps=4, strong_fraction=0.3, noise=0.4,
                               n_boot=100,
                               grid_images=2, device="cpu",
                               overrides={"batch_size": 4, "model": {"input_size": 32}, "dii_tau": 2})
    prepared = P.prepare_collection(synthetic_collection(20), settings, hybridize=fake_hybridize, log=lambda m: None)
    results = P.run_benchmark(settings, prepared=prepared, log=lambda m: None)
    assert not results["errors"], results["errors"]
    naive, dii = results["arms"]["naive"], results["arms"]["dii"]
    for rec in (naive, dii):
        assert 0.0 <= rec["dice"] <= 1.0 and rec["dice_ci"][0] <= rec["dice"] <= rec["dice_ci"][1]
        assert rec["steps"] == 4 and rec["sec_per_step"] > 0 and rec["device"].startswith("cpu")
        assert len(rec["per_image"]) == len(prepared.split.test)
    # DII ran (tau 2) and its weights were scored against the recorded corruption
    assert set(dii["gamma"]) == set(prepared.weak)
    assert 0.0 <= dii["gamma_auroc"] <= 1.0
    arm_rec = json.loads(P.arm_file(tmp_path / "out", "dii").read_text())
    assert all(len(h) >= 2 and h[0] == [0, 0.5] for h in arm_rec["gamma_history"].values())
    # predictions for the grid came back at the test images' original sizes
    grid = np.load(tmp_path / "out" / "grid" / f"{results['split']['grid'][0]}__dii.npz")["pred"]
    truth = np.load(tmp_path / "out" / "grid" / f"{results['split']['grid'][0]}.npz")["truth"]
    assert grid.shape == truth.shape
    text = write_report(tmp_path / "out").read_text()
    assert "| `dii` |" in text and "| `oracle` |" in text and "| naive_loss |" in text
    # baselines with the real models: the naive model's loss of every weak sample, agreement with strong-only
    base = results["baselines"]
    assert not base["missing"] and set(base["signals"]["naive_loss"]) == set(prepared.weak)
    assert all(v >= 0 for v in base["signals"]["naive_loss"].values())
    assert 0.0 <= base["quality"]["agreement"]["auroc"] <= 1.0
    # the convergence curve of strong-only: validation Dice at each checkpoint (4 steps / 10 points -> every step)
    assert [s for s, _ in results["arms"]["strong-only"]["val_curve"]] == [1, 2, 3, 4]
    # the oracle arm trained with corrupted labels at 0 and clean at 1
    oracle_run = json.loads((tmp_path / "out" / "runs" / "oracle" / "run.json").read_text())
    weights = {k: v["weight"] for k, v in oracle_run["sample_weights"].items()}
    assert weights == {k: (0.0 if k in prepared.corrupted else 1.0) for k in prepared.weak}
    # the run folder records the scale of the original training images (36-48 px -> 32 px), as if not pre-resized
    run = json.loads((tmp_path / "out" / "runs" / "dii" / "run.json").read_text())
    assert run["train_scale"] == pytest.approx(32 / 48, rel=0.1)


def test_a_dii_update_counts_in_the_step_it_follows_the_runs_last_one_included():
    """The mean s/step is DII's amortised cost: the update after the last step must not fall outside it."""
    from types import SimpleNamespace

    from napari_hybridseg.core.bench.arm import _ArmTrace
    from napari_hybridseg.core.training.reports import StartReport, StepReport, WeightsReport

    trace = _ArmTrace(SimpleNamespace(val={}), SimpleNamespace(dii_init=0.5), None, [], False)
    step = lambda k: StepReport(step=k, total_steps=2, losses={}, lr=0.0, sec_per_step=0.0, eta_s=0.0, device="cpu")  # noqa: E731
    trace.follow(StartReport("cpu", 2, 0, 1, 1, 0, None), 0.0)
    trace.follow(step(1), 1.0)
    trace.follow(WeightsReport(step=1, sample_weights={"w": 0.5}), 4.0)  # a 3 s update after step 1
    trace.follow(step(2), 5.0)
    trace.follow(WeightsReport(step=2, sample_weights={"w": 0.5}), 7.0)  # the last update: 2 s
    assert trace.step_times == [4.0, 1.0 + 2.0]
