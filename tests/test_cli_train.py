"""`hybridseg train` / `hybridseg predict` as a user runs them, including Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import imageio.v3 as iio
import numpy as np
import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.cli import main
from napari_hybridseg.core.data.store import load_project, save_project

TINY = ["--steps", "2", "--size", "32", "--batch-size", "2", "--no-dcr", "--dii-tau", "1", "--quiet"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def project(tmp_path):
    coll = make_collection(n_strong=2, n_weak=3, n_corrupt=1, size=40)
    return save_project(coll, tmp_path / "proj")


def test_train_writes_a_run_and_saves_learned_weights_into_the_project(project, tmp_path, capsys):
    assert main(["train", str(project), "--out", str(tmp_path / "run"), *TINY]) == 0
    out = capsys.readouterr().out
    assert "finished at step 2" in out and "lowest DII weights" in out
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    gamma = json.loads((tmp_path / "run" / "gamma.json").read_text())
    assert set(gamma) == {"w0", "w1", "w2"} and gamma["w0"]["corrupted"] is True
    assert load_project(project).sample_weights["w0"].value == pytest.approx(gamma["w0"]["weight"])


def test_train_refuses_to_overwrite_a_run_and_resume_continues_it(project, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(project), "--out", str(run), *TINY]) == 0
    assert main(["train", str(project), "--out", str(run), *TINY]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["train", str(project), "--out", str(run), "--resume", *TINY]) == 0
    assert json.loads((run / "run.json").read_text())["step"] == 4


def test_train_without_any_mask_says_what_to_do(tmp_path, capsys):
    coll = make_collection(n_strong=0, n_weak=2, size=40)
    proj = save_project(coll, tmp_path / "p")
    assert main(["train", str(proj), "--out", str(tmp_path / "run"), *TINY]) == 1
    assert "draw a mask on at least one image" in capsys.readouterr().err.lower()


def test_train_on_something_that_is_not_a_project_fails_with_a_hint(tmp_path, capsys):
    assert main(["train", str(tmp_path), "--out", str(tmp_path / "run"), *TINY]) == 2
    assert "hybridseg import" in capsys.readouterr().err


def test_predict_writes_masks_at_original_size_for_a_project_and_a_folder(project, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(project), "--out", str(run), *TINY]) == 0
    assert main(["predict", str(run), str(project), "--out", str(tmp_path / "masks"), "--quiet"]) == 0
    masks = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert masks == ["s0.png", "s1.png", "w0.png", "w1.png", "w2.png"]
    assert iio.imread(tmp_path / "masks" / "w0.png").shape == (40, 40)
    folder = tmp_path / "imgs"
    folder.mkdir()
    iio.imwrite(folder / "big.png", (np.random.default_rng(0).random((90, 61)) * 255).astype(np.uint8))
    assert main(["predict", str(run), str(folder), "--out", str(tmp_path / "m2"), "--tta", "--quiet"]) == 0
    assert iio.imread(tmp_path / "m2" / "big.png").shape == (90, 61)


@pytest.mark.skipif(sys.platform == "win32", reason="SIGINT to a child process is POSIX")
def test_ctrl_c_stops_cleanly_with_a_checkpoint(project, tmp_path):
    run = tmp_path / "run"
    err = tmp_path / "stderr.txt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [sys.executable, "-m", "napari_hybridseg.cli", "train", str(project), "--out", str(run),
            "--steps", "100000", "--size", "32", "--batch-size", "2", "--no-dcr"]
    with open(err, "w") as fh:
        proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)
    try:
        deadline = time.monotonic() + 180
        while max(map(int, re.findall(r"(\d+)/100000", err.read_text())), default=0) < 2:  # past step 2
            assert proc.poll() is None, err.read_text()
            assert time.monotonic() < deadline, "training did not start in time"
            time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err.read_text()
    assert "stopped at step" in out
    record = json.loads((run / "run.json").read_text())
    assert 2 <= record["step"] < 100000
    assert (run / "model" / "model.safetensors").exists()
    assert "Traceback" not in err.read_text()


def test_speed_prints_a_row_per_arm_and_writes_json(tmp_path, capsys):
    out = tmp_path / "speed.json"
    assert main(["speed", "--size", "32", "--batch-size", "2", "--strong", "2", "--weak", "2", "--steps", "1",
                 "--warmup", "0", "--arms", "1,2", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "one network + DII" in table and "DCR" not in table
    rows = json.loads(out.read_text())["rows"]
    assert [r["arm"] for r in rows] == ["one network", "one network + DII"]
    assert rows[0]["dii_update_s"] is None and rows[1]["dii_update_s"] > 0
    assert rows[1]["amortised_step_s"] > rows[1]["median_step_s"]


def test_train_set_overrides_any_setting_after_the_options_and_names_a_bad_one(tmp_path, capsys):
    import argparse

    from napari_hybridseg.cli import CLIError, train_cmd

    parser = argparse.ArgumentParser()
    train_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train", str(tmp_path), "--out", str(tmp_path / "r"), "--steps", "5", "--no-dii",
                              "--set", "dii.tau=3", "--set", "model.input_size=64", "--set", "cps_lambda=1.5"])
    cfg = train_cmd.build_config(args)
    assert (cfg.steps, cfg.dii.enabled, cfg.dii.tau, cfg.model.input_size, cfg.dcr.cps_lambda) == (5, False, 3, 64, 1.5)
    args.set_ = ["optim.lr_schedule=cosine"]
    with pytest.raises(CLIError, match="optim.lr_schedule.*'poly' or 'constant'"):
        train_cmd.build_config(args)
    assert "weight 1" in parser._subparsers._group_actions[0].choices["train"].format_help()
