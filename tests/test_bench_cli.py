"""`hybridseg bench` from the command line: a tiny folder dataset, a fake trainer (seconds, no torch)."""

from __future__ import annotations

import json

import imageio.v3 as iio
import numpy as np
import pytest
from test_bench import _disk_image, fake_backend

from napari_hybridseg.cli import main
from napari_hybridseg.core.bench import protocol as P


@pytest.fixture
def folder_dataset(tmp_path):
    root = tmp_path / "ds"
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    for i in range(20):
        img, mask = _disk_image(rng, 40, 48)
        iio.imwrite(root / "images" / f"case{i:02d}.png", img)
        iio.imwrite(root / "masks" / f"case{i:02d}.png", mask * 255)
    return root


def test_bench_command_writes_results_and_report_and_says_where(folder_dataset, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(P, "default_backend", lambda device, values: fake_backend())
    out = tmp_path / "bench"
    argv = ["bench", str(folder_dataset), "--layout", "folder", "--out", str(out), "--steps", "4",
            "--strong-fraction", "0.25", "--arms", "strong-only,naive,dii", "--note", "fake trainer"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    assert f"results: {out / 'results.json'}" in printed.out and "report.md" in printed.out
    results = json.loads((out / "results.json").read_text())
    assert set(results["arms"]) == {"strong-only", "naive", "dii"}
    assert results["settings"]["steps"] == 4 and results["settings"]["layout"] == "folder"
    assert "fake trainer" in (out / "report.md").read_text()
    # rerun: every arm is finished, nothing trains again
    assert main(argv) == 0
    assert "already finished" in capsys.readouterr().err
    (out / "report.md").unlink()
    assert main(["bench", "--out", str(out), "--report-only"]) == 0
    assert (out / "report.md").is_file()


def test_bench_command_reports_a_missing_dataset_in_one_line(tmp_path, capsys):
    assert main(["bench", str(tmp_path / "nope"), "--layout", "folder", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("hybridseg: error:") and "not found" in err


def test_bench_command_needs_a_dataset_and_layout_unless_only_redrawing(tmp_path, capsys):
    assert main(["bench", "--out", str(tmp_path / "o")]) == 2
    assert "--layout" in capsys.readouterr().err


def test_bench_command_rejects_an_unknown_arm(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["bench", str(tmp_path), "--layout", "folder", "--out", str(tmp_path / "o"), "--arms", "naive,best"])
    assert "unknown arm" in capsys.readouterr().err


def test_bench_set_passes_training_settings_to_every_arm_and_records_them(folder_dataset, tmp_path, monkeypatch):
    monkeypatch.setattr(P, "default_backend", lambda device, values: fake_backend())
    out = tmp_path / "bench"
    argv = ["bench", str(folder_dataset), "--layout", "folder", "--out", str(out), "--steps", "2",
            "--strong-fraction", "0.25", "--arms", "strong-only,full", "--set", "pixel_weights_fix_certain=true",
            "--set", "cps_lambda=2.5"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["settings"]["overrides"] == {"pixel_weights_fix_certain": True, "cps_lambda": 2.5}
    assert results["settings"]["base_config"]["pixel"]["fix_certain"] is True


def test_bench_set_refuses_an_unknown_setting_in_one_line(tmp_path, capsys):
    assert main(["bench", str(tmp_path), "--layout", "folder", "--out", str(tmp_path / "o"),
                 "--set", "learning_speed=9"]) == 2
    err = capsys.readouterr().err
    assert "learning_speed" in err and "Traceback" not in err


def test_the_cli_offers_the_benchmarks_own_arms_presets_and_layouts():
    from napari_hybridseg.cli import bench_cmd, speed_cmd, train_cmd
    from napari_hybridseg.core import bench
    from napari_hybridseg.core.bench import arms, presets
    from napari_hybridseg.core.data.importers import LAYOUTS as IMPORT_LAYOUTS
    from napari_hybridseg.core.training.config import ARCHITECTURES
    from napari_hybridseg.core.training.config import PRESETS as CONFIG_PRESETS

    assert bench_cmd.ARMS is bench.ARMS is P.ARMS is arms.ARMS == tuple(arms.ARM_SWITCHES)
    assert set(bench_cmd.PRESETS) == set(presets.BENCH_PRESETS) | set(presets.ALIASES)
    assert set(bench_cmd.LAYOUTS) <= set(IMPORT_LAYOUTS) and "images" not in bench_cmd.LAYOUTS
    assert speed_cmd.ARMS is arms.SPEED_ARMS
    assert train_cmd.ARCHS is ARCHITECTURES and set(train_cmd.PRESETS) == set(CONFIG_PRESETS)


def test_speed_runs_train_on_a_recipe_of_the_one_synthetic_factory():
    from napari_hybridseg.cli.speed_cmd import synthetic_collection

    c = synthetic_collection(2, 3, 32, seed=0)
    assert [s.role.value for s in c] == ["strong"] * 2 + ["weak"] * 3
    assert all(s.image.shape == (32, 32, 3) and s.reference_mask is None for s in c)
    again = synthetic_collection(2, 3, 32, seed=0)
    assert all(np.array_equal(a.image, b.image) for a, b in zip(c, again))
