"""MLB-Seg pixel weights: the exact JVP form against the unrolled original, the fallback, and what they learn."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from napari_hybridseg.core.methods.pixel_weights import (
    exact_pixel_weights,
    fill_ignored,
    normalise_weights,
    pixel_costs,
    unrolled_pixel_weights,
    weight_maps_at,
    weight_summary,
)


@pytest.fixture(autouse=True)
def _one_thread():
    # the CI machine's cores are shared: keep each test on one
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def tiny_bn_net(classes: int = 2, in_ch: int = 1) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(in_ch, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 8, 3, padding=2, dilation=2), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, classes, 1),
    )


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def strong_loss_for(classes: int):
    if classes == 1:
        return lambda z, y: F.binary_cross_entropy_with_logits(z[:, 0], y.to(z.dtype))
    return lambda z, y: F.cross_entropy(z, y)


def batch(classes: int, dtype=torch.float64, b: int = 3, size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, 1, size, size, generator=g, dtype=dtype)
    xs = torch.randn(2, 1, size, size, generator=g, dtype=dtype)
    y_init = torch.randint(0, max(classes, 2), (b, size, size), generator=g)
    y_own = torch.randint(0, max(classes, 2), (b, size, size), generator=g)
    ys = torch.randint(0, max(classes, 2), (2, size, size), generator=g)
    valid = torch.rand(b, size, size, generator=g) > 0.2
    return x, y_init, y_own, valid, xs, ys


# -- (1) exact == unrolled ------------------------------------------------------------
@pytest.mark.parametrize("classes", [1, 2, 3])
@pytest.mark.parametrize("with_virtual_terms", [False, True])
def test_exact_weights_match_unrolled_reference_with_batchnorm(classes, with_virtual_terms):
    torch.manual_seed(0)
    model = tiny_bn_net(classes).double().train()
    x, y_init, y_own, valid, xs, ys = batch(classes)
    gamma = torch.tensor([1.0, 0.5, 0.2])
    fixed = torch.zeros_like(valid)
    fixed[:, :3] = True

    def unweighted(forward):  # stands in for the PLE consistency + teacher MSE terms
        return torch.sigmoid(forward(x)).pow(2).mean()

    kw = dict(sample_gamma=gamma, fixed_init=fixed, virtual_loss_fn=unweighted if with_virtual_terms else None,
              return_details=True)
    args = (model, x, y_init, y_own, valid, None, xs, ys, strong_loss_for(classes), 0.1)
    exact = exact_pixel_weights(*args, **kw)
    ref = unrolled_pixel_weights(*args, **kw)
    assert exact.method == "jvp"
    assert rel_err(exact.raw_init, ref.raw_init) < 1e-4
    assert rel_err(exact.raw_own, ref.raw_own) < 1e-4
    assert rel_err(exact.w_init, ref.w_init) < 1e-4
    assert rel_err(exact.w_own, ref.w_own) < 1e-4
    # not a trivially-zero comparison: both targets carry positive and negative raw weights
    for raw in (ref.raw_init, ref.raw_own):
        assert (raw > 0).any() and (raw < 0).any()
    assert exact.meta_loss == pytest.approx(ref.meta_loss, rel=1e-9)


def test_exact_weights_match_unrolled_reference_on_smp_unet_in_float32():
    smp = pytest.importorskip("segmentation_models_pytorch")
    torch.manual_seed(0)
    model = smp.Unet(encoder_name="resnet18", encoder_weights=None, encoder_depth=3,
                     decoder_channels=(16, 8, 4), in_channels=1, classes=2).train()
    x, y_init, y_own, valid, xs, ys = batch(2, dtype=torch.float32, b=2, size=32)
    args = (model, x, y_init, y_own, valid, valid, xs, ys, strong_loss_for(2), 0.01)
    exact = exact_pixel_weights(*args, return_details=True)
    ref = unrolled_pixel_weights(*args, return_details=True)
    assert exact.method == "jvp"
    assert rel_err(exact.raw_init, ref.raw_init) < 1e-4
    assert rel_err(exact.raw_own, ref.raw_own) < 1e-4
    assert rel_err(exact.w_init, ref.w_init) < 1e-4


def test_exact_weights_match_unrolled_reference_on_the_pretrained_efficientnet_lite0_unet():
    """The default encoder: ReLU6, depthwise convolutions, BatchNorm (train mode), ImageNet weights."""
    from napari_hybridseg.core.network.models import build_model
    from napari_hybridseg.core.training.config import ModelConfig

    torch.manual_seed(0)
    model = build_model(ModelConfig(input_size=32), seed=0).train()
    assert any(isinstance(m, nn.ReLU6) for m in model.modules())
    assert any(isinstance(m, nn.Conv2d) and m.groups > 1 for m in model.modules())
    x, y_init, y_own, valid, xs, ys = batch(2, dtype=torch.float32, b=2, size=32)
    x, xs = x.repeat(1, 3, 1, 1), xs.repeat(1, 3, 1, 1)  # greyscale through the RGB stem
    args = (model, x, y_init, y_own, valid, valid, xs, ys, strong_loss_for(2), 0.01)
    exact = exact_pixel_weights(*args, return_details=True)
    ref = unrolled_pixel_weights(*args, return_details=True)
    assert exact.method == "jvp"  # no op fell back to double backward
    assert rel_err(exact.raw_init, ref.raw_init) < 1e-4
    assert rel_err(exact.raw_own, ref.raw_own) < 1e-4
    assert rel_err(exact.w_init, ref.w_init) < 1e-4


def test_alpha_and_gamma_scale_raw_weights_linearly():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    args = (model, x, y_init, y_own, None, None, xs, ys, strong_loss_for(2))
    a = exact_pixel_weights(*args, 0.1, return_details=True)
    b = exact_pixel_weights(*args, 0.3, sample_gamma=torch.tensor([1.0, 0.0, 0.5]), return_details=True)
    torch.testing.assert_close(b.raw_init[0], 3 * a.raw_init[0])
    assert (b.raw_init[1] == 0).all() and (b.w_own[1] == 0).all()
    torch.testing.assert_close(b.raw_own[2], 1.5 * a.raw_own[2])


# -- (2) the double-backward fallback --------------------------------------------------
class _ReluWithoutForwardAD(torch.autograd.Function):
    """A ReLU with only a backward rule: forward-mode AD (and functorch) cannot go through it."""

    @staticmethod
    def forward(ctx, x):
        ctx.save_for_backward(x)
        return x.clamp_min(0)

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return grad * (x > 0)


class _NoForwardAD(nn.Module):
    def forward(self, x):
        return _ReluWithoutForwardAD.apply(x)


def test_forced_double_backward_equals_jvp():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    args = (model, x, y_init, y_own, valid, valid, xs, ys, strong_loss_for(2), 0.1)
    jvp = exact_pixel_weights(*args, return_details=True)
    dbl = exact_pixel_weights(*args, method="double-backward", return_details=True)
    assert dbl.method == "double-backward"
    assert rel_err(dbl.raw_init, jvp.raw_init) < 1e-10
    assert rel_err(dbl.raw_own, jvp.raw_own) < 1e-10


def test_eval_mode_batchnorm_keeps_the_jvp_path_and_equals_double_backward():
    # previews run network 1 in eval mode: BN reads running stats, which cannot carry tangents
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    model(x)  # non-trivial running stats
    model.eval()
    args = (model, x, y_init, y_own, valid, valid, xs, ys, strong_loss_for(2), 0.1)
    jvp = exact_pixel_weights(*args, method="jvp", return_details=True)
    dbl = exact_pixel_weights(*args, method="double-backward", return_details=True)
    assert jvp.method == "jvp"
    assert rel_err(dbl.raw_init, jvp.raw_init) < 1e-10
    assert rel_err(dbl.raw_own, jvp.raw_own) < 1e-10


def test_op_without_forward_rule_falls_back_with_one_notice_and_same_values():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    model[2] = _NoForwardAD()
    x, y_init, y_own, valid, xs, ys = batch(2)
    args = (model, x, y_init, y_own, valid, None, xs, ys, strong_loss_for(2), 0.1)
    with pytest.warns(UserWarning, match="double-backward fallback") as record:
        got = exact_pixel_weights(*args, return_details=True)
    assert len([w for w in record if "pixel weights" in str(w.message)]) == 1
    assert got.method == "double-backward" and len(got.notes) == 1 and "\n" not in got.notes[0]
    ref = unrolled_pixel_weights(*args, return_details=True)
    assert rel_err(got.raw_init, ref.raw_init) < 1e-4
    assert rel_err(got.raw_own, ref.raw_own) < 1e-4
    with pytest.raises(RuntimeError):
        exact_pixel_weights(*args, method="jvp")


def test_bf16_autocast_keeps_the_jvp_path_without_a_notice():
    torch.manual_seed(0)
    model = tiny_bn_net().train()
    x, y_init, y_own, valid, xs, ys = batch(2, dtype=torch.float32)
    args = (model, x, y_init, y_own, valid, None, xs, ys, lambda z, y: F.cross_entropy(z.float(), y), 0.1)
    ref = exact_pixel_weights(*args, return_details=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = exact_pixel_weights(*args, return_details=True)  # a fallback warning would fail this test
    assert got.method == "jvp" and got.logits.dtype == torch.float32
    # only the meta gradient saw bf16: the weights barely move
    assert rel_err(got.raw_init, ref.raw_init) < 0.05


# -- (3) normalisation, clamp, held-fixed pixels -----------------------------------------
def test_weights_are_clamped_at_zero_and_sum_to_one_over_batch_and_both_targets():
    torch.manual_seed(1)
    model = tiny_bn_net().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    got = exact_pixel_weights(model, x, y_init, y_own, valid, None, xs, ys, strong_loss_for(2), 0.1,
                              return_details=True)
    assert got.w_init.dtype == torch.float32 and got.w_init.shape == y_init.shape
    assert float(got.w_init.sum() + got.w_own.sum()) == pytest.approx(1.0, abs=1e-5)
    assert (got.w_init >= 0).all() and (got.w_own >= 0).all()
    assert (got.w_init[got.raw_init <= 0] == 0).all()
    assert (got.w_init[~valid] == 0).all()
    # proportional to the positive raw weights
    pos = got.raw_init > 0
    ratio = got.w_init[pos].double() / got.raw_init[pos]
    assert float(ratio.std() / ratio.mean()) < 1e-5


def test_normalisation_is_zero_safe_when_no_weight_is_positive():
    w_init, w_own = normalise_weights(-torch.rand(2, 4, 4), torch.zeros(2, 4, 4))
    assert (w_init == 0).all() and (w_own == 0).all()
    assert torch.isfinite(w_init).all()


def test_fixed_pixels_get_no_weight_and_stay_out_of_the_normaliser():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    x, y_init, y_own, _, xs, ys = batch(2)
    fixed = torch.zeros(y_init.shape, dtype=torch.bool)
    fixed[:, 8:] = True
    args = (model, x, y_init, y_own, None, None, xs, ys, strong_loss_for(2), 0.1)
    free = exact_pixel_weights(*args, return_details=True)
    held = exact_pixel_weights(*args, fixed_init=fixed, return_details=True)
    assert (held.w_init[fixed] == 0).all() and (held.w_own[fixed] == 0).all()
    assert float(held.w_init.sum() + held.w_own.sum()) == pytest.approx(1.0, abs=1e-5)
    # the free pixels keep their relative weights, renormalised among themselves
    scale = free.w_init[~fixed].sum() + free.w_own[~fixed].sum()
    torch.testing.assert_close(held.w_init[~fixed], free.w_init[~fixed] / scale)


# -- sharing the dual forward --------------------------------------------------------------
def test_dual_forward_logits_train_like_a_plain_forward_and_update_batchnorm():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    twin = copy.deepcopy(model)
    x, y_init, y_own, valid, xs, ys = batch(2)
    got = exact_pixel_weights(model, x, y_init, y_own, valid, valid, xs, ys, strong_loss_for(2), 0.1,
                              return_details=True, update_buffers=True)
    c_init, c_own = pixel_costs(got.logits, y_init, y_own, valid, valid)
    (got.w_init.double() * c_init + got.w_own.double() * c_own).sum().backward()

    z = twin(x)  # the ordinary train-mode forward the trainer would otherwise run
    c_init, c_own = pixel_costs(z, y_init, y_own, valid, valid)
    (got.w_init.double() * c_init + got.w_own.double() * c_own).sum().backward()
    for p, q in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(p.grad, q.grad)
    for (name, b), q in zip(model.named_buffers(), twin.buffers()):
        torch.testing.assert_close(b, q, msg=name)


class _WithAuxHead(nn.Module):
    """Like an smp model with ``aux_params``: returns (mask logits, image logits)."""

    def __init__(self):
        super().__init__()
        self.body = tiny_bn_net()
        self.head = nn.Linear(2, 1)

    def forward(self, x):
        z = self.body(x)
        return z, self.head(z.mean((2, 3)))


def test_models_with_an_aux_head_weight_their_mask_logits_and_return_the_full_output():
    torch.manual_seed(0)
    model = _WithAuxHead().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    args = (model, x, y_init, y_own, valid, None, xs, ys, strong_loss_for(2), 0.1)
    got = exact_pixel_weights(*args, return_details=True)
    ref = unrolled_pixel_weights(*args, return_details=True)
    assert rel_err(got.raw_init, ref.raw_init) < 1e-4
    assert isinstance(got.output, tuple) and got.output[0] is got.logits and got.output[1].shape == (3, 1)
    got.output[1].sum().backward()  # the aux output is on the graph too, for the real step's tag loss
    assert model.head.weight.grad is not None


def test_computing_weights_without_update_leaves_the_model_untouched():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    before = copy.deepcopy(model.state_dict())
    x, y_init, y_own, valid, xs, ys = batch(2)
    exact_pixel_weights(model, x, y_init, y_own, valid, valid, xs, ys, strong_loss_for(2), 0.1)
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k])
    assert all(p.grad is None for p in model.parameters())


def test_bad_inputs_say_what_is_wrong():
    model = tiny_bn_net().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    with pytest.raises(ValueError, match=r"\(B, H, W\)"):
        exact_pixel_weights(model, x, y_init[:, :4], y_own, None, None, xs, ys, strong_loss_for(2), 0.1)
    with pytest.raises(ValueError, match="one per sample"):
        exact_pixel_weights(model, x, y_init, y_own, None, None, xs, ys, strong_loss_for(2), 0.1,
                            sample_gamma=torch.ones(2))
    with pytest.raises(ValueError, match="method"):
        exact_pixel_weights(model, x, y_init, y_own, None, None, xs, ys, strong_loss_for(2), 0.1, method="fast")


# -- helpers -------------------------------------------------------------------------------
def test_fill_ignored_takes_the_label_where_known_and_the_prediction_elsewhere():
    init = torch.tensor([[[-1, 1], [0, -1]]])
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 5.0  # predicts foreground at (0, 0)
    y, known = fill_ignored(init, logits)
    assert y.tolist() == [[[1, 1], [0, 0]]]
    assert known.tolist() == [[[False, True], [True, False]]]


def test_weight_maps_come_back_at_each_samples_own_size_scaled_to_one():
    w = torch.zeros(2, 8, 8)
    w[0, 2:4, 2:4] = 0.01
    maps = weight_maps_at(w, [(30, 20), (5, 7)])
    assert maps[0].shape == (30, 20) and maps[1].shape == (5, 7)
    assert maps[0].max() == pytest.approx(1.0) and maps[0].dtype == np.float32
    assert (maps[1] == 0).all()
    summary = weight_summary(w, torch.zeros_like(w))
    assert summary[0][0] == pytest.approx(0.04) and summary[1] == (0.0, 0.0)


# -- (4) the quality test: wrong pixels lose their weight -------------------------------------
def _disks(n: int, size: int, gen: torch.Generator):
    rr, cc = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    xs, ys = [], []
    for _ in range(n):
        r = 4 + 4 * torch.rand(1, generator=gen).item()
        cy, cx = (8 + (size - 16) * torch.rand(2, generator=gen)).tolist()
        m = (rr - cy) ** 2 + (cc - cx) ** 2 <= r * r
        xs.append((m.float() + 0.3 * torch.randn(size, size, generator=gen))[None])
        ys.append(m.long())
    return torch.stack(xs), torch.stack(ys)


def test_wrong_weak_pixels_end_with_far_less_weight_than_right_ones():
    size = 32
    gen = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    xs, ys = _disks(4, size, gen)
    xw, truth = _disks(8, size, gen)
    # a known wrong region per weak mask: a 10x10 block of "foreground" on background, away from the disk
    wrong = torch.zeros_like(truth, dtype=torch.bool)
    for i in range(len(truth)):
        cy, cx = (c.float().mean() for c in torch.nonzero(truth[i], as_tuple=True))
        r0 = 2 if cy > size / 2 else size - 12
        c0 = 2 if cx > size / 2 else size - 12
        wrong[i, r0 : r0 + 10, c0 : c0 + 10] = True
    weak = truth.clone()
    weak[wrong] = 1
    wrong &= weak != truth
    assert wrong.sum() > 400  # the corruption is substantial

    model = tiny_bn_net().train()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    mass_wrong, mass_right = [], []
    for _ in range(40):
        with torch.no_grad():
            own = model(xw).argmax(1)
        pw = exact_pixel_weights(model, xw, weak, own, None, None, xs, ys, lambda z, y: F.cross_entropy(z, y),
                                 1e-2, return_details=True, update_buffers=True)
        c_init, c_own = pixel_costs(pw.logits, weak, own)
        loss = F.cross_entropy(model(xs), ys) + (pw.w_init * c_init + pw.w_own * c_own).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        mass_wrong.append(float(pw.w_init[wrong].mean()))
        mass_right.append(float(pw.w_init[~wrong].mean()))
    wrong_mean, right_mean = np.mean(mass_wrong[-10:]), np.mean(mass_right[-10:])
    assert right_mean > 0
    assert wrong_mean < 0.2 * right_mean, (wrong_mean, right_mean)


# -- the trainer's one pixel-weight path: the step's term, alone ----------------------------------
def _mixed_batch():
    from types import SimpleNamespace

    from napari_hybridseg.core.data.collection import Role

    g = torch.Generator().manual_seed(3)
    x = torch.randn(5, 1, 16, 16, generator=g, dtype=torch.float64)
    roles = [Role.STRONG, Role.WEAK, Role.STRONG, Role.WEAK, Role.UNLABELED]
    truth = torch.randint(0, 2, (5, 16, 16), generator=g)
    init = torch.full((5, 16, 16), -1)
    init[1, 4:12, 4:12] = 1  # a box interior
    init[1][init[1] == -1] = 0  # outside it: certain background
    init[3, 8, 8] = 1  # a point; the rest unknown; row 4 unlabeled (all -1)
    certainty = torch.zeros(5, 16, 16, dtype=torch.uint8)
    certainty[1][init[1] == 0] = 1
    certainty[3, 8, 8] = 2
    batch = SimpleNamespace(ids=[f"i{k}" for k in range(5)], roles=roles, x=x, target=truth, init_label=init,
                            certainty=certainty)
    return batch, torch.tensor([1.0, 0.4, 1.0, 0.9, 1.0])


def _term(model, teacher=None, **settings):
    from types import SimpleNamespace

    from napari_hybridseg.core.network.device import resolve_device
    from napari_hybridseg.core.training.config import TrainConfig
    from napari_hybridseg.core.training.pixel_term import PixelWeightTerm

    config = TrainConfig(pixel_weights="exact", **settings)
    state = SimpleNamespace(config=config, nets=[model], dev=resolve_device("cpu", "fp32"), teacher=teacher,
                            rampup=1, start_step=0)
    return PixelWeightTerm(state)


def test_pixel_term_weights_only_non_strong_rows_and_equals_the_unrolled_reference():
    from napari_hybridseg.core.supervision.losses import strong_loss

    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    twin = copy.deepcopy(model)
    batch, gamma = _mixed_batch()
    term = _term(model, ple=True)
    logits = model(batch.x)
    pw = term.compute(1, batch, logits, gamma, 0.1)
    strong = ~pw.other
    assert strong.tolist() == [True, False, True, False, False]
    assert (pw.w_init[0][batch.certainty[1] != 0] == 0).all()  # held fixed outside the box
    assert float(pw.w_init.sum() + pw.w_own.sum()) == pytest.approx(1.0, abs=1e-5)
    known = batch.init_label[1] >= 0
    assert (pw.y_init[0][known] == batch.init_label[1][known]).all()  # the weak label where it speaks
    ref = unrolled_pixel_weights(twin, batch.x[pw.other], pw.y_init, pw.y_own, None, None, batch.x[strong],
                                 batch.target[strong], lambda z, y: strong_loss(z.float(), y).mean(), 0.1,
                                 sample_gamma=gamma[pw.other], fixed_init=batch.certainty[pw.other] != 0)
    assert rel_err(pw.w_init, ref[0].float()) < 1e-4 and rel_err(pw.w_own, ref[1].float()) < 1e-4
    # PLE's views, the refreshed snapshot and the JVP ran through copied buffers: BatchNorm moved only by
    # the ordinary forward of the batch above
    once = copy.deepcopy(twin)
    once(batch.x)
    for (name, b), q in zip(model.named_buffers(), once.buffers()):
        torch.testing.assert_close(b, q, msg=name)
    assert set(term.summary) == {"i1", "i3", "i4"}
    loss, terms = pw.loss_for(0, logits)
    loss.backward()
    assert model[0].weight.grad is not None and set(terms) == {"pixel"}


def test_pixel_term_with_teacher_and_consistency_gives_trainable_terms_for_network_one_only():
    from napari_hybridseg.core.methods.teacher import MeanTeacher

    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    batch, gamma = _mixed_batch()
    term = _term(model, teacher=MeanTeacher(model), ple=True, ple_consistency=True,
                 pixel_weights_fix_certain=False)
    logits = model(batch.x)
    pw = term.compute(1, batch, logits, gamma, 0.1)
    assert float(pw.extra["teacher"].detach()) >= 0 and float(pw.extra["ple"].detach()) > 0
    assert float(pw.w_init.sum() + pw.w_own.sum()) == pytest.approx(1.0, abs=1e-5)
    loss, terms = pw.loss_for(0, logits)
    assert set(terms) == {"pixel", "ple", "teacher"}
    assert set(pw.loss_for(1, logits)[1]) == {"pixel"}  # the second network takes the pixel term only
    loss.backward()
    term.after_update()
    batch.roles = [batch.roles[1]] * 5  # no strong row: no meta batch, no term
    assert term.compute(2, batch, logits.detach(), gamma, 0.1) is None


def test_equalised_meta_gradient_is_the_mean_of_unit_norm_per_image_gradients():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    loss = strong_loss_for(2)
    params = dict(model.named_parameters())
    buffers = {n: b.clone() for n, b in model.named_buffers()}
    v = [torch.zeros_like(p) for p in params.values()]
    for j in range(xs.shape[0]):
        out = torch.func.functional_call(model, {**params, **{k: b.clone() for k, b in buffers.items()}},
                                         (xs[j:j + 1],))
        g = torch.autograd.grad(loss(out, ys[j:j + 1]), list(params.values()))
        norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g))
        for acc, gi in zip(v, g):
            acc += gi.detach() / norm / xs.shape[0]
    ref = exact_pixel_weights(model, x, y_init, y_own, valid, None, xs, ys, loss, 0.1, meta_grad=v,
                              return_details=True)
    got = exact_pixel_weights(model, x, y_init, y_own, valid, None, xs, ys, loss, 0.1, equalise_strong=True,
                              return_details=True)
    assert rel_err(got.raw_init, ref.raw_init) < 1e-9 and rel_err(got.raw_own, ref.raw_own) < 1e-9
    plain = exact_pixel_weights(model, x, y_init, y_own, valid, None, xs, ys, loss, 0.1, return_details=True)
    assert rel_err(got.w_init, plain.w_init) > 1e-3  # a different direction, so different weights


def test_weights_without_the_graph_are_the_same_and_cost_no_backward():
    torch.manual_seed(0)
    model = tiny_bn_net().double().train()
    x, y_init, y_own, valid, xs, ys = batch(2)
    args = (model, x, y_init, y_own, valid, None, xs, ys, strong_loss_for(2), 0.1)
    with_graph = exact_pixel_weights(*args, return_details=True)
    without = exact_pixel_weights(*args, return_details=True, keep_graph=False)
    assert with_graph.logits.requires_grad and not without.logits.requires_grad
    assert torch.equal(with_graph.w_init, without.w_init) and torch.equal(with_graph.w_own, without.w_own)


def test_per_image_normalisation_keeps_gamma_as_each_images_mass():
    from napari_hybridseg.core.methods.pixel_costs import normalise_per_image

    raw_i = torch.tensor([[[1.0, -2.0], [3.0, 0.0]], [[5.0, 5.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, 0.0]]])
    raw_o = torch.tensor([[[0.0, 0.0], [0.0, 4.0]], [[0.0, 0.0], [0.0, 10.0]], [[0.0, -3.0], [0.0, 0.0]]])
    gamma = torch.tensor([1.0, 0.1, 1.0])
    a, b = normalise_per_image(raw_i, raw_o, gamma)
    mass = (a + b).flatten(1).sum(1)
    # image k carries gamma_k / B: a distrusted image keeps its low weight whatever its batch holds
    assert mass.tolist() == pytest.approx([1.0 / 3, 0.1 / 3, 0.0])
    assert float(a[0, 1, 0]) == pytest.approx(3.0 / 8 / 3)  # inside an image: the share of its positive mass
    assert (a >= 0).all() and (b >= 0).all()
    # the batch-wide normalisation gives the same batch the unit mass in proportion to gamma * raw
    w_i, w_o = normalise_weights(raw_i * gamma.view(-1, 1, 1), raw_o * gamma.view(-1, 1, 1))
    assert float((w_i + w_o).sum()) == pytest.approx(1.0)


def test_truth_mass_compares_the_weight_per_wrong_pixel_with_that_per_right_pixel():
    from napari_hybridseg.core.training.pixel_term import TruthMass

    ref = torch.tensor([[[1, 1], [0, -1]]], dtype=torch.int8)  # -1: no truth there
    y_init = torch.tensor([[[1, 0], [1, 1]]])  # wrong at (0,1) and (1,0)
    w_init = torch.tensor([[[0.1, 0.4], [0.2, 9.0]]])
    tm = TruthMass()
    assert tm.result() is None
    tm.add(ref, y_init, y_init, w_init, torch.zeros_like(w_init))
    res = tm.result()
    assert res["steps"] == 1
    assert res["init"]["wrong_vs_right"] == pytest.approx(((0.4 + 0.2) / 2) / 0.1)
    assert res["own"]["wrong_vs_right"] is None  # no weight on right y^ pixels
    # a pixel held fixed does not compete and is left out
    tm2 = TruthMass()
    free = torch.tensor([[[True, False], [True, True]]])
    tm2.add(ref, y_init, y_init, w_init, w_init, free)
    assert tm2.result()["wrong_vs_right"] == pytest.approx(0.2 / 0.1)


def test_a_run_records_its_training_pixel_weights_against_the_reference_masks(tmp_path):
    import json

    from _hybrid_data import make_collection

    from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
    from napari_hybridseg.core.training.trainer import train

    col = make_collection(n_strong=2, n_weak=4, n_corrupt=2)
    assert all(s.reference_mask is not None for s in col.weak)
    for normalise in ("batch", "image"):
        cfg = TrainConfig(model=ModelConfig(encoder_weights=None, input_size=32), steps=4, batch_size=4,
                          device="cpu", precision="fp32", threads=1, preview_every=0, checkpoint_every=0,
                          dcr=False, pixel_weights="exact", ple=False, teacher=False, seed=0,
                          **{"pixel.normalise": normalise})
        out = tmp_path / normalise
        for _ in train(col.copy(), cfg, out):
            pass
        truth = json.loads((out / "run.json").read_text())["pixel_weight_truth"]
        assert truth["steps"] == 4
        assert truth["init"]["n_wrong"] > 0 and truth["init"]["n_right"] > 0
        assert truth["wrong_vs_right"] is None or truth["wrong_vs_right"] >= 0


def test_initial_label_from_a_strong_set_model_keeps_the_weak_label_and_cuts_boxes_to_what_it_sees():
    from napari_hybridseg.core.methods.pixel_costs import initial_from_model
    from napari_hybridseg.core.supervision.targets import IGNORE, KNOWN_BG, KNOWN_FG, UNKNOWN

    # one row, 1 x 5: certain background, a box of class 2 over three pixels, a click of class 1
    init = torch.tensor([[[0, 2, 2, 2, 1]]])
    cert = torch.tensor([[[KNOWN_BG, UNKNOWN, UNKNOWN, UNKNOWN, KNOWN_FG]]])
    pred = torch.tensor([[[2, 2, 0, 1, 0]]])  # the model: class 2 at 0-1, background at 2, class 1 at 3
    logits = F.one_hot(pred, 3).permute(0, 3, 1, 2).float()
    got = initial_from_model(init, cert, logits, IGNORE, UNKNOWN)
    # certain pixels keep the label whatever the model says; the box keeps class 2 only where the model sees 2
    assert got.tolist() == [[[0, 2, 0, 0, 1]]]
    # where the label says nothing ("present" tag, unlabeled image) y~ is the model's prediction
    none = torch.full_like(init, IGNORE)
    assert initial_from_model(none, torch.full_like(cert, UNKNOWN), logits, IGNORE, UNKNOWN).tolist() == \
        pred.tolist()
    # one-channel (binary) logits: foreground where the logit is positive
    one = torch.tensor([[[[3.0, -1.0, 2.0, -2.0, -5.0]]]])
    assert initial_from_model(torch.tensor([[[0, 1, 1, 1, 1]]]), cert, one, IGNORE, UNKNOWN).tolist() == \
        [[[0, 0, 1, 0, 1]]]


def test_pixel_term_from_a_strong_set_model_waits_for_it_then_labels_from_one_frozen_snapshot(tmp_path):
    from _hybrid_data import make_collection

    from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
    from napari_hybridseg.core.training.reports import StepReport
    from napari_hybridseg.core.training.trainer import train

    col = make_collection(n_strong=2, n_weak=4, n_corrupt=2)
    cfg = TrainConfig(model=ModelConfig(encoder_weights=None, input_size=32), steps=8, batch_size=4,
                      device="cpu", precision="fp32", threads=1, preview_every=0, checkpoint_every=0,
                      dcr=False, pixel_weights="exact", ple=False, teacher=False, seed=0, warmup_steps=0,
                      **{"pixel.initial": "strong-model"})
    from napari_hybridseg.core.training.reports import StartReport

    reports = list(train(col.copy(), cfg))
    start = next(r for r in reports if isinstance(r, StartReport))
    assert any("pixel weights start after step 2" in n for n in start.notes)
    steps = [r for r in reports if isinstance(r, StepReport) and not r.paused]
    assert len(steps) == 8
    # the network counts as having learnt the strong masks after a quarter of the run (2 steps): no
    # pixel term before, one after
    assert ["pixel" in r.losses for r in steps] == [False, False] + [True] * 6
    # and a run that starts from a trained network takes the pixel term from its first step
    from napari_hybridseg.core.training.pixel_term import PixelWeightTerm

    class Stand:  # what PixelWeightTerm reads of a continued run's state
        config, init_from, start_step = cfg, tmp_path, 40

    assert PixelWeightTerm(Stand()).starts_after == 40
