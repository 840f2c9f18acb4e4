"""Distributed training (torchrun, gloo on this CPU): ranks agree, match one process, and end together.

Each test starts real processes with ``python -m torch.distributed.run`` (torchrun), as a user would;
the collection is tiny (32 px, a few steps) so the whole file runs in well under a minute.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.cli import main
from napari_hybridseg.core.errors import ConfigError
from napari_hybridseg.core.training.config import TrainConfig
from napari_hybridseg.core.training.distributed import Distributed, check_config, from_env

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: docs/training.md ("Scaling out"): a gamma of a 2-process CPU run is within this of the one-process run's
GAMMA_TOLERANCE = 0.05
# DCR on: the second network, CPS and both networks' gradients are what DDP must keep in step
TINY = ["--steps", "6", "--size", "32", "--batch-size", "4", "--dii-tau", "2", "--dcr", "--quiet", "--no-save-weights"]


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


@pytest.fixture
def project(tmp_path):
    from napari_hybridseg.core.data.store import save_project

    return save_project(make_collection(n_strong=4, n_weak=6, n_corrupt=2, size=40), tmp_path / "proj")


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(k, None)
    return env


def _torchrun(args: list[str], **kwargs) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "napari_hybridseg.cli", *args]
    return subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def test_two_gloo_processes_hold_the_same_gammas_and_match_one_process(project, tmp_path):
    proc = _torchrun(["train", str(project), "--out", str(tmp_path / "ddp"), *TINY])
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    assert "x2 processes (DDP, gloo" in err and "finished at step 6" in out
    record = json.loads((tmp_path / "ddp" / "run.json").read_text())
    dist = record["distributed"]
    assert dist["world_size"] == 2 and dist["per_rank_batch"] == 2 and dist["dii_updates"] == 3
    assert dist["gamma_rank_spread"] == 0.0  # every rank held exactly the same gammas after every update
    assert main(["train", str(project), "--out", str(tmp_path / "one"), *TINY]) == 0  # the same global batch
    two = json.loads((tmp_path / "ddp" / "gamma.json").read_text())
    one = json.loads((tmp_path / "one" / "gamma.json").read_text())
    assert set(two) == set(one) and len(one) == 6
    for sid in one:
        assert len(two[sid]["history"]) == len(one[sid]["history"]) == 4  # start + 3 updates
        assert abs(two[sid]["weight"] - one[sid]["weight"]) <= GAMMA_TOLERANCE, (sid, two[sid], one[sid])
    # only rank 0 wrote: one run folder, one model
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if not p.name.startswith(".")) == \
        sorted(p.name for p in (tmp_path / "one").iterdir() if not p.name.startswith("."))


def _children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(p) for p in text.split()]


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="finds the worker processes through /proc")
def test_killing_one_rank_ends_the_other_with_a_message_and_a_checkpoint(project, tmp_path):
    run = tmp_path / "run"
    proc = _torchrun(["train", str(project), "--out", str(run), "--steps", "5000", "--size", "32",
                      "--batch-size", "4", "--no-dcr", "--quiet", "--checkpoint-every", "4000"])
    try:
        deadline = time.monotonic() + 120
        workers: dict[int, int] = {}
        while time.monotonic() < deadline and proc.poll() is None:
            workers = {r: p for p in _children(proc.pid) if (r := _rank_of(p)) is not None}
            if len(workers) == 2 and (run / "run.json").exists():
                break
            time.sleep(0.2)
        assert len(workers) == 2 and (run / "run.json").exists(), proc.communicate(timeout=30)
        time.sleep(2.0)  # both ranks in their steps
        os.kill(workers[1], signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0
    assert "process 0 of 2: another process of the run stopped answering" in err, err[-3000:]
    assert "checkpoint of step" in err
    step = json.loads((run / "run.json").read_text())["step"]
    assert 0 < step < 5000  # the rescue checkpoint, not the start one


def test_one_process_is_not_distributed_and_a_batch_must_split_evenly():
    assert from_env(environ={}) is None and from_env(environ={"WORLD_SIZE": "1"}) is None
    two = Distributed(rank=1, world_size=2, local_rank=1, local_world_size=2, backend="gloo", device="cpu")
    assert two.shard(list("abcdef")) == ["b", "d", "f"]
    assert [Distributed(r, 3, r, 3, "gloo", "cpu").span(7) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]
    check_config(TrainConfig(batch_size=4), two)
    with pytest.raises(ConfigError, match="split evenly"):
        check_config(TrainConfig(batch_size=5), two)
    with pytest.raises(ConfigError, match="pixel"):
        check_config(TrainConfig(batch_size=4, pixel_weights="exact"), two)
    with pytest.raises(Exception, match="torchrun"):
        from_env(environ={"WORLD_SIZE": "2"})
