"""Dynamic Instance Indicator: the gamma update, the tau rule, both scorers against plain autograd."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_hybridseg.core.methods.dii import GammaBank, default_tau, jvp_scores, last_layer_scores
from napari_hybridseg.core.network.models import build_model, decoder_features, forward, last_layer
from napari_hybridseg.core.supervision.losses import strong_loss, weak_losses
from napari_hybridseg.core.supervision.targets import IGNORE
from napari_hybridseg.core.training.config import ModelConfig


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def test_gamma_step_is_adam_then_clamp():
    bank = GammaBank(lr=0.1)
    bank.sync(["a", "b", "c"])
    ref = torch.nn.Parameter(torch.full((3,), 0.5, dtype=torch.float64))
    opt = torch.optim.Adam([ref], lr=0.1, betas=(0.9, 0.999), eps=1e-8)
    grads = [[-2.0, 0.3, 5.0], [-1.0, -0.2, 4.0], [0.5, 0.1, 3.0]]
    for g in grads:
        values = bank.step(dict(zip("abc", g)))
        opt.zero_grad()
        ref.grad = torch.tensor(g, dtype=torch.float64)
        opt.step()
        with torch.no_grad():
            ref.clamp_(0, 1)
        assert np.allclose([values[k] for k in "abc"], ref.detach().numpy(), atol=1e-12)
    # aligned (negative dL/dgamma) rises, opposed falls
    assert values["a"] > 0.5 > values["c"]


def test_gamma_stays_in_unit_interval():
    bank = GammaBank(lr=0.5)
    bank.sync(["x", "y"])
    for _ in range(10):
        bank.step({"x": -1.0, "y": 1.0})
    assert bank.value("x") == 1.0 and bank.value("y") == 0.0


def test_new_samples_start_at_init_and_removed_samples_drop_their_state():
    bank = GammaBank(init=0.5)
    bank.sync(["a", "b"])
    bank.step({"a": 1.0, "b": -1.0})
    bank.sync(["b", "new"])
    assert set(bank.states) == {"b", "new"}
    assert bank.value("new") == 0.5
    assert bank.value("b") > 0.5


def test_tau_rule_scales_with_the_collection_and_the_run():
    assert default_tau(4, 8) == 12  # ceil(10 + 40 / 24)
    assert default_tau(0, 8) == 10
    assert default_tau(900, 8) == 385
    assert default_tau(10_000, 8) == 400
    assert default_tau(900, 8, total_steps=60) == 15
    assert default_tau(20, 8) < default_tau(200, 8)


#: the default encoder (EfficientNet-Lite0, ImageNet: ReLU6, depthwise convolutions) and resnet18 from scratch
ENCODERS = [("tu-efficientnet_lite0", "imagenet"), ("resnet18", None)]


def _problem(dtype=torch.float64, encoder="tu-efficientnet_lite0", weights="imagenet"):
    torch.manual_seed(0)
    cfg = ModelConfig(encoder=encoder, encoder_weights=weights, classes=3, aux_classes=2, input_size=32)
    model = build_model(cfg, seed=0).to(dtype)
    # non-trivial BN statistics so that eval mode matters
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32, dtype=dtype))
    xs = torch.randn(3, 3, 32, 32, dtype=dtype)
    ys = torch.randint(0, 3, (3, 32, 32))
    xw = torch.randn(5, 3, 32, 32, dtype=dtype)
    yw = torch.full((5, 32, 32), IGNORE)
    yw[:, :8] = 0
    yw[1, 10:14, 10:14] = 2
    boxes = [np.array([[1, 4, 4, 20, 20]]), np.zeros((0, 5), np.int64), np.array([[2, 2, 3, 9, 30]]),
             np.array([[1, 0, 0, 32, 32], [2, 8, 8, 16, 16]]), np.zeros((0, 5), np.int64)]
    present = torch.zeros(5, 3, dtype=torch.bool)
    present[4, 1] = True
    tags = torch.full((5, 2), -1.0, dtype=dtype)
    tags[4] = torch.tensor([1.0, 0.0], dtype=dtype)

    def strong_fn(logits, aux):
        return strong_loss(logits, ys).mean()

    def instance_fn(logits, aux, idx):
        return weak_losses(logits.to(dtype), aux, yw[idx], [boxes[i] for i in idx], present[idx], tags[idx])["sum"]

    return model, xs, xw, strong_fn, instance_fn


def _autograd_loop(model, xs, xw, strong_fn, instance_fn, params):
    """The plain definition: one gradient per weak sample, dotted with the strong gradient."""
    was = model.training
    model.eval()
    logits, aux = forward(model, xs)
    g_s = torch.autograd.grad(strong_fn(logits, aux), params, allow_unused=True)
    out = []
    for k in range(xw.shape[0]):
        logits, aux = forward(model, xw[k:k + 1])
        g_k = torch.autograd.grad(instance_fn(logits, aux, [k]).sum(), params, allow_unused=True)
        out.append(sum((a * b).sum() for a, b in zip(g_s, g_k) if a is not None and b is not None))
    model.train(was)
    return torch.stack(out)


@pytest.mark.parametrize("encoder, weights", ENCODERS)
def test_jvp_scorer_matches_a_per_sample_autograd_loop(encoder, weights):
    model, xs, xw, strong_fn, instance_fn = _problem(encoder=encoder, weights=weights)
    ref = _autograd_loop(model, xs, xw, strong_fn, instance_fn, list(model.parameters()))
    got = jvp_scores(model, xs, strong_fn, xw, instance_fn, chunk=2)
    assert model.training  # restored
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max())
    assert (ref.abs() > 0).all()


@pytest.mark.parametrize("encoder, weights", ENCODERS)
def test_last_layer_scorer_matches_autograd_on_the_head(encoder, weights):
    model, xs, xw, strong_fn, instance_fn = _problem(encoder=encoder, weights=weights)
    head = list(last_layer(model).parameters())
    ref = _autograd_loop(model, xs, xw, strong_fn, instance_fn, head)
    got = last_layer_scores(model, xs, strong_fn, xw, instance_fn, chunk=3)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max())


@pytest.mark.parametrize("encoder, weights", ENCODERS)
def test_cosine_scores_divide_by_each_weak_images_own_head_gradient_norm(encoder, weights):
    """dii.weak_norm: g_S . g_k / ||g_k||, with g_k the autograd gradient of k's loss through the head."""
    model, xs, xw, strong_fn, instance_fn = _problem(encoder=encoder, weights=weights)
    head = list(last_layer(model).parameters())
    dots = _autograd_loop(model, xs, xw, strong_fn, instance_fn, head)
    model.eval()
    norms = []
    for k in range(xw.shape[0]):
        logits, aux = forward(model, xw[k:k + 1])
        g_k = torch.autograd.grad(instance_fn(logits, aux, [k]).sum(), head, allow_unused=True)
        norms.append(torch.sqrt(sum((g ** 2).sum() for g in g_k if g is not None)))
    model.train()
    ref = dots / torch.stack(norms)
    got = last_layer_scores(model, xs, strong_fn, xw, instance_fn, chunk=2, cosine=True)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max())
    # a label pulling the same way twice as hard scores the same: only the direction counts
    twice = last_layer_scores(model, xs, strong_fn, xw, lambda z, a, idx: 2 * instance_fn(z, a, idx), chunk=2,
                              cosine=True)
    assert torch.allclose(twice, got, rtol=1e-6, atol=1e-9)
    assert not torch.allclose(last_layer_scores(model, xs, strong_fn, xw, instance_fn, chunk=2), got)


def test_weak_norm_needs_the_last_layer_scorer():
    from napari_hybridseg.core.errors import ConfigError
    from napari_hybridseg.core.training.config_sections import DIIConfig

    assert DIIConfig(weak_norm=True, strong_objective="margin").weak_norm
    with pytest.raises(ConfigError, match="weak_norm"):
        DIIConfig(weak_norm=True, scorer="jvp")
    with pytest.raises(ConfigError, match="strong_objective"):
        DIIConfig(strong_objective="hinge")


def test_scores_do_not_depend_on_the_batching():
    model, xs, xw, strong_fn, instance_fn = _problem()
    a = last_layer_scores(model, xs, strong_fn, xw, instance_fn, chunk=1)
    b = last_layer_scores(model, xs, strong_fn, xw, instance_fn, chunk=5)
    assert torch.allclose(a, b, rtol=1e-6, atol=1e-10)


def test_score_normalisation_keeps_sign_and_ratios_but_not_scale():
    from napari_hybridseg.core.methods.dii import normalise_scores

    big = torch.tensor([3000.0, -1000.0, 500.0])
    out = normalise_scores(big)
    assert torch.allclose(out, normalise_scores(big / 1000))
    assert torch.allclose(out.pow(2).mean(), torch.tensor(1.0))
    assert torch.equal(out.sign(), big.sign()) and out[0] / out[1] == pytest.approx(-3.0)


def test_equalised_strong_gradient_is_the_mean_of_unit_norm_per_image_gradients():
    # resnet18 from scratch: on these noise images the pretrained encoder's per-image gradients are near parallel,
    # so the "not the plain mean" check below would have nothing to tell apart
    model, xs, xw, strong_fn, instance_fn = _problem(encoder="resnet18", weights=None)
    ys = torch.randint(0, 3, (3, 32, 32), generator=torch.Generator().manual_seed(1))

    def per_image(logits, aux):
        return strong_loss(logits, ys)

    head = list(last_layer(model).parameters())
    model.eval()
    with torch.no_grad():
        feats = decoder_features(model, xs)
    g_dir = [torch.zeros_like(p) for p in head]
    for j in range(3):
        z = model.segmentation_head(feats[j:j + 1])
        g = torch.autograd.grad(strong_loss(z, ys[j:j + 1]).sum(), head)
        norm = torch.sqrt(sum(gi.pow(2).sum() for gi in g))
        for acc, gi in zip(g_dir, g):
            acc += gi / norm / 3
    ref = []
    for k in range(xw.shape[0]):
        z = model.segmentation_head(decoder_features(model, xw[k:k + 1]))
        g_k = torch.autograd.grad(instance_fn(z, None, [k]).sum(), head)
        ref.append(sum((a * b).sum() for a, b in zip(g_dir, g_k)))
    model.train()
    ref = torch.stack(ref)
    got = last_layer_scores(model, xs, per_image, xw, instance_fn, chunk=2, equalise=True)
    assert torch.allclose(got, ref, rtol=1e-6, atol=1e-8 * ref.abs().max())
    # and not the same direction as the plain mean gradient
    plain = last_layer_scores(model, xs, lambda z, a: per_image(z, a).mean(), xw, instance_fn, chunk=2)
    assert not torch.allclose(got / got.norm(), plain / plain.norm(), atol=1e-3)


def test_bf16_features_give_nearly_the_float32_scores():
    model, xs, xw, strong_fn, instance_fn = _problem(torch.float32)
    fp32 = last_layer_scores(model, xs, strong_fn, xw, instance_fn)
    bf16 = last_layer_scores(model, xs, strong_fn, xw, instance_fn,
                             feature_autocast=lambda: torch.autocast("cpu", dtype=torch.bfloat16))
    assert fp32.dtype == bf16.dtype == torch.float32
    assert not torch.equal(fp32, bf16)  # the features did run in bf16
    assert torch.corrcoef(torch.stack([fp32, bf16]))[0, 1] > 0.99


# -- the evidence rule (dii.update="evidence", the default) ------------------------------------------------------
def test_robust_z_standardises_within_each_stratum_and_lets_the_minority_stand_out():
    from napari_hybridseg.core.methods.dii import robust_z

    rng = np.random.default_rng(0)
    # two strata on different scales and centres (e.g. "present" and "absent" tags under a foreground bias)
    a = np.r_[rng.normal(5.0, 1.0, 40), [-5.0, -6.0]]  # two outliers far below their stratum
    b = rng.normal(-100.0, 10.0, 40)
    z = np.array(robust_z(np.r_[a, b], ["a"] * len(a) + ["b"] * len(b)))
    za, zb = z[: len(a)], z[len(a):]
    assert abs(np.median(za)) < 1e-9 and abs(np.median(zb)) < 1e-9  # each stratum centred on its own median
    assert 0.6 < np.std(zb) < 1.6  # and on its own spread, whatever the scale
    assert za[-2:].max() < -5  # the outliers stand out; the median and MAD ignore them
    # without strata the second stratum's offset decides everything
    pooled = np.array(robust_z(np.r_[a, b], ["x"] * (len(a) + len(b))))
    assert pooled[len(a):].max() < pooled[: len(a) - 2].min()


def test_robust_z_pools_small_strata_and_gives_no_evidence_without_spread():
    from napari_hybridseg.core.methods.dii import robust_z

    z = robust_z([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], ["a", "b", "c", "a", "b", "c"], min_size=3)
    assert z == robust_z([1.0, 2.0, 3.0, 4.0, 5.0, 6.0], ["x"] * 6)  # every stratum too small: one pool
    assert robust_z([2.0, 2.0, 2.0, 2.0], ["a"] * 4) == [0.0] * 4
    assert robust_z([1.0, 9.0], ["a", "a"]) == [0.0, 0.0]  # fewer than 3: no evidence
    with pytest.raises(ValueError):
        robust_z([1.0, 2.0], ["a"])


def test_evidence_bank_accumulates_the_magnitude_not_only_the_sign():
    from napari_hybridseg.core.methods.dii import EvidenceBank

    bank = EvidenceBank(init=0.5, decay=0.5, outlier_z=3.0)
    bank.sync(["clean", "wrong", "noisy"], initial={"noisy": 0.8})
    assert bank.values() == {"clean": 0.5, "wrong": 0.5, "noisy": 0.8}  # nothing counted yet: where they started
    v = bank.observe({"clean": 0.4, "wrong": -4.5, "noisy": -0.3})
    assert v["clean"] == 1.0 and v["wrong"] == 0.0 and v["noisy"] == pytest.approx(0.9)
    # one contrary update halves the evidence, it does not flip the weight (EMA, decay 0.5)
    v = bank.observe({"clean": -1.2, "wrong": 0.0, "noisy": -0.3})
    assert v["clean"] == pytest.approx(1 + (0.5 * 0.4 - 0.5 * 1.2) / 3)
    assert v["wrong"] == pytest.approx(max(0.0, 1 - 2.25 / 3))
    assert all(0.0 <= x <= 1.0 for x in v.values())
    bank.sync(["clean", "new"])
    assert set(bank.values()) == {"clean", "new"} and bank.value("new") == 0.5


def test_label_strata_follow_the_label_kind_and_the_tag_value():
    from types import SimpleNamespace

    from napari_hybridseg.core.training.dii_term import label_stratum

    def prep(present, absent):
        return SimpleNamespace(present=torch.tensor(present), absent=torch.tensor(absent))

    none = prep([False, False, False], [False, False, False])
    assert label_stratum(SimpleNamespace(boxes=[1], points=[1]), none) == "box"
    assert label_stratum(SimpleNamespace(boxes=[], points=[1]), none) == "point"
    tags = SimpleNamespace(boxes=[], points=[])
    assert label_stratum(tags, prep([False, True, False], [False, False, True])) == "tag:pa"
    assert label_stratum(tags, prep([False, False, False], [False, True, False])) == "tag:a-"
    assert label_stratum(tags, none) == "other"
    # dii.tag_objective=margin: every tag in one stratum, whatever its value
    assert label_stratum(tags, prep([False, True, False], [False, False, True]), by_tag_value=False) == "tag"
    assert label_stratum(tags, prep([False, False, False], [False, True, False]), by_tag_value=False) == "tag"
    assert label_stratum(SimpleNamespace(boxes=[1], points=[]), none, by_tag_value=False) == "box"


def test_strong_dice_pools_images_ignores_ignored_pixels_and_averages_classes():
    from napari_hybridseg.core.training.dii_term import strong_dice

    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2, :2] = 1  # 4 pixels of class 1
    target[1, 0, 0] = IGNORE
    logits = torch.zeros(2, 3, 4, 4)
    logits[0, 1, :2, :1] = 5.0  # 2 of the 4 found
    logits[1, 2, 0, 0] = 5.0  # class 2 predicted on an ignored pixel: does not count
    assert strong_dice(logits, target) == pytest.approx(2 * 2 / (2 + 4))
    assert strong_dice(torch.zeros(1, 2, 3, 3), torch.zeros(1, 3, 3, dtype=torch.long)) == 1.0


def test_the_update_rule_and_its_settings_are_validated_with_the_field_named():
    from napari_hybridseg.core.errors import ConfigError
    from napari_hybridseg.core.training.config import TrainConfig, apply_overrides

    cfg = TrainConfig()
    assert cfg.dii.update == "evidence" and cfg.dii.gate_dice == 0.5
    assert apply_overrides(cfg, ["dii.update=adam"]).dii.update == "adam"
    for bad, field in (("dii.update=sgd", "dii.update"), ("dii.outlier_z=0", "dii.outlier_z"),
                       ("dii.gate_dice=1.5", "dii.gate_dice"), ("dii.decay=-0.1", "dii.decay")):
        with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
            apply_overrides(cfg, [bad])


# -- in-batch scoring (dii.scoring=batch) ------------------------------------------------------------


def test_in_batch_scores_are_the_head_gradient_dot_products_of_a_training_forward():
    """head_scores on features captured from a train-mode forward = autograd on the head, per row."""
    from napari_hybridseg.core.methods.dii import head_scores, strong_head_gradient

    model, xs, xw, strong_fn, instance_fn = _problem()
    head_params = list(last_layer(model).parameters())
    g_head = strong_head_gradient(model, xs, strong_fn)
    assert model.training
    model.train()
    feats = []
    hook = model.segmentation_head.register_forward_pre_hook(lambda _m, args: feats.append(args[0]))
    logits, _ = forward(model, xw)  # train mode: BatchNorm of this batch, as in a training step
    hook.remove()
    got = head_scores(model.segmentation_head, g_head, feats[0], lambda z: instance_fn(z, None, list(range(len(z)))))
    # the definition: gradient of row k's own loss through the head only, features as the forward made them
    names = [n for n, _ in model.segmentation_head.named_parameters()]
    ref = []
    for k in range(xw.shape[0]):
        z = model.segmentation_head(feats[0][k:k + 1].detach())
        g_k = torch.autograd.grad(instance_fn(z, None, [k]).sum(), head_params)
        ref.append(sum((g_head[n] * g).sum() for n, g in zip(names, g_k)))
    ref = torch.stack(ref)
    assert torch.allclose(got, ref, rtol=1e-4, atol=1e-4 * ref.abs().max())
    assert (ref.abs() > 0).all()


def test_stratum_reference_waits_for_enough_scores_then_standardises_each_stratum_alone():
    from napari_hybridseg.core.methods.dii import StratumReference

    ref = StratumReference(size=8, min_ref=4)
    assert ref.add(["a", "b"], [1.0, 2.0], ["box", "box"]) == []  # 2 < 4: they wait
    out = dict(ref.add(["c", "d", "t"], [3.0, 4.0, 100.0], ["box", "box", "tag:p"]))
    assert set(out) == {"a", "b", "c", "d"}  # the waiting ones standardised with the new ones; the tag waits
    assert out["a"] < out["b"] < 0 < out["c"] < out["d"]
    assert out["a"] == pytest.approx(-out["d"])  # median 2.5 of 1..4
    # a far score in another stratum does not move this one's centre
    more = dict(ref.add(["e"], [2.5], ["box"]))
    assert more["e"] == pytest.approx(0.0)
    ref.reset()  # a new g_S: a new scale
    assert ref.add(["f"], [1e6], ["box"]) == []


def test_in_batch_scoring_needs_the_last_layer_scorer_and_the_evidence_rule():
    from napari_hybridseg.core.errors import ConfigError
    from napari_hybridseg.core.training.config_sections import DIIConfig

    assert DIIConfig(scoring="batch").scoring == "batch"
    with pytest.raises(ConfigError, match="dii.scoring"):
        DIIConfig(scoring="batch", scorer="jvp")
    with pytest.raises(ConfigError, match="dii.scoring"):
        DIIConfig(scoring="batch", update="adam")
    with pytest.raises(ConfigError, match="dii.scoring"):
        DIIConfig(scoring="often")
    with pytest.raises(ConfigError, match="dii.final"):
        DIIConfig(scoring="batch", final="some")
