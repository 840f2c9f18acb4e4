"""``hybridseg demo`` as CI and the docs run it: trains through the widget, screenshots, exits 0."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]


def test_demo_trains_screenshots_and_quits(tmp_path, qapp):
    if not os.environ.get("DISPLAY"):
        pytest.skip("needs a display (pytest-xvfb provides one)")
    shot = tmp_path / "shot.png"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "napari_hybridseg.cli", "demo", "--train-steps", "3", "--size", "32",
         "--batch-size", "2", "--device", "cpu", "--screenshot", str(shot), "--quit", "--measure-responsiveness"],
        capture_output=True, text=True, timeout=600, env=env, cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert shot.is_file() and shot.stat().st_size > 10_000
    assert '"train_to_first_overlay_s"' in proc.stdout and '"p95_ms"' in proc.stdout


def test_demo_refuses_a_folder_that_is_not_a_project(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "napari_hybridseg.cli", "demo", "--project", str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a project folder" in proc.stderr
