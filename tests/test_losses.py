"""Each loss on hand-made arrays: values where the answer is known, per-sample shapes, weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hybridseg.core.supervision.losses import (
    aux_tag_loss,
    box_tightness,
    dice_loss,
    margin_objective,
    mil_loss,
    partial_ce,
    pixel_ce,
    strong_loss,
    weak_losses,
)
from napari_hybridseg.core.supervision.targets import IGNORE


def confident(labels: torch.Tensor, k: int = 2, scale: float = 20.0) -> torch.Tensor:
    """Logits that predict ``labels`` with near certainty."""
    return torch.nn.functional.one_hot(labels, k).permute(0, 3, 1, 2).float() * scale


def test_pixel_ce_is_zero_on_ignored_pixels():
    target = torch.full((1, 4, 4), IGNORE)
    target[0, 0, 0] = 1
    cost, valid = pixel_ce(torch.zeros(1, 2, 4, 4), target)
    assert valid.sum() == 1
    assert cost[0, 0, 0] == pytest.approx(np.log(2), rel=1e-5)
    assert cost.sum() == pytest.approx(np.log(2), rel=1e-5)


def test_partial_ce_averages_over_known_pixels_per_sample():
    target = torch.full((2, 4, 4), IGNORE)
    target[0, :2] = 0
    logits = torch.zeros(2, 2, 4, 4)
    out = partial_ce(logits, target)
    assert out.shape == (2,)
    assert out[0] == pytest.approx(np.log(2), rel=1e-5)
    assert out[1] == 0  # nothing known: no signal, not NaN


def test_pixel_weight_multiplies_the_cost_map():
    target = torch.zeros(1, 4, 4, dtype=torch.long)
    logits = torch.zeros(1, 2, 4, 4)
    w = torch.zeros(1, 4, 4)
    w[0, 0] = 1.0
    assert partial_ce(logits, target, w)[0] == pytest.approx(np.log(2) / 4, rel=1e-5)


def test_dice_loss_is_zero_for_a_perfect_prediction_and_high_for_the_opposite():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:5, 2:5] = 1
    perfect = confident(labels).softmax(1)
    wrong = confident(1 - labels).softmax(1)
    assert dice_loss(perfect, labels)[0] < 1e-3
    assert dice_loss(wrong, labels)[0] > 0.9


def test_margin_objective_keeps_pulling_where_the_mask_is_fitted_and_weighs_classes_alike():
    labels = torch.zeros(1, 8, 8, dtype=torch.long)
    labels[0, 2:4, 2:4] = 1  # 4 foreground pixels, 60 background
    labels[0, 0, 0] = IGNORE

    def grad_at(scale):
        z = confident(labels.clamp_min(0), scale=scale).requires_grad_(True)
        margin_objective(z, labels).sum().backward()
        return z.grad

    g1, g20 = grad_at(1.0), grad_at(20.0)
    # the gradient does not vanish as the fit becomes confident (cross-entropy's does)
    torch.testing.assert_close(g1, g20)
    z = confident(labels.clamp_min(0), scale=20.0).requires_grad_(True)
    strong_loss(z, labels).sum().backward()
    assert z.grad.abs().max() < 1e-3 * g20.abs().max()
    # each class pulls with the same total weight, however few its pixels; ignored pixels not at all
    fg = labels[0] == 1
    bg = labels[0] == 0
    assert float(g20[0, 1][fg].sum()) == pytest.approx(float(g20[0, 0][bg].sum()), rel=1e-5)
    assert float(g20[0, :, 0, 0].abs().sum()) == 0.0
    # lower (better) for the right mask than for the opposite one, one value per sample
    two = torch.cat([labels, labels])
    right = margin_objective(confident(two.clamp_min(0)), two)
    wrong = margin_objective(confident(1 - two.clamp_min(0)), two)
    assert right.shape == (2,) and (right < wrong).all()


def test_strong_loss_prefers_the_right_mask():
    labels = torch.zeros(2, 8, 8, dtype=torch.long)
    labels[:, 2:5, 2:5] = 1
    right, wrong = strong_loss(confident(labels), labels), strong_loss(confident(1 - labels), labels)
    assert right.shape == (2,)
    assert (right < 0.01).all() and (wrong > 5).all()


def test_box_tightness_is_low_when_every_row_and_column_of_the_box_is_hit():
    boxes = [np.array([[1, 2, 2, 6, 6]])]
    # a cross through the box touches every row and column: tight
    cross = torch.zeros(1, 8, 8, dtype=torch.long)
    cross[0, 4, 2:6] = 1
    cross[0, 2:6, 4] = 1
    # a single pixel misses most rows and columns
    dot = torch.zeros(1, 8, 8, dtype=torch.long)
    dot[0, 3, 3] = 1
    tight = box_tightness(confident(cross).softmax(1), boxes)
    loose = box_tightness(confident(dot).softmax(1), boxes)
    assert tight[0] < 1e-3
    assert loose[0] > 5


def test_box_tightness_is_zero_for_samples_without_boxes():
    out = box_tightness(torch.full((2, 2, 4, 4), 0.5), [np.zeros((0, 5), np.int64), None])
    assert torch.equal(out, torch.zeros(2))


def test_mil_wants_some_pixels_of_a_present_class():
    present = torch.tensor([[False, True]])
    none = confident(torch.zeros(1, 10, 10, dtype=torch.long)).softmax(1)
    some_labels = torch.zeros(1, 10, 10, dtype=torch.long)
    some_labels[0, 0, 0] = 1
    some = confident(some_labels).softmax(1)
    assert mil_loss(none, present)[0] > 5
    assert mil_loss(some, present)[0] < 1e-3
    # a class that already has a box is left to the box terms
    assert mil_loss(none, present, skip=torch.tensor([[False, True]]))[0] == 0


def test_aux_tag_loss_ignores_unknown_tags():
    logits = torch.tensor([[10.0, -10.0]])
    assert aux_tag_loss(logits, torch.tensor([[1.0, -1.0]]))[0] < 1e-3
    assert aux_tag_loss(logits, torch.tensor([[0.0, -1.0]]))[0] > 5
    assert aux_tag_loss(None, torch.tensor([[1.0, 0.0]]))[0] == 0


def test_weak_losses_sum_is_the_per_instance_loss_and_penalises_a_wrong_box():
    truth = torch.zeros(1, 8, 8, dtype=torch.long)
    truth[0, 1:4, 1:4] = 1
    logits = confident(truth)
    right_box = np.array([[1, 1, 1, 4, 4]])
    wrong_box = np.array([[1, 5, 5, 8, 8]])

    def target_for(box):
        t = torch.zeros(1, 8, 8, dtype=torch.long)
        _, r0, c0, r1, c1 = box[0]
        t[0, r0:r1, c0:c1] = IGNORE
        return t

    present = torch.tensor([[False, True]])
    tags = torch.tensor([[1.0]])
    good = weak_losses(logits, None, target_for(right_box), [right_box], present, tags)
    bad = weak_losses(logits, None, target_for(wrong_box), [wrong_box], present, tags)
    for terms in (good, bad):
        assert torch.allclose(terms["sum"], terms["pce"] + terms["box"] + terms["mil"] + terms["aux"])
    assert good["sum"][0] < 0.01
    assert bad["sum"][0] > 1.0


def test_absent_tag_of_one_class_pushes_that_class_down_everywhere():
    from napari_hybridseg.core.supervision.losses import absent_loss

    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :3] = 1  # class 1 predicted on half the image
    probs = confident(labels, k=3).softmax(1)
    absent_1 = torch.tensor([[False, True, False]])
    absent_2 = torch.tensor([[False, False, True]])
    assert absent_loss(probs, absent_1)[0] > 5
    assert absent_loss(probs, absent_2)[0] < 1e-3
    assert absent_loss(probs, None)[0] == 0
    # in weak_losses it gives a tag-only sample a signal the DII scorer can see
    target = torch.full((1, 6, 6), IGNORE)
    terms = weak_losses(confident(labels, k=3), None, target, [None], torch.zeros(1, 3, dtype=torch.bool),
                        torch.zeros(1, 2), absent=absent_1)
    assert terms["sum"][0] > 5


def test_colour_affinity_is_one_between_equal_colours_and_small_across_an_edge():
    from napari_hybridseg.core.supervision.losses import colour_affinity

    rgb = torch.zeros(1, 3, 8, 8)
    rgb[..., 4:] = 1.0  # black left half, white right half
    aff = colour_affinity(rgb, dilation=1)
    assert aff.shape == (1, 8, 8, 8)
    right = 4  # neighbour (0, +1)
    assert aff[0, right, 2, 1] == pytest.approx(1.0)  # black next to black
    assert aff[0, right, 2, 3] < 1e-6  # black next to white: L* differs by 100
    assert aff[0, right, 2, 7] == 0  # the neighbour lies outside the image


def test_box_pairwise_wants_similar_neighbours_inside_a_box_to_agree():
    from napari_hybridseg.core.supervision.losses import box_pairwise, colour_affinity

    rgb = torch.full((1, 3, 12, 12), 0.5)  # one flat colour: every neighbour pair is similar
    aff = colour_affinity(rgb)
    boxes = [np.array([[1, 2, 2, 10, 10]])]
    agree = torch.zeros(1, 12, 12, dtype=torch.long)
    agree[0, 2:10, 2:10] = 1
    split = agree.clone()
    split[0, :, 6:] = 0  # the box's right half background: edges across column 6 disagree
    lo = box_pairwise(confident(agree, scale=10).softmax(1), aff, boxes)
    hi = box_pairwise(confident(split, scale=10).softmax(1), aff, boxes)
    assert lo.shape == (1,)
    assert float(lo) < 1e-3 and float(hi) > 1.0
    # where the colours differ there is no edge, so the same split costs nothing
    two_tone = rgb.clone()
    two_tone[..., 6:] = 1.0
    assert float(box_pairwise(confident(split, scale=10).softmax(1), colour_affinity(two_tone), boxes)) < 1e-3
    # no box, no term
    assert float(box_pairwise(confident(split).softmax(1), aff, [np.zeros((0, 5), np.int64)])) == 0


def test_weak_losses_per_instance_sum_leaves_out_the_pairwise_prior():
    # DII scores a weak image by its label terms; the pairwise colour prior says nothing about the label
    logits = torch.randn(1, 2, 8, 8)
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    target[0, 2:6, 2:6] = IGNORE
    boxes = [np.array([[1, 2, 2, 6, 6]])]
    present = torch.tensor([[False, True]])
    out = weak_losses(logits, None, target, boxes, present, torch.full((1, 1), -1.0))
    assert "pair" not in out
    assert torch.allclose(out["sum"], out["pce"] + out["box"] + out["mil"] + out["aux"])


def test_an_image_whose_every_class_is_absent_counts_its_tag_once():
    # "normal" in BUSI: the target is all background (partial CE); the absent term must not add it again
    from napari_hybridseg.core.supervision.losses import absent_loss

    labels = torch.zeros(1, 6, 6, dtype=torch.long)
    labels[0, :3] = 1
    logits = confident(labels, k=2)
    every = torch.tensor([[False, True]])
    assert absent_loss(logits.softmax(1), every)[0] == 0
    background = torch.zeros(1, 6, 6, dtype=torch.long)  # what make_targets gives a tag of every class absent
    terms = weak_losses(logits, None, background, [None], torch.zeros(1, 2, dtype=torch.bool),
                        torch.zeros(1, 1), absent=every)
    assert terms["mil"][0] == 0 and terms["pce"][0] > 5  # counted once, by the partial CE
    # with two classes and only one absent, the term still acts (the other class stays possible)
    three = confident(labels, k=3).softmax(1)
    assert absent_loss(three, torch.tensor([[False, True, False]]))[0] > 5
    assert absent_loss(three, torch.tensor([[False, True, True]]))[0] == 0
