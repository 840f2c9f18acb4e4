"""The lab scripts in ``benchmarks/`` (outside the package) still run: moved from tests/test_pixel_weights.py
with ``core/pw_speed.py`` (issue 11)."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_speed_script_times_the_plain_and_exact_steps():
    pytest.importorskip("segmentation_models_pytorch")
    from pw_speed import measure

    res = measure(("plain", "exact-shared"), size=64, batch=4, n_strong=2, warmup=0, steps=1)
    assert set(res) == {"plain", "exact-shared"}
    assert all(wall > 0 and cpu > 0 for wall, cpu in res.values())
    with pytest.raises(ValueError, match="unknown mode"):
        measure(("fast",))


def test_quality_experiment_reports_weight_mass_on_corrupted_box_pixels():
    from pw_speed import box_collection, quality_run

    d = box_collection(seed=0)
    assert d["corrupted"].any() and d["wrong"].any()
    # outside every box is certain background, and y~ there is background
    assert (d["init"][d["certain"]] == 0).all()
    res = quality_run(steps=2, seed=0, teacher="mse", last_layer_every=1)
    assert 0 < res["wrong_share"] < 1 and 0 <= res["dice_test"] <= 1
    assert not res["w_mass_on_wrong"] > 1 and not res["w_mass_on_wrong"] < 0  # NaN when no weight was positive
    assert -1 <= res["last_layer_corr"] <= 1
    base = quality_run(weights="uniform", steps=1, seed=0)
    assert base["w_mass_on_wrong"] == pytest.approx(base["wrong_share"], rel=1e-5)


def test_the_package_does_not_import_the_lab_scripts():
    root = Path(__file__).resolve().parents[1] / "napari_hybridseg"
    users = [p for p in root.rglob("*.py") if "import pw_speed" in p.read_text() or ".pw_speed import" in p.read_text()]
    assert not users, users
