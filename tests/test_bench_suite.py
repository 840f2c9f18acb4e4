"""Seeds and strong fractions: every arm at every seed, the summary over them, the CLI (fake trainer, no torch)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_bench import FakeTrainer, _prepared, _settings, fake_backend, synthetic_collection
from test_bench_cli import folder_dataset  # noqa: F401 (fixture)

from napari_hybridseg.cli import main
from napari_hybridseg.core.bench import protocol as P
from napari_hybridseg.core.bench import suite as S
from napari_hybridseg.core.bench.report import write_report
from napari_hybridseg.core.data.hybridize import make_hybrid


def test_the_seed_changes_split_label_budget_and_corruption_and_the_same_seed_repeats_them(tmp_path):
    def prep(seed):
        settings = _settings(tmp_path, seed=seed, strong_fraction=0.2, noise=0.4)
        return P.prepare_collection(synthetic_collection(40), settings, hybridize=make_hybrid, log=lambda m: None)

    a, a2, b = prep(0), prep(0), prep(1)
    assert a.split.test == a2.split.test and a.strong == a2.strong and a.corrupted == a2.corrupted
    assert set(a.split.test) != set(b.split.test)
    assert set(a.corrupted) != set(b.corrupted) or a.corrupted != b.corrupted
    # training initialisation follows the seed too
    assert _settings(tmp_path, seed=1).base_config().seed == 1


def test_suite_runs_every_arm_at_every_seed_and_fraction_and_summarises_with_paired_intervals(tmp_path):
    settings = _settings(tmp_path)
    trainer = FakeTrainer()
    res = S.run_suite(settings, [0, 1], [0.2, 0.3], expensive_seeds=1, backend=fake_backend(trainer),
                      prepared_for=_prepared, log=lambda m: None, command_line="hybridseg bench suite-test",
                      run_reports=False)
    out = Path(settings.out)
    plan = json.loads((out / "suite.json").read_text())
    assert [(r["seed"], r["fraction"]) for r in plan["runs"]] == [(0, 0.2), (1, 0.2), (0, 0.3), (1, 0.3)]
    # the expensive arms on the first seed only, every other arm everywhere
    for r in plan["runs"]:
        arms = json.loads((out / r["folder"] / "results.json").read_text())["arms"]
        expect = set(P.ARMS) if r["seed"] == 0 else set(P.ARMS) - {"dii+dcr", "full"}
        assert set(arms) == expect
        split = json.loads((out / r["folder"] / "split.json").read_text())
        assert split["seed"] == r["seed"]
    assert len(trainer.calls) == 2 * (8 + 6)
    assert {c["steps"] for _, c in trainer.calls} == {6}  # one budget for all runs
    f = res["fractions"]["0.2"]
    assert f["seeds"] == [0, 1] and f["arms"]["dii"]["seeds"] == [0, 1] and f["arms"]["full"]["seeds"] == [0]
    assert f["arms"]["dii"]["dice_mean"] == pytest.approx(1.0) and len(f["arms"]["dii"]["dice_per_seed"]) == 2
    pairs = {(p["a"], p["b"]): p for p in f["paired"]}
    assert pairs[("dii", "fixed")]["n_seeds"] == 2 and pairs[("full", "naive")]["n_seeds"] == 1
    assert "gamma (dii)" in f["weights"]["rows"] and "agreement" in f["weights"]["rows"]

    text = write_report(out).read_text()
    for needle in ("## Strong fraction 0.2", "## Strong fraction 0.3", "## Share of the gap closed, by strong fraction",
                   "seeds 0, 1", "first 1 seed(s) only", "convergence.png", "seed0-sf0.2", "hybridseg bench suite-test",
                   "| gamma (dii) |", "### Targets"):
        assert needle in text, needle
    # a resumed suite trains nothing again
    again = FakeTrainer()
    S.run_suite(settings, [0, 1], [0.2, 0.3], expensive_seeds=1, backend=fake_backend(again),
                prepared_for=_prepared, log=lambda m: None, run_reports=False)
    assert again.calls == []


def test_bench_command_with_seeds_and_fractions_writes_a_suite(folder_dataset, tmp_path, monkeypatch, capsys):  # noqa: F811
    monkeypatch.setattr(P, "default_backend", lambda device, values: fake_backend())
    out = tmp_path / "bench"
    argv = ["bench", str(folder_dataset), "--layout", "folder", "--out", str(out), "--steps", "3",
            "--seeds", "0,1", "--strong-fraction", "0.25,0.4",
            "--arms", "strong-only,naive,fixed,dii,oracle,all-strong",
            "--preset", "cpu-quick"]
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "suite" and set(results["fractions"]) == {"0.25", "0.4"}
    assert results["suite"]["preset"] == "quick"  # the old name still works
    text = (out / "report.md").read_text()
    assert "| `oracle` |" in text and "| `fixed` |" in text
    assert (out / "seed1-sf0.4" / "report.md").is_file()  # each run's own report
    (out / "report.md").unlink()
    assert main(["bench", "--out", str(out), "--report-only"]) == 0 and (out / "report.md").is_file()
    assert main(argv[:-2] + ["--seed", "3"]) == 2
    assert "--seeds or --seed" in capsys.readouterr().err


def test_simulated_points_on_a_masked_dataset_are_corrupted_recorded_and_scored_by_the_baselines(tmp_path):
    from test_bench import ThresholdPredictor

    from napari_hybridseg.core.bench.baselines import measure_baselines

    settings = _settings(tmp_path, weak="point", strong_fraction=0.2, noise=0.4)
    prep = P.prepare_collection(synthetic_collection(40), settings, hybridize=make_hybrid, log=lambda m: None)
    weak = [prep.collection[i] for i in prep.weak]
    assert weak and all(s.points and not s.boxes and s.meta.get("simulated_points") for s in weak)
    assert prep.corrupted and set(prep.corrupted.values()) == {"moved_outside"}
    train = prep.train
    rec = measure_baselines(train, prep.weak, prep.corrupted, strong_only_predictor=ThresholdPredictor(),
                            predict_all=P._predict_all)
    # a prediction that finds every disk puts each clean click inside it and each moved one outside
    assert rec["quality"]["agreement"]["auroc"] == pytest.approx(1.0)
    assert rec["missing"] == ["naive_loss"]
