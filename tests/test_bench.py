"""The benchmark protocol on a tiny synthetic dataset, with a fake trainer (seconds, no torch)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from napari_hybridseg.core.bench import protocol as P
from napari_hybridseg.core.bench.report import write_report
from napari_hybridseg.core.bench.split import (
    merge_groups,
    near_duplicate_groups,
    read_groups_csv,
    split_ids,
    thumbnail,
)
from napari_hybridseg.core.data.collection import Box, Collection, Role, Sample
from napari_hybridseg.core.supervision.targets import IGNORE, make_targets
from napari_hybridseg.core.training.reports import (
    CheckpointReport,
    DoneReport,
    PreviewReport,
    RequestPreview,
    StartReport,
    StepReport,
    WeightsReport,
)


# -- synthetic data ---------------------------------------------------------
def _disk_image(rng: np.random.Generator, h: int, w: int) -> tuple[np.ndarray, np.ndarray]:
    r = int(rng.integers(5, 9))
    cy, cx = int(rng.integers(r + 1, h - r - 1)), int(rng.integers(r + 1, w - r - 1))
    yy, xx = np.mgrid[0:h, 0:w]
    mask = ((yy - cy) ** 2 + (xx - cx) ** 2 <= r * r).astype(np.uint8)
    img = (40 + 160 * mask + rng.integers(0, 30, (h, w))).astype(np.uint8)
    return img, mask


def synthetic_collection(n: int = 30, seed: int = 0) -> Collection:
    """Grey images of different sizes with one bright disk each; masks everywhere; groups of 3 for ids 0..8."""
    rng = np.random.default_rng(seed)
    col = Collection()
    for i in range(n):
        h, w = (40, 48) if i % 2 else (36, 44)
        img, mask = _disk_image(rng, h, w)
        col.add(Sample(id=f"img{i:02d}", image=img, mask=mask, group=f"patient{i // 3}" if i < 9 else None))
    return col


def _mask_box(mask: np.ndarray) -> Box:
    rows, cols = np.nonzero(mask)
    return Box(cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def fake_hybridize(collection, *, strong_fraction, weak, noise, seed, ids):
    """Keep masks for a fraction of ``ids``, boxes for the rest, shift a fraction of boxes off the object."""
    rng = np.random.default_rng(seed)
    ids = sorted(ids)
    order = [ids[i] for i in rng.permutation(len(ids))]
    n_strong = max(1, int(round(strong_fraction * len(ids))))
    weak_ids = order[n_strong:]
    bad = set(weak_ids[: int(round(noise * len(weak_ids)))])
    for sid in weak_ids:
        s = collection[sid]
        s.reference_mask, s.mask = s.mask, None
        box = _mask_box(s.reference_mask)
        if sid in bad:
            h, w = s.reference_mask.shape
            bw, bh = box.x1 - box.x0, box.y1 - box.y0
            x0 = 0.0 if box.x0 > bw else float(w - bw)  # the side of the image the object is not on
            y0 = 0.0 if box.y0 > bh else float(h - bh)
            box = Box(x0, y0, x0 + bw, y0 + bh)
            s.corrupted, s.corruption = True, "shifted"
        s.boxes = [box]
    return collection


class FakeTrainer:
    """Mimics the trainer generator: reports, a WeightsReport every 2 steps, previews on request."""

    def __init__(self, step_s: float = 0.0):
        self.calls: list[tuple[int, dict]] = []
        self.step_s = step_s

    def __call__(self, collection, config, run_dir):
        self.calls.append((len(collection), config.to_dict()))
        return self._gen(collection, config, run_dir)

    def _gen(self, collection, config, run_dir):
        weak = [s for s in collection if s.role is Role.WEAK]
        run_dir = Path(run_dir) if run_dir is not None else None
        yield StartReport(device="cpu (fake)", total_steps=config.steps, start_step=0, n_strong=len(collection.strong),
                          n_weak=len(weak), n_unlabeled=0, run_dir=str(run_dir))
        pending = None
        for step in range(1, config.steps + 1):
            time.sleep(self.step_s)
            cmd = yield StepReport(step=step, total_steps=config.steps, losses={"total": 1.0 / step}, lr=1e-3,
                                   sec_per_step=0.0, eta_s=0.0, device="cpu (fake)")
            if isinstance(cmd, RequestPreview):
                pending = cmd.sample_ids
            if run_dir is not None and config.checkpoint_every and step % config.checkpoint_every == 0 \
                    and step < config.steps:
                yield CheckpointReport(step=step, path=str(run_dir))
            if config.dii and step % 2 == 0 and weak:
                # the fake cheats (reads `corrupted`) so the protocol's bookkeeping can be checked exactly
                yield WeightsReport(step=step, sample_weights={
                    s.id: (0.5 - 0.02 * step if s.corrupted else 0.5 + 0.02 * step) for s in weak})
        if pending:
            pw = {}
            for sid in pending:
                s = collection[sid]
                shape = s.reference_mask.shape
                init = make_targets(s, collection, shape, original_shape=shape).init_label
                w = np.where(init == s.reference_mask.astype(np.int64), 1.0, 0.25)
                pw[sid] = (w, np.ones(shape))
            yield PreviewReport(step=config.steps, labels={}, probabilities={}, pixel_weights=pw)
        if run_dir is not None:
            (run_dir / "model.txt").write_text("fake")
        yield DoneReport(step=config.steps, reason="finished", checkpoint=str(run_dir) if run_dir else None,
                         wall_s=0.0)


class ThresholdPredictor:
    """Predicts foreground where the image is bright: Dice 1 on the synthetic disks."""

    def predict(self, image):
        labels = (np.asarray(image) > 150).astype(np.uint8)
        return labels, labels.astype(np.float32)


def fake_sample_losses(run_dir, collection, ids, config):
    """The fake naive model's weak loss: high on the corrupted labels (it cheats, to check the bookkeeping)."""
    return {i: 1.0 if collection[i].corrupted else 0.1 for i in ids}


def fake_backend(trainer: FakeTrainer | None = None) -> P.Backend:
    return P.Backend(train=trainer or FakeTrainer(), load_predictor=lambda run_dir: ThresholdPredictor(), name="fake",
                     sample_losses=fake_sample_losses)


def _settings(tmp_path: Path, **kw) -> P.BenchSettings:
    base = {"dataset": str(tmp_path / "data"), "layout": "folder", "out": str(tmp_path / "out"), "steps": 6,
            "strong_fraction": 0.2, "noise": 0.4, "n_boot": 200, "grid_images": 3}
    base.update(kw)
    return P.BenchSettings(**base)


def _prepared(settings: P.BenchSettings, n: int = 30) -> P.Prepared:
    return P.prepare_collection(synthetic_collection(n), settings, hybridize=fake_hybridize, log=lambda m: None)


# -- split ------------------------------------------------------------------
def test_split_parts_are_disjoint_cover_every_id_and_hit_70_10_20():
    ids = [f"s{i}" for i in range(100)]
    sp = split_ids(ids, seed=3)
    parts = [set(sp.train), set(sp.val), set(sp.test)]
    assert (len(sp.train), len(sp.val), len(sp.test)) == (70, 10, 20)
    assert set().union(*parts) == set(ids)
    assert sum(len(p) for p in parts) == len(ids)


def test_split_is_seeded_and_independent_of_id_order():
    ids = [f"s{i}" for i in range(50)]
    a, b = split_ids(ids, seed=1), split_ids(list(reversed(ids)), seed=1)
    assert (a.train, a.val, a.test) == (b.train, b.val, b.test)
    assert set(split_ids(ids, seed=2).test) != set(a.test)


def test_split_never_lets_a_group_straddle_parts():
    ids = [f"s{i:02d}" for i in range(60)]
    groups = {sid: f"g{i // 4}" for i, sid in enumerate(ids)}  # 15 groups of 4
    sp = split_ids(ids, seed=0, groups=groups)
    for g in set(groups.values()):
        members = [i for i in ids if groups[i] == g]
        assert len({sp.part_of(m) for m in members}) == 1, g
    assert len(sp.test) % 4 == 0 and len(sp.test) > 0 and len(sp.val) > 0
    assert len(sp.groups) == 60


def test_merge_groups_links_ids_through_any_grouping():
    out = merge_groups(["a", "b", "c", "d"], {"a": "p1", "b": "p1"}, {"b": "dup", "c": "dup"})
    assert out["a"] == out["b"] == out["c"] != out["d"]


def test_groups_csv_accepts_a_header_and_reports_bad_rows(tmp_path):
    good = tmp_path / "g.csv"
    good.write_text("image_id,patient\nimg1,p1\nimg2,p1\n\n# comment\nimg3,p2\n")
    assert read_groups_csv(good) == {"img1": "p1", "img2": "p1", "img3": "p2"}
    bad = tmp_path / "bad.csv"
    bad.write_text("img1,p1\nimg2\n")
    with pytest.raises(ValueError, match=r"bad.csv:2"):
        read_groups_csv(bad)
    with pytest.raises(FileNotFoundError, match="groups CSV not found"):
        read_groups_csv(tmp_path / "none.csv")


def test_near_duplicate_guard_groups_a_resaved_copy_but_not_distinct_images():
    rng = np.random.default_rng(0)
    # smooth pictures (as real frames are): coarse random blocks
    a = rng.integers(0, 255, (8, 10)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    a_copy = np.clip(a[::2, ::2].repeat(2, 0).repeat(2, 1).astype(int) + rng.integers(-3, 4, a.shape), 0, 255)
    b = rng.integers(0, 255, (8, 10)).repeat(8, 0).repeat(8, 1).astype(np.uint8)
    groups = near_duplicate_groups({"a": thumbnail(a), "a_copy": thumbnail(a_copy), "b": thumbnail(b)})
    assert groups["a"] == groups["a_copy"]
    assert "b" not in groups


# -- metrics against hand-computed values ----------------------------------------
def test_evaluate_masks_matches_hand_computed_dice_iou_and_nonempty_mean():
    preds = {"x": np.array([[1, 1], [0, 0]]), "y": np.zeros((2, 2), int)}
    truths = {"x": np.array([[1, 0], [0, 0]]), "y": np.zeros((2, 2), int)}
    ev = P.evaluate_masks(preds, truths, n_boot=500)
    assert ev["per_image"]["x"] == {"dice": pytest.approx(2 / 3), "iou": pytest.approx(1 / 2)}
    assert ev["dice"] == pytest.approx((2 / 3 + 1) / 2)
    assert ev["iou"] == pytest.approx(0.75)
    assert ev["dice_nonempty"] == pytest.approx(2 / 3)
    assert 2 / 3 <= ev["dice_ci"][0] <= ev["dice_ci"][1] <= 1.0


def test_evaluate_masks_refuses_predictions_not_at_original_size():
    with pytest.raises(ValueError, match="original size"):
        P.evaluate_masks({"x": np.zeros((4, 4))}, {"x": np.zeros((8, 8))})


def test_gamma_quality_matches_hand_computed_auroc_and_means():
    gamma = {"a": 0.9, "b": 0.8, "c": 0.1, "d": 0.85}
    q = P.gamma_quality(gamma, {"c": "shifted", "d": "inflated"})
    # clean (a, b) above corrupted (c, d) in 3 of the 4 pairs (b < d)
    assert q["gamma_auroc"] == pytest.approx(0.75)
    assert q["gamma_mean_clean"] == pytest.approx(0.85)
    assert q["gamma_mean_corrupted"] == pytest.approx(0.475)
    assert q["gamma_mean_by_corruption"] == {"inflated": pytest.approx(0.85), "shifted": pytest.approx(0.1)}


def test_pixel_weight_ratio_is_mean_on_wrong_over_mean_on_right_pixels():
    init = np.array([[1, 1, 0], [IGNORE, 0, 0]])
    truth = np.array([[1, 0, 0], [1, 0, 1]])
    w = np.array([[4.0, 1.0, 2.0], [9.0, 2.0, 0.5]])
    # wrong: (0,1) w=1 and (1,2) w=0.5 -> 0.75; right: (0,0) 4, (0,2) 2, (1,1) 2 -> 8/3; (1,0) ignored
    r = P.pixel_weight_ratio({"s": w}, {"s": init}, {"s": truth})
    assert r["pixels_wrong"] == 2 and r["pixels_right"] == 3
    assert r["pixel_weight_wrong_vs_right"] == pytest.approx(0.75 / (8 / 3))
    learned = {"s": np.array([[True, True, False], [True, True, True]])}
    r2 = P.pixel_weight_ratio({"s": w}, {"s": init}, {"s": truth}, learned)
    assert r2["pixel_weight_mean_right"] == pytest.approx(3.0)


# -- arms -------------------------------------------------------------------
def test_arms_share_architecture_size_steps_and_seed_and_differ_in_method_only():
    base = _settings(Path("/tmp/x"), seed=7).base_config()
    cfgs = {a: P.arm_config(base, a, weak_ids=["w1", "w2"], corrupted={"w2": "shifted"}) for a in P.ARMS}
    shared = {(c.model.to_dict().__repr__(), c.steps, c.batch_size, c.seed, c.lr) for c in cfgs.values()}
    assert len(shared) == 1
    assert cfgs["naive"].dii.enabled is False and cfgs["naive"].dcr.enabled is False
    assert cfgs["dii"].dii.enabled is True and cfgs["dii"].dcr.enabled is False
    assert cfgs["dii+dcr"].dcr.enabled is True and cfgs["dii+dcr"].pixel_weights == "off"
    assert cfgs["full"].pixel_weights == "exact" and cfgs["full"].ple and cfgs["full"].teacher
    assert cfgs["naive"].dii_init == 1.0  # naive trusts every weak label fully
    assert cfgs["dii"].dii_init == base.dii_init
    assert cfgs["strong-only"].to_dict() == cfgs["all-strong"].to_dict()
    assert cfgs["fixed"].fixed_weights == {"w1": 0.5, "w2": 0.5}
    assert cfgs["oracle"].fixed_weights == {"w1": 1.0, "w2": 0.0}
    assert all(cfgs[a].fixed_weights is None for a in P.ARMS if a not in ("fixed", "oracle"))


def test_arm_collections_drop_weak_for_strong_only_and_restore_truth_for_all_strong(tmp_path):
    prep = _prepared(_settings(tmp_path))
    train = prep.train
    so = P.arm_collection(train, "strong-only")
    assert set(so.ids) == set(prep.strong) and all(s.role is Role.STRONG for s in so)
    allst = P.arm_collection(train, "all-strong")
    assert set(allst.ids) == set(prep.split.train)
    for s in allst:
        truth = train[s.id].mask if train[s.id].mask is not None else train[s.id].reference_mask
        assert s.role is Role.STRONG and np.array_equal(s.mask, truth) and not s.corrupted
    naive = P.arm_collection(train, "naive")
    assert {s.id for s in naive.weak} == set(prep.weak)
    assert train[prep.weak[0]].mask is None  # the arm's copies never modify the hybrid set


# -- the protocol end to end ------------------------------------------------------
def test_corruption_is_recorded_only_in_train_weak_ids_and_applied(tmp_path):
    prep = _prepared(_settings(tmp_path))
    assert prep.corrupted and set(prep.corrupted) <= set(prep.weak) <= set(prep.split.train)
    assert len(prep.corrupted) == round(0.4 * len(prep.weak))
    for sid in prep.split.val + prep.split.test:
        s = prep.collection[sid]
        assert s.mask is not None and not s.corrupted
    for sid in prep.corrupted:  # a shifted box covers none of the object
        s = prep.collection[sid]
        b = s.boxes[0]
        assert s.reference_mask[int(b.y0):int(b.y1), int(b.x0):int(b.x1)].sum() == 0


def test_prepare_keeps_groups_whole_across_the_split(tmp_path):
    prep = _prepared(_settings(tmp_path))
    for g in range(3):
        members = [f"img{i:02d}" for i in range(3 * g, 3 * g + 3)]
        assert len({prep.split.part_of(m) for m in members}) == 1


def test_prepare_refuses_a_dataset_with_unlabelled_images(tmp_path):
    col = synthetic_collection(6)
    col["img03"].mask = None
    with pytest.raises(ValueError, match="fully labelled"):
        P.prepare_collection(col, _settings(tmp_path), hybridize=fake_hybridize, log=lambda m: None)


def test_benchmark_writes_every_arm_results_report_and_figures(tmp_path):
    settings = _settings(tmp_path)
    trainer = FakeTrainer()
    results = P.run_benchmark(settings, backend=fake_backend(trainer), prepared=_prepared(settings),
                              log=lambda m: None, command_line="hybridseg bench test")
    out = Path(settings.out)
    on_disk = json.loads((out / "results.json").read_text())
    assert set(on_disk["arms"]) == set(P.ARMS) == set(results["arms"])
    assert on_disk["settings"]["versions"]["numpy"] == np.__version__
    assert on_disk["device"] == "cpu (fake)"
    keys = {t["key"] for t in on_disk["targets"]}
    assert {"gap_half", "full_vs_all_strong", "dii_vs_fixed", "dii_vs_naive", "full_vs_dcr", "gamma_auroc:dii",
            "gamma_vs_baselines:full", "cost:dii/naive", "cost:full/dii+dcr", "cost:dii+dcr/dii"} <= keys
    # equal (perfect) Dice everywhere: no "at least +0.02" target can be met, and the interval says so
    assert {t["key"]: t["met"] for t in on_disk["targets"]}["dii_vs_fixed"] is False
    # the control arms' weights, as the arm trained with them
    for arm, clean, bad in (("fixed", 0.5, 0.5), ("oracle", 1.0, 0.0)):
        rec = on_disk["arms"][arm]
        assert (rec["fixed_weight_mean_clean"], rec["fixed_weight_mean_corrupted"]) == (clean, bad)
    # baselines in the same run: the fake naive loss and the (perfect) strong-only prediction find the shifted boxes
    base = on_disk["baselines"]
    assert set(base["signals"]) == {"size", "agreement", "naive_loss"} and not base["missing"]
    assert base["quality"]["agreement"]["auroc"] == pytest.approx(1.0)
    assert base["quality"]["naive_loss"]["auroc"] == pytest.approx(1.0)
    assert set(base["quality"]["agreement"]["auroc_by_kind"]) == {"shifted"}
    # convergence: validation Dice at every checkpoint of strong-only and all-strong (6 steps / 10 points -> each step)
    for arm in ("strong-only", "all-strong"):
        assert [s for s, _ in on_disk["arms"][arm]["val_curve"]] == [1, 2, 3, 4, 5]
    assert "val_curve" not in on_disk["arms"]["naive"]
    split = on_disk["split"]
    assert set(split["corrupted"]) <= set(split["weak"]) and not set(split["test"]) & set(split["train"])
    for arm, rec in on_disk["arms"].items():
        assert rec["dice"] == pytest.approx(1.0), arm  # the threshold predictor is perfect on the disks
        assert rec["steps"] == 6 and rec["sec_per_step"] >= 0 and rec["peak_mem_mb"] > 0
        assert len(rec["per_image"]) == len(split["test"])
    dii = on_disk["arms"]["dii"]
    assert dii["gamma_auroc"] == pytest.approx(1.0)
    assert dii["gamma_mean_corrupted"] == pytest.approx(0.5 - 0.12)
    assert "gamma_auroc" not in on_disk["arms"]["naive"]
    history = json.loads(P.arm_file(out, "dii").read_text())["gamma_history"]
    assert [step for step, _ in history[split["weak"][0]]] == [0, 2, 4, 6]  # initial weight, then each update
    assert on_disk["arms"]["full"]["pixel_weight_wrong_vs_right"] == pytest.approx(0.25)
    # trainer calls: strong-only sees the strong images only, all-strong every training image
    sizes = dict(zip(P.ARMS, (n for n, _ in trainer.calls)))
    assert sizes["strong-only"] == len(split["strong"]) and sizes["all-strong"] == len(split["train"])

    report = write_report(out)
    text = report.read_text()
    for name in ("dice_per_arm.png", "gamma_hist.png", "gamma_history.png", "test_grid.png", "convergence.png",
                 "weights_vs_baselines.png"):
        assert (out / name).stat().st_size > 1000 and name in text
    assert "| `full` |" in text and "not met" in text  # equal Dice everywhere: gains of 0 are not met
    for section in ("### Paired differences", "### Weights vs baselines", "### Targets", "### Cost",
                    "### Convergence", "| `fixed` |", "| `oracle` |", "| naive_loss |", "| `dii` - `fixed` |"):
        assert section in text, section
    assert "hybridseg bench test" in text


def test_rerun_with_the_same_out_skips_finished_arms(tmp_path):
    settings = _settings(tmp_path, arms=("naive", "dii"))
    first = FakeTrainer()
    P.run_benchmark(settings, backend=fake_backend(first), prepared=_prepared(settings), log=lambda m: None)
    assert len(first.calls) == 2
    done = P.arm_file(Path(settings.out), "naive")
    stamp = done.stat().st_mtime_ns
    again = FakeTrainer()
    settings2 = _settings(tmp_path, arms=("naive", "dii", "full"))
    logs: list[str] = []
    res = P.run_benchmark(settings2, backend=fake_backend(again), prepared=_prepared(settings2), log=logs.append)
    assert len(again.calls) == 1 and again.calls[0][1]["pixel"]["mode"] == "exact"
    assert done.stat().st_mtime_ns == stamp
    assert set(res["arms"]) == {"naive", "dii", "full"}
    assert any("naive: already finished" in m for m in logs)


def test_rerun_with_different_settings_in_the_same_out_is_refused(tmp_path):
    settings = _settings(tmp_path, arms=("naive",))
    P.run_benchmark(settings, backend=fake_backend(), prepared=_prepared(settings), log=lambda m: None)
    other = _settings(tmp_path, arms=("naive",), noise=0.1)
    with pytest.raises(ValueError, match="noise"):
        P.run_benchmark(other, backend=fake_backend(), prepared=_prepared(other), log=lambda m: None)


def test_bench_settings_reject_unknown_arms_and_bad_fractions(tmp_path):
    with pytest.raises(ValueError, match="unknown arm"):
        _settings(tmp_path, arms=("naive", "magic"))
    with pytest.raises(ValueError, match="noise"):
        _settings(tmp_path, noise=1.5)


def test_pre_resized_training_sample_gives_the_same_targets_as_the_original():
    col = synthetic_collection(4)
    s = col["img01"]
    s.reference_mask, s.mask = s.mask, None
    s.boxes = [Box(3.2, 5.7, 20.4, 30.1)]
    small = P.resized_sample(s, 16)
    assert small.image.shape == (16, 16, 3) and small.image.dtype == np.uint8
    assert small.meta["original_shape"] == [40, 48] and small.boxes[0].id == s.boxes[0].id
    a = make_targets(s, col, (16, 16))
    b = make_targets(small, col, (16, 16))
    assert np.array_equal(a.target, b.target) and np.array_equal(a.init_label, b.init_label)
    assert np.array_equal(a.boxes, b.boxes)


def test_real_hybridiser_records_and_applies_corruption_only_inside_train(tmp_path):
    hybridize = pytest.importorskip("napari_hybridseg.core.data.hybridize")
    settings = _settings(tmp_path, noise=0.5)
    prep = P.prepare_collection(synthetic_collection(30), settings, hybridize=hybridize.make_hybrid,
                                log=lambda m: None)
    assert set(prep.corrupted) <= set(prep.weak) <= set(prep.split.train)
    assert len(prep.corrupted) == round(0.5 * len(prep.weak))
    for sid in prep.split.val + prep.split.test:
        assert prep.collection[sid].mask is not None and not prep.collection[sid].corrupted
    for sid, kind in prep.corrupted.items():
        s = prep.collection[sid]
        truth = s.reference_mask > 0
        box = s.boxes[0]
        inside = truth[int(box.y0):int(np.ceil(box.y1)), int(box.x0):int(np.ceil(box.x1))].sum()
        if kind in ("shifted", "background"):
            assert inside == 0, (sid, kind)  # moved off the object
        else:
            assert box.area > 1.5 * _mask_box(s.reference_mask).area, (sid, kind)  # inflated


def test_stratified_split_gives_each_class_its_share_of_the_test_set():
    ids = [f"s{i:03d}" for i in range(100)]
    strata = {sid: ("rare" if i < 20 else "common") for i, sid in enumerate(ids)}
    sp = split_ids(ids, seed=5, strata=strata)
    assert sum(strata[i] == "rare" for i in sp.test) == 4  # 20% of the 20 rare images
    assert sum(strata[i] == "rare" for i in sp.val) == 2
    assert (len(sp.train), len(sp.val), len(sp.test)) == (70, 10, 20)


def test_calibration_fits_the_step_budget_to_the_time_budget_and_caps_it_at_the_preset(tmp_path):
    prep = _prepared(_settings(tmp_path))
    base = _settings(tmp_path, steps=None).base_config()
    backend = fake_backend(FakeTrainer(step_s=0.02))
    steps, rec = P.calibrate_steps(prep.train, base, backend, ["naive"], budget_s=2.0, n_eval=0, log=lambda m: None)
    # ~0.02 s per step: ~100 steps in 2 s (fewer when the machine is busy, never below 20)
    assert 20 <= steps <= 105 and rec["sec_per_step"] >= 0.02 and rec["steps"] == steps
    capped, _ = P.calibrate_steps(prep.train, base, backend, ["naive"], budget_s=1e6, n_eval=0, log=lambda m: None)
    assert capped == base.steps == 300


def test_calibrated_steps_are_recorded_and_reused_when_resuming(tmp_path):
    settings = _settings(tmp_path, steps=None, budget_min=0.05, arms=("naive",))
    P.run_benchmark(settings, backend=fake_backend(FakeTrainer(step_s=0.01)), prepared=_prepared(settings),
                    log=lambda m: None)
    recorded = json.loads((Path(settings.out) / "settings.json").read_text())
    assert recorded["calibration"]["steps"] == recorded["steps_used"] >= 20
    more = _settings(tmp_path, steps=None, budget_min=0.05, arms=("naive", "dii"))
    trainer = FakeTrainer()
    P.run_benchmark(more, backend=fake_backend(trainer), prepared=_prepared(more), log=lambda m: None)
    assert [c[1]["steps"] for c in trainer.calls] == [recorded["steps_used"]]  # no new calibration, same budget
