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
                               arms=("naive", "dii"), steps=3, strong_fraction=0.3, noise=0.4, n_boot=100,
                               grid_images=2, device="cpu",
                               overrides={"batch_size": 4, "model": {"input_size": 32}, "dii_tau": 2})
    prepared = P.prepare_collection(synthetic_collection(20), settings, hybridize=fake_hybridize, log=lambda m: None)
    results = P.run_benchmark(settings, prepared=prepared, log=lambda m: None)
    assert not results["errors"], results["errors"]
    naive, dii = results["arms"]["naive"], results["arms"]["dii"]
    for rec in (naive, dii):
        assert 0.0 <= rec["dice"] <= 1.0 and rec["dice_ci"][0] <= rec["dice"] <= rec["dice_ci"][1]
        assert rec["steps"] == 3 and rec["sec_per_step"] > 0 and rec["device"].startswith("cpu")
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
    assert "| `dii` |" in write_report(tmp_path / "out").read_text()
    # the run folder records the scale of the original training images (36-48 px -> 32 px), as if not pre-resized
    run = json.loads((tmp_path / "out" / "runs" / "dii" / "run.json").read_text())
    assert run["train_scale"] == pytest.approx(32 / 48, rel=0.1)
