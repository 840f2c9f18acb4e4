"""``hybridseg import``, ``info`` and ``sample-data``: what a user types and reads."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from napari_hybridseg.cli import main
from napari_hybridseg.core.data.store import load_project

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def folder_dataset(tmp_path) -> Path:
    rng = np.random.default_rng(0)
    rr, cc = np.mgrid[0:32, 0:32]
    for i in range(10):
        (tmp_path / "ds" / "images").mkdir(parents=True, exist_ok=True)
        (tmp_path / "ds" / "masks").mkdir(exist_ok=True)
        cy, cx = rng.integers(10, 22, 2)
        disk = (rr - cy) ** 2 + (cc - cx) ** 2 <= 36
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ds" / "images" / f"{i}.png")
        Image.fromarray((disk * 255).astype(np.uint8)).save(tmp_path / "ds" / "masks" / f"{i}_mask.png")
    return tmp_path / "ds"


def _info(project: Path, capsys) -> dict:
    capsys.readouterr()
    assert main(["info", str(project), "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_import_then_info(folder_dataset, tmp_path, capsys):
    project = tmp_path / "p"
    assert main(["import", "--layout", "folder", str(folder_dataset), str(project)]) == 0
    assert "wrote" in capsys.readouterr().out
    assert _info(project, capsys) == {"samples": 10, "strong": 10, "weak": 0, "unlabeled": 0, "boxes": 0,
                                      "points": 0, "tags": 0, "classes": 1, "corrupted": 0}


def test_hybrid_import_with_noise(folder_dataset, tmp_path, capsys):
    project = tmp_path / "p"
    args = ["import", "--layout", "folder", str(folder_dataset), str(project), "--strong-fraction", "0.2",
            "--weak", "point", "--noise", "0.25", "--seed", "3"]
    assert main(args) == 0
    counts = _info(project, capsys)
    assert counts["strong"] == 2 and counts["weak"] == 8 and counts["points"] == 8 and counts["corrupted"] == 2
    hybrid = load_project(project).meta["hybrid"]
    assert hybrid["seed"] == 3 and hybrid["weak"] == "point" and hybrid["noise"] == 0.25
    # the same command again (elsewhere) gives the same project
    assert main([*args[:4], str(tmp_path / "q"), *args[5:]]) == 0
    assert (tmp_path / "q" / "project.json").read_text() == (project / "project.json").read_text()


def test_copy_images_makes_a_self_contained_project(folder_dataset, tmp_path):
    assert main(["import", "--layout", "images", str(folder_dataset), str(tmp_path / "p"), "--copy-images"]) == 0
    assert len(list((tmp_path / "p" / "images").iterdir())) == 10


def test_info_prints_a_readable_summary(capsys):
    from napari_hybridseg.core.data.sample_data import sample_project_path

    assert main(["info", str(sample_project_path())]) == 0
    out = capsys.readouterr().out
    assert "samples    40" in out and "polyp (=1), scleral spur (=2)" in out and "no polyp (absent)" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["import", "--layout", "folder", "{missing}", "{out}"], "no such dataset folder"),
        (["import", "--layout", "busi", "{ds}", "{out}"], "not class folders; use layout 'folder'"),
        (["import", "--layout", "folder", "{ds}", "{out}", "--noise", "0.3"], "--noise needs --strong-fraction"),
        (["info", "{missing}"], "no such project folder"),
    ],
)
def test_errors_are_one_line_with_nonzero_exit(argv, message, folder_dataset, tmp_path, capsys):
    subs = {"{missing}": str(tmp_path / "nope"), "{out}": str(tmp_path / "out"), "{ds}": str(folder_dataset)}
    code = main([subs.get(a, a) for a in argv])
    err = capsys.readouterr().err
    assert code != 0 and message in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


def test_import_refuses_to_overwrite_a_project(folder_dataset, tmp_path, capsys):
    project = tmp_path / "p"
    assert main(["import", "--layout", "folder", str(folder_dataset), str(project)]) == 0
    assert main(["import", "--layout", "folder", str(folder_dataset), str(project)]) == 2
    assert "already holds a project; choose an empty folder or pass --force" in capsys.readouterr().err
    assert main(["import", "--layout", "folder", str(folder_dataset), str(project), "--force",
                 "--strong-fraction", "0.5"]) == 0


def test_bad_fraction_is_refused_by_the_parser(folder_dataset, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["import", "--layout", "folder", str(folder_dataset), str(tmp_path / "p"), "--strong-fraction", "2"])
    assert info.value.code == 2 and "not in [0, 1]" in capsys.readouterr().err


def test_sample_data_verb_regenerates_the_demo(tmp_path, capsys):
    assert main(["sample-data", str(tmp_path / "demo")]) == 0
    assert load_project(tmp_path / "demo").counts()["samples"] == 40


def test_console_script_runs_as_a_module(tmp_path):
    out = subprocess.run([sys.executable, "-m", "napari_hybridseg.cli", "info", str(tmp_path / "nope")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and out.stderr.startswith("hybridseg: error:")


@pytest.mark.shared_data
def test_real_kvasir_hybrid_import(tmp_path, capsys):
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    project = tmp_path / "p"
    assert main(["import", "--layout", "kvasir", str(SHARED_DATA / "Kvasir-SEG"), str(project),
                 "--strong-fraction", "0.1", "--weak", "box"]) == 0
    counts = _info(project, capsys)
    assert counts["samples"] == 1000 and counts["strong"] == 100 and counts["weak"] == 900
    loaded = load_project(project)
    assert all(s.boxes for s in loaded.weak)  # every weak image has its dataset boxes
    assert all(s.reference_mask is not None for s in loaded.weak)
    assert sum(len(s.boxes) for s in loaded) == 963  # the weak images' dataset boxes
    assert loaded.meta["import"]["masks"] == {"mode": "binary", "threshold": 127}


@pytest.mark.shared_data
def test_real_busi_import_keeps_its_tags(tmp_path, capsys):
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not available")
    project = tmp_path / "p"
    assert main(["import", "--layout", "busi", str(SHARED_DATA / "BUSI"), str(project)]) == 0
    counts = _info(project, capsys)
    assert counts["samples"] == 780 and counts["tags"] == 780 and counts["strong"] == 780


def test_masks_option_and_threshold_on_the_command_line(tmp_path, capsys):
    from scipy.ndimage import gaussian_filter

    rr, cc = np.mgrid[0:32, 0:32]
    (tmp_path / "ds" / "images").mkdir(parents=True)
    (tmp_path / "ds" / "masks").mkdir()
    disk = ((rr - 16) ** 2 + (cc - 16) ** 2 <= 64) * 255.0
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "ds" / "images" / "a.png")
    Image.fromarray(np.rint(gaussian_filter(disk, 2)).astype(np.uint8)).save(tmp_path / "ds" / "masks" / "a.png")
    assert main(["import", "--layout", "folder", str(tmp_path / "ds"), str(tmp_path / "p")]) == 0
    err = capsys.readouterr().err
    assert "note: masks read as binary" in err and "soft-edged" in err
    assert load_project(tmp_path / "p").classes[0].name == "lesion"
    assert main(["import", "--layout", "folder", str(tmp_path / "ds"), str(tmp_path / "q"), "--masks", "binary",
                 "--mask-threshold", "10"]) == 0
    assert load_project(tmp_path / "q")["a"].mask.sum() > load_project(tmp_path / "p")["a"].mask.sum()
    assert main(["import", "--layout", "folder", str(tmp_path / "ds"), str(tmp_path / "r"), "--masks", "labels"]) == 0
    assert len(load_project(tmp_path / "r").classes) > 10
