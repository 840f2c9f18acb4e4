"""Dynamic co-regularization: CutMix shapes and content, CPS loss, ramp-up."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hybridseg.core.methods.dcr import cps_loss, cutmix, cutmix_boxes, rampup


def test_cutmix_masks_are_one_rectangle_per_image_within_the_area_range():
    rng = np.random.default_rng(0)
    mask = cutmix_boxes(6, 32, 40, rng, area=(0.25, 0.5))
    assert mask.shape == (6, 1, 32, 40)
    for m in mask[:, 0]:
        rows, cols = m.nonzero(as_tuple=True)
        # a filled rectangle: its pixel count equals its bounding box
        assert m.sum() == (rows.max() - rows.min() + 1) * (cols.max() - cols.min() + 1)
        assert 0.1 < float(m.mean()) < 0.65


def test_cutmix_pastes_the_partner_inside_the_mask_only():
    x = torch.arange(2, dtype=torch.float32).view(2, 1, 1, 1).expand(2, 3, 8, 8).contiguous()
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 2:5] = 1
    mixed = cutmix(x, torch.tensor([1, 0]), mask)
    assert mixed.shape == x.shape
    assert (mixed[0, :, 2:5, 2:5] == 1).all() and (mixed[0, :, 0, 0] == 0).all()
    assert (mixed[1, :, 2:5, 2:5] == 0).all() and (mixed[1, :, 7, 7] == 1).all()


def test_cps_is_zero_when_networks_agree_confidently_and_positive_when_they_differ():
    a = torch.zeros(2, 2, 4, 4)
    a[:, 1] = 30.0
    assert cps_loss(a, a.clone()) < 1e-6
    b = -a
    assert cps_loss(a, b) > 10


def test_cps_gradient_flows_to_both_networks_but_not_through_pseudo_labels():
    a = torch.randn(2, 3, 4, 4, requires_grad=True)
    b = torch.randn(2, 3, 4, 4, requires_grad=True)
    cps_loss(a, b).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0


def test_cps_weight_scales_each_image():
    a, b = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    full = cps_loss(a, b, torch.ones(2))
    half = cps_loss(a, b, torch.full((2,), 0.5))
    none = cps_loss(a, b, torch.zeros(2))
    assert half == pytest.approx(float(full) / 2, rel=1e-5)
    assert none == 0


def test_rampup_goes_from_near_zero_to_one():
    assert rampup(0, 100) == pytest.approx(np.exp(-5))
    assert rampup(50, 100) < rampup(90, 100) < 1
    assert rampup(100, 100) == 1 and rampup(5, 0) == 1


def test_cps_leaves_known_pixels_to_the_labels():
    a, b = torch.randn(2, 2, 4, 4), torch.randn(2, 2, 4, 4)
    known = torch.zeros(2, 4, 4, dtype=torch.bool)
    assert cps_loss(a, b, known=known) == pytest.approx(float(cps_loss(a, b)))
    known[:, :2] = True
    a2, b2 = a.clone(), b.clone()
    a2[:, :, :2] = 50 * torch.randn(2, 2, 2, 4)  # whatever the networks say on known pixels
    assert cps_loss(a2, b2, known=known) == pytest.approx(float(cps_loss(a, b, known=known)))
    assert cps_loss(a, b, known=torch.ones(2, 4, 4, dtype=torch.bool)) == 0
