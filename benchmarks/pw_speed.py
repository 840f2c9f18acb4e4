"""Step-time measurement of the pixel weights: a plain step vs exact (JVP) weights vs the unrolled original.

Run ``python benchmarks/pw_speed.py`` from the repository root (defaults: smp Unet/resnet18,
128 px, batch 8 of which 2 strong, fp32, 2 warm-up + 5 timed steps per mode).
It prints the median seconds per step of each mode and its ratio to the plain
step. Figures taken while other jobs share the CPU are disturbed: say so when
quoting them.

Modes (all end with one optimiser step on the same batch):

``plain``
    CE on the strong images + mean CE of the weak images against y~; no
    pixel weights (the step the weights are added to).
``exact-shared``
    The cheap form the trainer should use when the virtual step has no
    unweighted terms (theta' = theta): the strong loss's gradient at theta is
    both the meta gradient v and the strong part of the real gradient, so it
    is taken once; the weak batch's forward is the JVP's dual forward, reused
    for the real loss.
``exact``
    :func:`exact_pixel_weights` as a black box (its own meta forward/backward
    at theta'), then a real step that reuses its logits.
``unrolled``
    :func:`unrolled_pixel_weights` (the original: differentiable virtual step,
    backward to eps), then an ordinary real step.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from napari_hybridseg.core.methods.pixel_weights import exact_pixel_weights, pixel_costs, unrolled_pixel_weights

__all__ = ["MODES", "main", "measure"]

MODES = ("plain", "exact-shared", "exact", "unrolled")


def _setup(arch: str, encoder: str, size: int, batch: int, n_strong: int, seed: int):
    import segmentation_models_pytorch as smp

    torch.manual_seed(seed)
    model = getattr(smp, arch)(encoder_name=encoder, encoder_weights=None, in_channels=3, classes=2).train()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 3, size, size, generator=g)
    y = torch.randint(0, 2, (batch, size, size), generator=g)
    y_own = torch.randint(0, 2, (batch - n_strong, size, size), generator=g)
    return model, x[:n_strong], y[:n_strong], x[n_strong:], y[n_strong:], y_own


def _steps(model, xs, ys, xw, yw, y_own, lr) -> dict[str, Callable[[], None]]:
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    ce = F.cross_entropy

    def plain():
        z = model(torch.cat([xs, xw]))
        loss = ce(z[: len(xs)], ys) + ce(z[len(xs) :], yw)
        opt.zero_grad()
        loss.backward()
        opt.step()

    def exact_shared():
        params = [p for p in model.parameters() if p.requires_grad]
        loss_s = ce(model(xs), ys)
        v = torch.autograd.grad(loss_s, params, allow_unused=True)
        v = [g if g is not None else torch.zeros_like(p) for g, p in zip(v, params)]
        pw = exact_pixel_weights(model, xw, yw, y_own, None, None, xs, ys, ce, lr, meta_grad=v,
                                 return_details=True, update_buffers=True)
        c_init, c_own = pixel_costs(pw.logits, yw, y_own)
        opt.zero_grad()
        (pw.w_init * c_init + pw.w_own * c_own).sum().backward()
        for p, g in zip(params, v):
            p.grad = g if p.grad is None else p.grad + g
        opt.step()

    def exact():
        pw = exact_pixel_weights(model, xw, yw, y_own, None, None, xs, ys, ce, lr,
                                 return_details=True, update_buffers=True)
        c_init, c_own = pixel_costs(pw.logits, yw, y_own)
        loss = ce(model(xs), ys) + (pw.w_init * c_init + pw.w_own * c_own).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    def unrolled():
        w_init, w_own = unrolled_pixel_weights(model, xw, yw, y_own, None, None, xs, ys, ce, lr)
        z = model(torch.cat([xs, xw]))
        c_init, c_own = pixel_costs(z[len(xs) :], yw, y_own)
        loss = ce(z[: len(xs)], ys) + (w_init * c_init + w_own * c_own).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()

    return {"plain": plain, "exact-shared": exact_shared, "exact": exact, "unrolled": unrolled}


def measure(
    modes: tuple[str, ...] = MODES,
    *,
    arch: str = "Unet",
    encoder: str = "resnet18",
    size: int = 128,
    batch: int = 8,
    n_strong: int = 2,
    warmup: int = 2,
    steps: int = 5,
    lr: float = 1e-2,
    seed: int = 0,
) -> dict[str, tuple[float, float]]:
    """Median seconds per step of each mode (same model, batch and settings): {mode: (wall, cpu)}.

    CPU seconds (process time, all threads) are less disturbed than wall
    seconds when other jobs share the machine; with one thread they are the
    better figure to compare modes under load.
    """
    unknown = set(modes) - set(MODES)
    if unknown:
        raise ValueError(f"unknown mode(s) {sorted(unknown)}; choose from {MODES}")
    if not 0 < n_strong < batch:
        raise ValueError(f"n_strong must be between 1 and batch - 1 ({batch - 1}), got {n_strong}")
    out = {}
    for mode in modes:
        fns = _steps(*_setup(arch, encoder, size, batch, n_strong, seed), lr)
        wall, cpu = [], []
        for i in range(warmup + steps):
            t0, c0 = time.perf_counter(), time.process_time()
            fns[mode]()
            if i >= warmup:
                wall.append(time.perf_counter() - t0)
                cpu.append(time.process_time() - c0)
        out[mode] = (statistics.median(wall), statistics.median(cpu))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/pw_speed.py",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("--arch", default="Unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--strong", type=int, default=2, help="strong images in the batch (the meta batch)")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--quality", action="store_true",
                        help="run the synthetic quality comparisons (fixed pixels, teacher, last layer) instead")
    parser.add_argument("--seeds", type=int, default=3, help="seeds for --quality")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.quality:
        quality_main(args.seeds)
        return 0
    modes = tuple(m.strip() for m in args.modes.split(",") if m.strip())
    print(f"pixel-weight step time: {args.arch}/{args.encoder}, {args.size} px, batch {args.batch} "
          f"({args.strong} strong), fp32, cpu, {torch.get_num_threads()} threads, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    base = None
    for mode in modes:  # one mode at a time so that each figure shows as soon as it exists
        wall, cpu = measure((mode,), arch=args.arch, encoder=args.encoder, size=args.size, batch=args.batch,
                            n_strong=args.strong, warmup=args.warmup, steps=args.steps)[mode]
        base = (wall, cpu) if mode == "plain" else base
        ratio = f"  ({wall / base[0]:.2f}x plain wall, {cpu / base[1]:.2f}x plain cpu)" if base else ""
        print(f"  {mode:<13} {wall:8.3f} s/step wall  {cpu:8.3f} s/step cpu{ratio}", flush=True)
    if os.getloadavg()[0] > 0.5 + torch.get_num_threads():
        print(f"  note: load average {os.getloadavg()[0]:.1f}: other jobs share the CPU, figures are disturbed")
    return 0



# -- quality experiments (small, synthetic, CPU seconds) -------------------------------------
def _tiny_net(classes: int = 2) -> torch.nn.Module:
    nn = torch.nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, 16, 3, padding=4, dilation=4), nn.BatchNorm2d(16), nn.ReLU(),
        nn.Conv2d(16, classes, 1),
    )


def box_collection(n_strong: int = 4, n_weak: int = 12, n_test: int = 8, size: int = 32, noise: float = 0.3,
                   seed: int = 0) -> dict[str, torch.Tensor]:
    """Ellipses on noise; weak labels are boxes (filled = y~, outside = certain background).

    A fraction ``noise`` of the boxes is corrupted (inflated 2x or moved off
    the object); ``wrong`` marks the pixels where y~ differs from the truth.
    """
    g = torch.Generator().manual_seed(seed)
    rr, cc = torch.meshgrid(torch.arange(size).float(), torch.arange(size).float(), indexing="ij")
    n = n_strong + n_weak + n_test
    xs, ys = [], []
    for _ in range(n):
        ry, rx = (size * (0.08 + 0.1 * torch.rand(2, generator=g))).tolist()
        cy, cx = (size * (0.3 + 0.4 * torch.rand(2, generator=g))).tolist()
        m = ((rr - cy) / ry) ** 2 + ((cc - cx) / rx) ** 2 <= 1
        tex = 0.25 * torch.randn(size, size, generator=g)
        xs.append((0.8 * m.float() + tex)[None])
        ys.append(m.long())
    x, y = torch.stack(xs), torch.stack(ys)
    w = slice(n_strong, n_strong + n_weak)
    init = torch.zeros_like(y[w])
    certain = torch.ones_like(init, dtype=torch.bool)
    corrupted = torch.rand(n_weak, generator=g) < noise
    for i, t in enumerate(y[w]):
        r = torch.nonzero(t.any(1)).flatten()
        c = torch.nonzero(t.any(0)).flatten()
        r0, r1, c0, c1 = int(r[0]), int(r[-1]) + 1, int(c[0]), int(c[-1]) + 1
        if corrupted[i]:
            if torch.rand(1, generator=g) < 0.5:  # inflate 2x about the centre
                h2, w2 = (r1 - r0 + 1) // 2, (c1 - c0 + 1) // 2
                r0, r1, c0, c1 = max(0, r0 - h2), min(size, r1 + h2), max(0, c0 - w2), min(size, c1 + w2)
            else:  # move to the opposite side, off the object
                dy = size // 2 if r0 < size // 2 else -size // 2
                dx = size // 2 if c0 < size // 2 else -size // 2
                r0, r1 = max(0, r0 + dy), min(size, r1 + dy)
                c0, c1 = max(0, c0 + dx), min(size, c1 + dx)
        init[i, r0:r1, c0:c1] = 1
        certain[i, r0:r1, c0:c1] = False
    return {
        "x_strong": x[:n_strong], "y_strong": y[:n_strong], "x_weak": x[w], "truth_weak": y[w],
        "init": init, "certain": certain, "wrong": init != y[w], "corrupted": corrupted,
        "x_test": x[n_strong + n_weak :], "y_test": y[n_strong + n_weak :],
    }


def _dice(pred: torch.Tensor, truth: torch.Tensor) -> float:
    inter = (pred.bool() & truth.bool()).flatten(1).sum(1).float()
    denom = (pred.bool().flatten(1).sum(1) + truth.bool().flatten(1).sum(1)).float()
    return float(torch.where(denom > 0, 2 * inter / denom.clamp_min(1), torch.ones_like(denom)).mean())


def quality_run(*, weights: str = "exact", fix_certain: bool = True, teacher: str = "off", steps: int = 60,
                seed: int = 0, lr: float = 1e-2, last_layer_every: int = 0) -> dict[str, float]:
    """Train a tiny net on :func:`box_collection`; weight-quality and Dice figures.

    ``weights``: ``"exact"`` (MLB pixel weights) or ``"uniform"`` (every
    taking-part pixel of both targets weighs the same: the baseline).
    ``teacher``: ``"off"``; ``"mse"`` (the original: teacher MSE in the
    virtual step and the real loss); ``"ple"`` (y^ from the teacher's PLE, no
    MSE). ``last_layer_every > 0`` also correlates the exact raw weights with
    the last-layer-only ones every that many steps.

    Figures over the last quarter of the steps, on the pixels that take part
    (all, or the unknown ones with ``fix_certain``): ``wrong_share`` (share of
    those pixels where y~ is wrong), ``w_mass_on_wrong`` (share of the y~
    weight mass there; uniform weights give ``wrong_share``),
    ``per_pixel_wrong_vs_right`` (mean y~ weight of a wrong pixel over that of
    a right one: < 1 means down-weighted), ``pos_wrong`` / ``pos_right``
    (fraction with a positive weight), ``map_step_corr`` (correlation of
    consecutive steps' y~ maps: stability).
    """
    from napari_hybridseg.core.methods.ple import enhance
    from napari_hybridseg.core.methods.teacher import MeanTeacher

    if weights not in ("exact", "uniform"):
        raise ValueError(f"weights must be 'exact' or 'uniform', not {weights!r}")
    d = box_collection(seed=seed)
    torch.manual_seed(seed)
    model = _tiny_net().train()
    opt = torch.optim.Adam(model.parameters(), lr)
    mt = MeanTeacher(model) if teacher != "off" else None
    ce = F.cross_entropy
    xw, init, certain, wrong = d["x_weak"], d["init"], d["certain"], d["wrong"]
    fixed = certain if fix_certain else None
    part = ~certain if fix_certain else torch.ones_like(certain)
    g = torch.Generator().manual_seed(seed + 1)
    rec: dict[str, list[float]] = {k: [] for k in ("mass", "ratio", "pos_wrong", "pos_right", "stab", "ll")}
    prev = None
    last = dict(list(model.named_parameters())[-2:])
    for step in range(steps):
        with torch.no_grad():
            src = mt.model if teacher == "ple" else model
            own = enhance(src, xw, generator=g, with_consistency=False).y_hat
        virtual = (lambda fwd: mt.mse(fwd(xw), xw)) if teacher == "mse" else None
        if weights == "exact":
            pw = exact_pixel_weights(model, xw, init, own, None, None, d["x_strong"], d["y_strong"], ce, lr,
                                     fixed_init=fixed, virtual_loss_fn=virtual, return_details=True,
                                     update_buffers=True)
            w_init, w_own, logits = pw.w_init, pw.w_own, pw.logits
        else:
            logits = model(xw)
            w_init = part.float() / (2 * part.sum())
            w_own = w_init
        if last_layer_every and weights == "exact" and step % last_layer_every == 0:
            ll = exact_pixel_weights(model, xw, init, own, None, None, d["x_strong"], d["y_strong"], ce, lr,
                                     fixed_init=fixed, params=last, return_details=True)
            rec["ll"].append(float(torch.corrcoef(torch.stack([pw.raw_init[part], ll.raw_init[part]]))[0, 1]))
        c_init, c_own = pixel_costs(logits, init, own)
        loss = ce(model(d["x_strong"]), d["y_strong"]) + (w_init * c_init + w_own * c_own).sum()
        if fix_certain:  # held-fixed pixels keep their certain label through the partial CE
            target = torch.where(certain, init, torch.full_like(init, -1))
            loss = loss + ce(logits, target, ignore_index=-1)
        if teacher == "mse":
            loss = loss + mt.mse(logits, xw)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if mt is not None:
            mt.update(model)
        if step >= steps - max(1, steps // 4):
            wi = w_init.detach()
            bad, good = wrong & part, ~wrong & part
            if float(wi.sum()) > 0:
                rec["mass"].append(float(wi[bad].sum() / wi.sum()))
                rec["ratio"].append(float(wi[bad].mean() / wi[good].mean().clamp_min(1e-30)))
            rec["pos_wrong"].append(float((wi[bad] > 0).float().mean()))
            rec["pos_right"].append(float((wi[good] > 0).float().mean()))
            cur = wi[part]
            if prev is not None and cur.std() > 0 and prev.std() > 0:
                rec["stab"].append(float(torch.corrcoef(torch.stack([prev, cur]))[0, 1]))
            prev = cur
    model.eval()
    with torch.no_grad():
        dice_test = _dice(model(d["x_test"]).argmax(1), d["y_test"])
        dice_weak = _dice(model(xw).argmax(1), d["truth_weak"])

    def mean(key: str) -> float:
        return statistics.fmean(rec[key]) if rec[key] else float("nan")

    out = {
        "dice_test": dice_test,
        "dice_weak": dice_weak,
        "wrong_share": float(wrong[part].float().mean()),
        "w_mass_on_wrong": mean("mass"),
        "per_pixel_wrong_vs_right": mean("ratio"),
        "pos_wrong": mean("pos_wrong"),
        "pos_right": mean("pos_right"),
        "map_step_corr": mean("stab"),
    }
    if rec["ll"]:
        out["last_layer_corr"] = mean("ll")
    return out


def quality_main(seeds: int = 3, steps: int = 60) -> None:
    """Print the baseline, fixed-pixels, teacher and last-layer comparisons (mean over seeds)."""
    runs = {
        "uniform  fix_certain=True  teacher=off": dict(weights="uniform", fix_certain=True),
        "exact    fix_certain=True  teacher=off": dict(fix_certain=True, last_layer_every=10),
        "exact    fix_certain=False teacher=off": dict(fix_certain=False),
        "exact    fix_certain=True  teacher=mse": dict(fix_certain=True, teacher="mse"),
        "exact    fix_certain=True  teacher=ple": dict(fix_certain=True, teacher="ple"),
    }
    print(f"pixel-weight quality: box_collection (32 px, 12 weak boxes, 30% corrupted), tiny BN net, "
          f"{steps} steps, mean of {seeds} seeds", flush=True)
    for name, kw in runs.items():
        res = [quality_run(steps=steps, seed=s, **kw) for s in range(seeds)]
        mean = {k: statistics.fmean(r[k] for r in res) for k in res[0]}
        print(f"  {name}: " + ", ".join(f"{k} {v:.3f}" for k, v in mean.items()), flush=True)

if __name__ == "__main__":
    raise SystemExit(main())
