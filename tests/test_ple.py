"""Pseudo-label enhancement: the five views, their mapping back, the fused label and the consistency term."""

from __future__ import annotations

import pytest
import torch

from napari_hybridseg.core.methods.ple import (
    N_VIEWS,
    PLEViews,
    consistency_loss,
    enhance,
    make_views,
    sample_views,
    views_to_original,
)


def disk_image(size: int = 48, radius: float = 12.0) -> tuple[torch.Tensor, torch.Tensor]:
    rr, cc = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = ((rr - size / 2 + 3) ** 2 + (cc - size / 2 - 2) ** 2 <= radius**2)
    return mask.float()[None, None], mask.long()[None]


def pixelwise(x: torch.Tensor) -> torch.Tensor:
    """A 'network' that commutes with every geometric view: 2-class logits from the pixel value."""
    return torch.cat([-8 * (x[:, :1] - 0.5), 8 * (x[:, :1] - 0.5)], 1)


def test_views_are_stacked_view_major_and_identity_first():
    x = torch.rand(3, 2, 32, 32)
    views = PLEViews((32, 32), zoom_in=3, zoom_out=(4, 7), flip="ud")
    v = make_views(x, views)
    assert v.shape == (N_VIEWS * 3, 2, 32, 32)
    torch.testing.assert_close(v[:3], x)
    torch.testing.assert_close(v[12:], torch.flip(x, (-2,)))
    # zoom-outs are padded with the fill value
    assert (v[6:9, :, :4] == 0).all() and (v[9:12, :, :, -7:] == 0).all()


def test_sampled_pads_are_scaled_from_144_px_and_the_two_zoom_outs_differ():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        v = sample_views((128, 128), g)
        for p in (v.zoom_in, *v.zoom_out):
            assert round(4 * 128 / 144) <= p <= round(30 * 128 / 144)
        assert v.zoom_out[0] != v.zoom_out[1]
    with pytest.raises(ValueError, match="do not fit"):
        PLEViews((16, 16), zoom_in=2, zoom_out=(8, 3))


def test_mapped_back_views_agree_with_the_identity_for_an_equivariant_model():
    x, truth = disk_image()
    views = PLEViews((48, 48), zoom_in=4, zoom_out=(3, 8), flip="both")
    maps, cov = views_to_original(torch.sigmoid(pixelwise(make_views(x, views))), views)
    assert maps.shape == (N_VIEWS, 1, 2, 48, 48)
    torch.testing.assert_close(maps[4], maps[0])  # the flip maps back exactly
    for k in (1, 2, 3):  # zooms agree up to interpolation at the disk's edge
        agree = ((maps[k, :, 1] > 0.5) == (maps[0, :, 1] > 0.5)).float() * (cov[k, 0] > 0.99)
        assert agree.sum() / (cov[k, 0] > 0.99).sum() > 0.97
    # the zoom-in does not see the border; the others see everything
    assert cov[1, 0, 0, 0, 0] < 0.5 and cov[1, 0, 0, 24, 24] == pytest.approx(1.0)
    assert (cov[[0, 2, 3, 4]] == 1).all()


def test_enhanced_label_recovers_the_disk_and_consistency_is_small_when_views_agree():
    x, truth = disk_image()
    res = enhance(pixelwise, x, PLEViews((48, 48), zoom_in=4, zoom_out=(3, 8), flip="lr"))
    assert res.y_hat.shape == (1, 48, 48) and res.y_hat.dtype == torch.long
    assert (res.y_hat == truth).float().mean() > 0.98
    assert res.view_logits.shape == (N_VIEWS, 2, 48, 48)

    def position_bound(inp):  # ignores the image: its views disagree after mapping back
        h, w = inp.shape[-2:]
        left = torch.zeros(inp.shape[0], 1, h, w)
        left[..., : w // 3] = 1.0
        return torch.cat([-8 * (left - 0.5), 8 * (left - 0.5)], 1)

    bad = enhance(position_bound, x, PLEViews((48, 48), zoom_in=4, zoom_out=(3, 8), flip="lr"))
    assert float(bad.consistency) > 20 * float(res.consistency)


def test_single_channel_models_are_thresholded_at_one_half():
    x, truth = disk_image()
    res = enhance(lambda t: 8 * (t - 0.5), x, PLEViews((48, 48), 4, (3, 8), "ud"))
    assert res.probabilities.shape == (1, 1, 48, 48)
    assert (res.y_hat == truth).float().mean() > 0.98


def test_consistency_term_carries_gradient_to_the_model():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(1, 2, 3, padding=1)
    x, _ = disk_image(32, 8)
    res = enhance(net, x, generator=torch.Generator().manual_seed(1))
    assert res.consistency.ndim == 0 and float(res.consistency) > 0
    res.consistency.backward()
    assert net.weight.grad is not None and net.weight.grad.abs().sum() > 0


def test_consistency_of_identical_maps_is_zero():
    maps = torch.rand(1, 2, 3, 8, 8).expand(N_VIEWS, 2, 3, 8, 8)
    cov = torch.ones(N_VIEWS, 1, 1, 8, 8)
    assert float(consistency_loss(maps, cov)) == 0.0


def test_a_batch_of_the_wrong_size_is_refused():
    with pytest.raises(ValueError, match="drawn for"):
        make_views(torch.rand(1, 1, 32, 32), PLEViews((48, 48), 4, (3, 8)))
