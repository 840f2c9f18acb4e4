"""Runs that survive a kill, a second writer, a full disk; every error one line naming the file."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.cli import main
from napari_hybridseg.core.data.locks import FolderLock
from napari_hybridseg.core.data.store import save_project

TINY = ["--steps", "2", "--size", "32", "--batch-size", "2", "--no-dcr", "--dii-tau", "1", "--quiet"]
POSIX = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def project(tmp_path):
    return save_project(make_collection(n_strong=2, n_weak=3, n_corrupt=1, size=40), tmp_path / "proj")


@pytest.fixture
def trained(project, tmp_path):
    run = tmp_path / "run"
    assert main(["train", str(project), "--out", str(run), *TINY]) == 0
    return run


def _one_line_error(capsys, *needles: str) -> str:
    full = capsys.readouterr().err.strip()
    err = full.splitlines()[-1]  # after what training printed before it failed
    assert err.startswith("hybridseg: error: ") and "Traceback" not in full, full
    assert sum(line.startswith("hybridseg: error") for line in full.splitlines()) == 1, full
    for needle in needles:
        assert needle in err, err
    return err


def _spawn_train(project: Path, run: Path, log: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    args = [sys.executable, "-m", "napari_hybridseg.cli", "train", str(project), "--out", str(run),
            "--steps", "100000", "--size", "32", "--batch-size", "2", "--no-dcr", *extra]
    with open(log, "w") as fh:
        return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=fh, text=True, env=env)


def _wait_for(cond, proc: subprocess.Popen, log: Path, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert proc.poll() is None, log.read_text()
        assert time.monotonic() < deadline, "timed out: " + log.read_text()
        time.sleep(0.2)


def _run_step(run: Path) -> int:
    try:
        return json.loads((run / "run.json").read_text())["step"]
    except (OSError, ValueError, KeyError):
        return -1


# ------------------------------------------------------------------------------------------------
# kill -9, SIGTERM, locks
# ------------------------------------------------------------------------------------------------
@POSIX
def test_kill_9_during_training_leaves_a_run_that_predict_and_resume_accept(project, tmp_path, capsys):
    run = tmp_path / "run"
    proc = _spawn_train(project, run, tmp_path / "log", "--checkpoint-every", "3")
    try:
        _wait_for(lambda: _run_step(run) >= 3, proc, tmp_path / "log")
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    step = _run_step(run)
    assert step >= 3 and step % 3 == 0
    assert main(["predict", str(run), str(project), "--out", str(tmp_path / "masks"), "--quiet"]) == 0
    assert len(list((tmp_path / "masks").glob("*.png"))) == 5
    # the dead process's lock is stale: --resume takes it over and continues from the checkpoint
    assert main(["train", str(project), "--out", str(run), "--resume", *TINY]) == 0
    assert _run_step(run) == step + 2


def test_a_new_run_is_a_valid_run_before_its_first_periodic_checkpoint(project, tmp_path):
    from napari_hybridseg.core.data.store import load_project
    from napari_hybridseg.core.training.config import preset
    from napari_hybridseg.core.training.reports import StepReport
    from napari_hybridseg.core.training.trainer import train

    cfg = preset("cpu-quick").replace(steps=50, batch_size=2, dcr=False, dii=False, checkpoint_every=100,
                                      checkpoint_minutes=0)
    cfg = cfg.replace(model=cfg.model.replace(input_size=32, encoder_weights=None))
    gen = train(load_project(project), cfg, tmp_path / "run")
    next(gen)
    assert isinstance(next(gen), StepReport)  # one step done: a kill now used to leave nothing
    gen.close()
    assert _run_step(tmp_path / "run") == 0 and (tmp_path / "run" / "model" / "model.safetensors").is_file()


def test_checkpoints_come_by_wall_time_too(project, tmp_path):
    from napari_hybridseg.core.data.store import load_project
    from napari_hybridseg.core.training.config import preset
    from napari_hybridseg.core.training.reports import CheckpointReport
    from napari_hybridseg.core.training.trainer import run as run_training

    cfg = preset("cpu-quick").replace(steps=3, batch_size=2, dcr=False, dii=False, checkpoint_every=0,
                                      checkpoint_minutes=1e-6)
    cfg = cfg.replace(model=cfg.model.replace(input_size=32, encoder_weights=None))
    seen = []
    run_training(load_project(project), cfg, tmp_path / "run", callback=seen.append)
    steps = [r.step for r in seen if isinstance(r, CheckpointReport)]
    assert steps[:3] == [1, 2, 3]


def test_checkpoint_options_on_the_command_line():
    from napari_hybridseg.cli import build_parser
    from napari_hybridseg.cli.train_cmd import build_config

    args = build_parser().parse_args(["train", "p", "--out", "r", "--checkpoint-every", "7",
                                      "--checkpoint-minutes", "0.5"])
    cfg = build_config(args)
    assert cfg.checkpoint_every == 7 and cfg.checkpoint_minutes == 0.5
    assert build_config(build_parser().parse_args(["train", "p", "--out", "r"])).checkpoint_minutes == 5.0


@POSIX
def test_sigterm_stops_like_ctrl_c_with_a_checkpoint(project, tmp_path):
    run = tmp_path / "run"
    log = tmp_path / "log"
    proc = _spawn_train(project, run, log)
    try:
        _wait_for(lambda: max(map(int, re.findall(r"(\d+)/100000", log.read_text())), default=0) >= 2, proc, log)
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, log.read_text()
    assert "stopped at step" in out and "Traceback" not in log.read_text()
    assert _run_step(run) >= 2


def test_a_second_writer_on_the_run_folder_or_the_project_is_told(project, tmp_path, capsys):
    run = tmp_path / "run"
    with FolderLock(run, ".hybridseg.lock", "run folder"):  # another `hybridseg train` writing there
        assert main(["train", str(project), "--out", str(run), *TINY]) == 1
        _one_line_error(capsys, str(run), "run folder in use by process", str(os.getpid()))
    with FolderLock(project, ".hybridseg-train.lock", "project (being trained)"):
        assert main(["train", str(project), "--out", str(tmp_path / "other"), *TINY]) == 1
        _one_line_error(capsys, str(project), "in use by process")
    assert not (tmp_path / "other").exists()  # a run that never started leaves no folder
    # a lock file left by a process that died is stale: taken over
    (run / ".hybridseg.lock").write_text(json.dumps({"pid": 999999, "started": 0}))
    assert main(["train", str(project), "--out", str(run), *TINY]) == 0


# ------------------------------------------------------------------------------------------------
# one-line errors naming the file
# ------------------------------------------------------------------------------------------------
def test_empty_model_file(trained, project, tmp_path, capsys):
    (trained / "model" / "model.safetensors").write_bytes(b"")
    assert main(["predict", str(trained), str(project), "--out", str(tmp_path / "m"), "--quiet"]) == 1
    _one_line_error(capsys, "model.safetensors", "empty file")
    assert main(["train", str(project), "--out", str(trained), "--resume", *TINY]) == 1
    _one_line_error(capsys, "model.safetensors", "--force")


def test_truncated_model_file(trained, project, tmp_path, capsys):
    f = trained / "model" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    assert main(["predict", str(trained), str(project), "--out", str(tmp_path / "m"), "--quiet"]) == 1
    _one_line_error(capsys, str(f), "truncated or damaged")
    assert main(["train", str(project), "--out", str(trained), "--resume", *TINY]) == 1
    _one_line_error(capsys, str(f), "truncated or damaged")


def test_broken_run_json(trained, project, tmp_path, capsys):
    (trained / "run.json").write_text('{"step": 2,\n "classes": [}')
    assert main(["predict", str(trained), str(project), "--out", str(tmp_path / "m"), "--quiet"]) == 1
    _one_line_error(capsys, str(trained / "run.json"), "line 2")
    assert main(["train", str(project), "--out", str(trained), "--resume", *TINY]) == 1
    _one_line_error(capsys, str(trained / "run.json"), "line 2")


def test_broken_project_json(trained, project, tmp_path, capsys):
    (project / "project.json").write_text('{"format": "napari-hybridseg-project",\n "version": 1,,}')
    assert main(["train", str(project), "--out", str(tmp_path / "r2"), *TINY]) == 1
    err = _one_line_error(capsys, str(project / "project.json"), "line 2")
    assert "not a project folder" not in err
    assert main(["predict", str(trained), str(project), "--out", str(tmp_path / "m"), "--quiet"]) == 1
    _one_line_error(capsys, str(project / "project.json"), "line 2")


def test_full_disk_under_out_is_one_line_and_keeps_the_last_checkpoint(project, tmp_path, capsys, monkeypatch):
    import safetensors.torch
    from safetensors import SafetensorError

    real = safetensors.torch.save_file
    calls = []

    def full_disk(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:  # the step-0 checkpoint fits, the next one finds the disk full
            raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: '
                                  '"No space left on device" })')
        return real(*args, **kwargs)

    monkeypatch.setattr(safetensors.torch, "save_file", full_disk)
    run = tmp_path / "run"
    assert main(["train", str(project), "--out", str(run), *TINY[:-1], "--checkpoint-every", "1", "--quiet"]) == 1
    _one_line_error(capsys, str(run), "no space left", "step 0", "--resume")
    assert not list(run.glob("*.tmp")) and not list(run.glob(".*.tmp"))
    monkeypatch.setattr(safetensors.torch, "save_file", real)
    assert main(["predict", str(run), str(project), "--out", str(tmp_path / "m"), "--quiet"]) == 0


def test_size_that_no_network_takes_is_refused(project, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", str(project), "--out", str(tmp_path / "r"), "--size", "7"])
    assert exc.value.code == 2 and "multiple of 32" in capsys.readouterr().err
