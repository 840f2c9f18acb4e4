"""The size prior: ranges from strong masks, the loss, and the spill it prevents (issue 19)."""

import numpy as np
import pytest
import torch

from napari_hybridseg.core.supervision.size_prior import SizePrior, size_prior_loss


def _mask(h, w, frac, ch=1):
    m = np.zeros((h, w), np.int64)
    m.flat[: int(round(frac * h * w))] = ch
    return m


def test_range_comes_from_the_masks_that_hold_the_class_widened_by_the_margin():
    masks = [_mask(10, 10, 0.02), _mask(10, 10, 0.05), np.zeros((10, 10), np.int64), _mask(10, 10, 0.1, ch=2)]
    prior = SizePrior.from_masks(masks, n_channels=4, margin=2.0)
    assert prior.seen.tolist() == [0, 2, 1, 0]
    assert prior.low[1] == pytest.approx(0.01) and prior.high[1] == pytest.approx(0.10)
    assert prior.low[2] == pytest.approx(0.05) and prior.high[2] == pytest.approx(0.2)
    # a class no mask holds has no range; background never has one
    assert (prior.low[[0, 3]] == 0).all() and (prior.high[[0, 3]] == 1).all()
    assert prior.active
    lines = prior.describe(["a", "b", "c"])
    assert "from 2 mask(s)" in lines[0] and "no size range" in lines[2]
    with pytest.raises(ValueError, match="margin"):
        SizePrior.from_masks(masks, 4, margin=0.5)


def test_ignored_pixels_do_not_count_and_high_is_capped_at_the_image():
    m = np.full((4, 4), -1, np.int64)
    m[0, :2] = 1  # 2 known pixels, both foreground: fraction 1
    prior = SizePrior.from_masks([m], 2, margin=3.0)
    assert prior.high[1] == 1.0 and prior.low[1] == pytest.approx(1 / 3)


def _probs(fg_frac, h=20, w=20):
    p = torch.zeros(1, 2, h, w)
    n = int(round(fg_frac * h * w))
    p[0, 1].view(-1)[:n] = 1.0
    p[0, 0] = 1 - p[0, 1]
    return p


def test_loss_is_zero_inside_the_range_and_grows_with_the_log_ratio_outside():
    prior = SizePrior(np.array([0, 0.05]), np.array([1, 0.2]), np.array([0, 3]))
    present = torch.tensor([[False, True]])
    assert size_prior_loss(_probs(0.1), prior, present).item() == 0
    big, bigger = (size_prior_loss(_probs(f), prior, present).item() for f in (0.4, 0.8))
    assert big == pytest.approx(np.log(2) ** 2, rel=1e-4) and bigger == pytest.approx(np.log(4) ** 2, rel=1e-4)
    # too small counts only where the label says the class is there
    assert size_prior_loss(_probs(0.0125), prior, present).item() == pytest.approx(np.log(4) ** 2, rel=1e-3)
    assert size_prior_loss(_probs(0.0125), prior, torch.tensor([[False, False]])).item() == 0
    # scale-free: twice the upper bound costs the same at 2% as at 20%
    small = SizePrior(np.array([0, 0.005]), np.array([1, 0.02]), np.array([0, 3]))
    assert size_prior_loss(_probs(0.04), small, present).item() == pytest.approx(big, rel=1e-3)


def test_no_range_no_loss_and_gradient_shrinks_an_oversized_prediction():
    none = SizePrior(np.zeros(2), np.ones(2), np.zeros(2, int))
    assert not none.active
    assert size_prior_loss(_probs(0.9), none, torch.tensor([[False, True]])).item() == 0
    logits = torch.zeros(1, 2, 8, 8, requires_grad=True)
    prior = SizePrior(np.array([0, 0.01]), np.array([1, 0.1]), np.array([0, 2]))
    size_prior_loss(logits.softmax(1), prior, torch.tensor([[False, True]])).backward()
    assert (logits.grad[0, 1] > 0).all() and (logits.grad[0, 0] < 0).all()  # descent lowers the fg logit


@pytest.mark.slow
def test_points_on_small_objects_do_not_paint_the_whole_image():
    """Issue 19's test: one click per small object (1-3% of the image) on most images. With neither kind
    of negative evidence the naive prediction spills over the image; the size prior alone, the anchor
    alone (``core/supervision/anchor.py``) and both (the default) keep it under twice the truth."""
    import tempfile

    from napari_hybridseg.core.data.synthetic import Spec, point_at_centre, small_disk_rgb, strong, synthetic_collection
    from napari_hybridseg.core.prediction.predict import Predictor
    from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
    from napari_hybridseg.core.training.config_sections import LossConfig
    from napari_hybridseg.core.training.trainer import train

    paint = small_disk_rgb(64, (0.01, 0.03))
    specs = [Spec(f"s{i}", paint, strong) for i in range(3)]
    specs += [Spec(f"w{i}", paint, point_at_centre) for i in range(24)]
    ratios = {}
    arms = {"neither": (0.0, 0.0), "size prior": (1.0, 0.0), "anchor": (0.0, 1.0), "both": (1.0, 1.0)}
    for name, (size, anchor) in arms.items():
        col = synthetic_collection(specs, seed=0)
        cfg = TrainConfig(model=ModelConfig(input_size=64), steps=60, batch_size=8, dcr=False, dii=False,
                          preview_every=0, seed=0, precision="fp32",
                          loss=LossConfig(size_prior=size, anchor=anchor))
        with tempfile.TemporaryDirectory() as d:
            for _ in train(col, cfg, d):
                pass
            pred = Predictor.load(d, device="cpu", threads=2).predict_many(
                {s.id: s for s in col if s.id.startswith("w")})
        ratios[name] = np.median([(p > 0).sum() / (col[k].reference_mask > 0).sum() for k, p in pred.items()])
    print("median predicted / true area", ratios)
    assert ratios["neither"] > 4, f"the control no longer spills ({ratios}); the test lost its point"
    assert ratios["size prior"] < 2, ratios
    assert ratios["anchor"] < 2, ratios
    assert ratios["both"] < 2, ratios


def test_the_start_report_says_which_size_range_each_class_gets():
    from napari_hybridseg.core.data.synthetic import (
        Spec,
        box_around,
        point_at_centre,
        small_disk_rgb,
        strong,
        synthetic_collection,
    )
    from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
    from napari_hybridseg.core.training.reports import StartReport
    from napari_hybridseg.core.training.trainer import train

    paint = small_disk_rgb(32, (0.02, 0.04))
    specs = [Spec("s0", paint, strong), Spec("s1", paint, strong), Spec("w0", paint, point_at_centre),
             Spec("b0", paint, box_around)]
    cfg = TrainConfig(model=ModelConfig(input_size=32, encoder_weights=None), steps=1, batch_size=2, dcr=False,
                      dii=False, preview_every=0)
    start = next(r for r in train(synthetic_collection(specs), cfg) if isinstance(r, StartReport))
    note = next(n for n in start.notes if n.startswith("size prior"))
    assert "lesion:" in note and "from 2 mask(s)" in note
    assert note.startswith("size prior on the 1 weak image(s) without boxes")  # the box image is not one
    # boxes only: the step applies the prior to none of them, and the report does not claim it does
    boxes_only = synthetic_collection([specs[0], specs[1], specs[3]])
    start = next(r for r in train(boxes_only, cfg) if isinstance(r, StartReport))
    assert not any(n.startswith("size prior") for n in start.notes), start.notes
