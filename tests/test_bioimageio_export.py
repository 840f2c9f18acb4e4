"""``hybridseg export RUN --bioimageio OUT.zip``: a package bioimage.io's own tools validate and reproduce."""

from __future__ import annotations

import json
import zipfile

import pytest
import torch
from _hybrid_data import make_collection

from napari_hybridseg.cli import main

pytest.importorskip("bioimageio.core")
pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_export_writes_a_package_that_validates_and_reproduces_its_test_output(tmp_path, capsys):
    from napari_hybridseg.core.data.store import save_project
    from napari_hybridseg.core.prediction.bioimageio_export import CITATIONS, check_package

    project = save_project(make_collection(n_strong=2, n_weak=3, n_corrupt=1, size=40), tmp_path / "proj")
    run = tmp_path / "run"
    assert main(["train", str(project), "--out", str(run), "--steps", "2", "--size", "32", "--batch-size", "2",
                 "--no-dcr", "--dii-tau", "1", "--quiet", "--no-save-weights"]) == 0
    out_zip = tmp_path / "model.zip"
    assert main(["export", str(run), "--bioimageio", str(out_zip), "--author", "A. Tester", "--test"]) == 0
    printed = capsys.readouterr().out
    assert "validates with bioimageio.spec" in printed and "reproduces the test output" in printed
    assert check_package(out_zip, reproduce=True) == ""  # bioimageio.spec validates, bioimageio.core reproduces
    with zipfile.ZipFile(out_zip) as z:
        names = set(z.namelist())
        rdf = z.read("rdf.yaml").decode()
        gamma = json.loads(z.read("gamma.json"))
    assert {"gamma.json", "run.json", "model.safetensors", "weights_torchscript.pt", "test_input.npy",
            "test_output.npy"} <= names
    assert gamma == json.loads((run / "gamma.json").read_text())  # the learned per-image weights travel along
    for _, doi in CITATIONS:
        assert doi in rdf
    assert "background" in rdf and "lesion" in rdf  # the class list names the output's channels


def test_export_of_a_folder_that_is_no_run_says_so(tmp_path, capsys):
    assert main(["export", str(tmp_path), "--bioimageio", str(tmp_path / "m.zip")]) == 2
    assert "not a run folder" in capsys.readouterr().err
