"""DII scores offline: train once, save checkpoints, then score them with each variant in seconds.

Issue 14 asks for a per-image score that finds wrong weak labels (AUROC clean vs
corrupted) without the common mode that dominates ``g_S . g_k`` today. This
script trains the benchmark's ``naive`` arm (every weak label at weight 1) on a
benchmark split, keeps the network at several steps, and then, for every
checkpoint, computes each weak image's gradient of its own weak loss through
the segmentation head (an explicit vector, ~290 numbers for the 3x3 head) and
each strong image's gradient of its strong loss. Every variant is then linear
algebra on those vectors:

* ``dot-eq``: ``g_k . g_S`` with ``g_S`` the mean of unit-norm strong gradients (today's default);
* ``dot-mean``: ``g_k . g_S`` with ``g_S`` the gradient of the mean strong loss (the published form);
* ``gn-LAM``: ``g_k^T (G + lam I)^-1 g_S``, ``G`` the head's Gauss-Newton matrix over the strong pixels
  (DII's formula with the real curvature instead of the identity), ``lam`` relative to ``tr(G)/P``;
* ``proj-mean``: ``g_k`` without its component along the weak set's mean gradient, dotted with ``g_S``
  (the common mode "more / less foreground everywhere" removed; subtracting the mean itself would only
  shift every score by one constant);
* ``proj-pc1``: the same along the first principal direction of the weak gradients;
* ``cos``: the cosine of ``g_k`` and ``g_S``;
* ``nobias``: the dot product without the head's bias entries;
* ``strat``: ``dot-eq`` standardised within strata: thirds of label size (box area, point count) or,
  for tags, the tag value (``strat-gn``: the same for ``gn-0.01``);
* ``gn-proj``: the Gauss-Newton score of the ``proj-mean`` gradients.
* ``lin``: ``g_k . g_S`` with ``g_S`` from the non-saturating, class-balanced margin objective
  (``dii.strong_objective=margin``), ``lin-cos`` its cosine, ``strat-lin`` / ``strat-lin-cos`` the same
  standardised within strata.

Baselines (no DII): ``-size`` (small labels trusted), ``-loss`` (each weak image's own loss under the
model: high loss, wrong label). Higher score = more trusted; AUROC is P(score clean > score corrupted).

    python benchmarks/dii_offline.py train ../shared/data/Kvasir-SEG --layout kvasir --weak box --out runs/dii-off
    python benchmarks/dii_offline.py score runs/dii-off           # table per checkpoint and variant

Lab code: the package never imports it.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def _settings(args):
    from napari_hybridseg.core.bench.settings import BenchSettings

    return BenchSettings(dataset=args.dataset, layout=args.layout, out=str(Path(args.out) / "bench"),
                         weak=args.weak, seed=args.seed, strong_fraction=args.strong_fraction, noise=0.3,
                         limit=args.limit)


def _base_config(args, **changes):
    from napari_hybridseg.core.bench.arms import arm_config
    from napari_hybridseg.core.training.config import TrainConfig

    base = TrainConfig(steps=args.steps, seed=args.seed, precision="fp32", preview_every=10**9, threads=1,
                       checkpoint_every=args.every, checkpoint_minutes=0)
    return arm_config(base, "naive").replace(**changes)


def train(args) -> int:
    from napari_hybridseg.core.bench.data import prepare
    from napari_hybridseg.core.training.reports import CheckpointReport, StepReport
    from napari_hybridseg.core.training.trainer import run

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    prep = prepare(_settings(args))
    (out / "split.json").write_text(json.dumps({"args": vars(args), "weak": prep.weak, "strong": prep.strong,
                                                "corrupted": prep.corrupted}, indent=1))
    cfg = _base_config(args)
    run_dir = out / "run"

    def on_report(rep):
        if isinstance(rep, CheckpointReport):
            dst = out / "ckpt" / f"step_{rep.step:04d}"
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(run_dir, dst)
            print(f"checkpoint step {rep.step} -> {dst}", flush=True)
        elif isinstance(rep, StepReport) and rep.step % 10 == 0:
            print(f"step {rep.step}/{rep.total_steps} loss {rep.losses.get('total', 0):.3f} "
                  f"{rep.sec_per_step:.2f} s/step", flush=True)

    done = run(prep.train, cfg, run_dir, callback=on_report)
    print(f"trained {done.step} steps in {done.wall_s:.0f} s")
    return 0


# -- scoring ------------------------------------------------------------------------------------
def _head_grads(state, ids, loss_fn, chunk=16, with_aux=False):
    """Per-image gradients (N, P) of ``loss_fn(z, aux, idx)`` through the segmentation head (and, with
    ``with_aux``, the image-level tag head appended); and the decoder features."""
    import torch
    from torch.func import functional_call

    net = state.nets[0]
    heads = [("seg", net.segmentation_head)]
    aux_head = getattr(net, "classification_head", None)
    if with_aux and aux_head is not None:
        heads.append(("aux", aux_head))
    params = {(h, n): p for h, mod in heads for n, p in mod.named_parameters()}
    out, feats_all = [], []
    net.eval()
    for i in range(0, len(ids), chunk):
        idx = list(range(i, min(len(ids), i + chunk)))
        x = torch.stack([state.prepared[ids[j]].image for j in idx])
        with torch.no_grad():
            enc = net.encoder(x)
            f = net.decoder(enc).float()
            last = enc[-1].float()
        z = functional_call(net.segmentation_head, {n: p for (h, n), p in params.items() if h == "seg"}, (f,))
        aux = None
        if len(heads) > 1:
            aux = functional_call(aux_head, {n: p for (h, n), p in params.items() if h == "aux"}, (last,))
        loss = loss_fn(z, aux, idx)
        eye = torch.eye(len(idx))
        leaves = list(params.values())
        g = torch.autograd.grad(loss, leaves, grad_outputs=eye, is_grads_batched=True, allow_unused=True)
        g = [gi if gi is not None else torch.zeros((len(idx), *p.shape)) for gi, p in zip(g, leaves)]
        out.append(torch.cat([gi.flatten(1) for gi in g], 1).detach())
        feats_all.append(f)
    names_sizes = [(f"{h}.{n}", p.numel()) for (h, n), p in params.items()]
    return torch.cat(out).double(), torch.cat(feats_all), names_sizes


def _gauss_newton(state, feats, max_pixels=200_000, seed=0):
    """The head's Gauss-Newton matrix sum_p J_p^T H_p J_p over strong pixels (softmax CE), (P, P)."""
    import torch
    import torch.nn.functional as F

    head = state.nets[0].segmentation_head
    conv = head[0]
    k = conv.kernel_size[0]
    u = F.unfold(feats, k, padding=conv.padding[0])  # (S, C*k*k, HW)
    u = u.permute(0, 2, 1).reshape(-1, u.shape[1])
    with torch.no_grad():
        z = conv(feats).permute(0, 2, 3, 1).reshape(-1, conv.out_channels)
    rng = np.random.default_rng(seed)
    if u.shape[0] > max_pixels:
        pick = torch.as_tensor(rng.choice(u.shape[0], max_pixels, replace=False))
        u, z = u[pick], z[pick]
    u = torch.cat([u, torch.ones(len(u), 1)], 1).double()  # bias as a constant input
    s = z.double().softmax(1)
    nc = s.shape[1]
    d = u.shape[1]
    # parameter order of the head: weight (nc, C, k, k) flattened, then bias (nc): reorder to match
    G = torch.zeros(nc * d, nc * d, dtype=torch.float64)
    for a in range(nc):
        for b in range(nc):
            h = s[:, a] * (float(a == b) - s[:, b])
            G[a * d:(a + 1) * d, b * d:(b + 1) * d] = (u * h[:, None]).T @ u
    # map (class, [weights..., bias]) blocks to the head's (all weights, all biases) order
    cw = d - 1
    order = [a * d + j for a in range(nc) for j in range(cw)] + [a * d + cw for a in range(nc)]
    order = torch.as_tensor(order)
    return G[order][:, order] / len(u)


def _auroc(score, bad):
    score, bad = np.asarray(score, float), np.asarray(bad, bool)
    pos, neg = score[~bad], score[bad]
    if not len(pos) or not len(neg):
        return float("nan")
    gt = (pos[:, None] > neg[None, :]).mean()
    eq = (pos[:, None] == neg[None, :]).mean()
    return float(gt + 0.5 * eq)


def _strata(sizes, n=3):
    edges = np.quantile(sizes, np.linspace(0, 1, n + 1)[1:-1])
    return np.searchsorted(edges, sizes)


def _standardise_within(score, strata):
    out = np.empty_like(score)
    for s in np.unique(strata):
        m = strata == s
        v = score[m]
        out[m] = (v - v.mean()) / (v.std() + 1e-12)
    return out


def score_checkpoint(args, ckpt: Path, split: dict) -> dict:
    import torch

    from napari_hybridseg.core.bench.data import prepare
    from napari_hybridseg.core.data.collection import Role
    from napari_hybridseg.core.supervision.losses import aux_tag_loss, margin_objective, strong_loss, weak_losses
    from napari_hybridseg.core.training.state import build_state

    global _PREP
    if _PREP is None:
        _PREP = prepare(_settings(args), log=lambda m: None)
    coll = _PREP.train
    cfg = _base_config(args, steps=1)
    st = build_state(coll, cfg, None, ckpt)
    weak, strong = st.ids(Role.WEAK), st.ids(Role.STRONG)
    items = [st.prepared[k] for k in weak]
    yw = torch.stack([p.target for p in items])
    pw = torch.stack([p.present for p in items])
    tw = torch.stack([p.tag_target for p in items])
    aw = torch.stack([p.absent for p in items])
    ys = torch.stack([st.prepared[k].target for k in strong])

    ts = torch.stack([st.prepared[k].tag_target for k in strong])
    aux_w = st.loss_weights.aux

    def weak_fn(z, aux, idx):
        return weak_losses(z, aux, yw[idx], [items[i].boxes for i in idx], pw[idx], tw[idx],
                           st.loss_weights, absent=aw[idx])["sum"]

    def strong_fn(z, aux, idx):
        return strong_loss(z, ys[idx]) + aux_w * aux_tag_loss(aux, ts[idx])

    def strong_lin_fn(z, aux, idx):
        # dii.strong_objective=margin: a non-saturating, class-balanced strong objective
        return margin_objective(z, ys[idx])

    with torch.enable_grad():
        gk, _, names = _head_grads(st, weak, weak_fn)
        gs, fs, _ = _head_grads(st, strong, strong_fn)
        gs_lin, _, _ = _head_grads(st, strong, strong_lin_fn)
        has_aux = getattr(st.nets[0], "classification_head", None) is not None
        if has_aux:  # issue 14 item 3: the tag head in the score, on both sides
            gk_a, _, _ = _head_grads(st, weak, weak_fn, with_aux=True)
            gs_a, _, _ = _head_grads(st, strong, strong_fn, with_aux=True)
        with torch.no_grad():
            loss_k = torch.cat([weak_fn(*_logits(st, weak[i:i + 16]), list(range(i, min(len(weak), i + 16))))
                                for i in range(0, len(weak), 16)]).double()
    G = _gauss_newton(st, fs)
    P = G.shape[0]
    gS_eq = (gs / gs.norm(dim=1, keepdim=True).clamp_min(1e-12)).mean(0)
    gS_mean = gs.mean(0)
    bias = torch.zeros(P, dtype=torch.bool)
    off = 0
    for n, size in names:
        if n.endswith("bias"):
            bias[off:off + size] = True
        off += size
    u = gk.mean(0)
    u = u / u.norm().clamp_min(1e-30)
    gc = gk - (gk @ u)[:, None] * u[None, :]
    pc1 = torch.linalg.svd(gk - gk.mean(0, keepdim=True), full_matrices=False).Vh[0]
    gp = gk - (gk @ pc1)[:, None] * pc1[None, :]
    scores = {
        "dot-eq": gk @ gS_eq,
        "dot-mean": gk @ gS_mean,
        "proj-mean": gc @ gS_eq,
        "proj-pc1": gp @ gS_eq,
        "cos": (gk @ gS_eq) / (gk.norm(dim=1) * gS_eq.norm()).clamp_min(1e-30),
        "nobias": gk[:, ~bias] @ gS_eq[~bias],
    }
    gS_lin = (gs_lin / gs_lin.norm(dim=1, keepdim=True).clamp_min(1e-12)).mean(0)
    scores["lin"] = gk @ gS_lin
    scores["lin-cos"] = (gk @ gS_lin) / (gk.norm(dim=1) * gS_lin.norm()).clamp_min(1e-30)
    lam0 = float(torch.trace(G)) / P
    for lam in (1e-1, 1e-2, 1e-3):
        inv_gs = torch.linalg.solve(G + lam * lam0 * torch.eye(P, dtype=G.dtype), gS_eq)
        scores[f"gn-{lam:g}"] = gk @ inv_gs
        if lam == 1e-2:
            scores["gn-proj"] = gc @ inv_gs
    if has_aux:
        ga_eq = (gs_a / gs_a.norm(dim=1, keepdim=True).clamp_min(1e-12)).mean(0)
        scores["aux-dot-eq"] = gk_a @ ga_eq
        scores["aux-cos"] = (gk_a @ ga_eq) / (gk_a.norm(dim=1) * ga_eq.norm()).clamp_min(1e-30)
    scores = {k: v.numpy() for k, v in scores.items()}
    sizes = np.array([_label_size(coll[k]) for k in weak], float)
    # strata: thirds of box area / point count; for tags the tag itself (present vs absent pull opposite ways)
    tag_of = [",".join(sorted(coll[k].tags)) for k in weak]
    strata = (np.unique(tag_of, return_inverse=True)[1] if any(tag_of) and not any(coll[k].boxes for k in weak)
              else _strata(sizes))
    scores["strat"] = _standardise_within(scores["dot-eq"], strata)
    scores["strat-gn"] = _standardise_within(scores["gn-0.01"], strata)
    scores["strat-loss"] = _standardise_within(-loss_k.numpy(), strata)
    scores["strat-lin"] = _standardise_within(scores["lin"], strata)
    scores["strat-lin-cos"] = _standardise_within(scores["lin-cos"], strata)
    if has_aux:
        scores["aux-strat"] = _standardise_within(scores["aux-dot-eq"], strata)
        scores["aux-strat-cos"] = _standardise_within(scores["aux-cos"], strata)
    scores["-size"] = -sizes
    scores["-loss"] = -loss_k.numpy()
    corrupted = split["corrupted"]
    bad = np.array([k in corrupted for k in weak])
    np.savez(Path(ckpt) / "scores.npz", ids=np.array(weak), bad=bad, strata=strata, **scores)
    kinds = sorted(set(corrupted.values()))
    res = {}
    for name, s in scores.items():
        row = {"all": _auroc(s, bad)}
        for kind in kinds:
            m = np.array([(k not in corrupted) or corrupted[k] == kind for k in weak])
            row[kind] = _auroc(s[m], bad[m])
        row["rho_size"] = float(_spearman(s, sizes))
        res[name] = row
    return res


def _logits(st, ids):
    import torch

    from napari_hybridseg.core.network.models import forward

    x = torch.stack([st.prepared[k].image for k in ids])
    logits, aux = forward(st.nets[0], x)
    return logits.float(), None if aux is None else aux.float()


def _spearman(a, b):
    ra = np.argsort(np.argsort(a))
    rb = np.argsort(np.argsort(b))
    return np.corrcoef(ra, rb)[0, 1]


def _label_size(sample) -> float:
    if sample.boxes:
        area = sum((b.y1 - b.y0) * (b.x1 - b.x0) for b in sample.boxes)
        return float(area) / max(1, sample.shape[0] * sample.shape[1])
    if sample.points:
        return float(len(sample.points))
    if sample.tags:
        return float(len(sample.tags))
    return 0.0


_PREP = None


def score(args) -> int:
    import torch

    torch.manual_seed(0)
    out = Path(args.out)
    split = json.loads((out / "split.json").read_text())
    saved = argparse.Namespace(**{**split["args"], **{k: v for k, v in vars(args).items() if v is not None}})
    table = {}
    for ckpt in sorted((out / "ckpt").glob("step_*")):
        table[ckpt.name] = score_checkpoint(saved, ckpt, split)
        print(f"== {ckpt.name}", flush=True)
        kinds = [k for k in next(iter(table[ckpt.name].values())) if k != "rho_size"]
        print(f"{'variant':12s} " + " ".join(f"{k[:10]:>10s}" for k in kinds) + "   rho(size)")
        for name, row in table[ckpt.name].items():
            print(f"{name:12s} " + " ".join(f"{row[k]:10.3f}" for k in kinds) + f"   {row['rho_size']:+.2f}")
    (out / "scores.json").write_text(json.dumps(table, indent=1))
    print(f"wrote {out / 'scores.json'}")
    return 0


def accumulate(args) -> int:
    """How gammas built from a sequence of scorings rank (one scoring per saved checkpoint)."""
    import torch

    from napari_hybridseg.core.methods.dii import GammaBank, normalise_scores

    ckpts = sorted((Path(args.out) / "ckpt").glob("step_*"))
    runs = [np.load(c / "scores.npz") for c in ckpts]
    bad = runs[0]["bad"]
    ids = list(runs[0]["ids"])
    print(f"{len(ckpts)} scorings ({', '.join(c.name for c in ckpts)}); AUROC of the accumulated weight")
    for variant in args.variants.split(","):
        seq = [r[variant] for r in runs]
        z = [(s - s.mean()) / (s.std() + 1e-12) for s in seq]
        bank = GammaBank()
        bank.sync(ids)
        for s in seq:  # today's mechanism: one Adam step per scoring on the RMS-normalised score
            d = normalise_scores(torch.as_tensor(s, dtype=torch.float64))
            vals = bank.step({k: -float(x) for k, x in zip(ids, d.tolist())})
        adam = np.array([vals[k] for k in ids])
        half = len(z) // 2
        rows = {"adam (today)": adam, "last only": z[-1], "mean z": np.mean(z, 0),
                f"mean z, gated (last {len(z) - half})": np.mean(z[half:], 0),
                "ema z (0.5)": _ema(z, 0.5)}
        print(f"  {variant}: " + "  ".join(f"{k} {_auroc(v, bad):.3f}" for k, v in rows.items())
              + f"  ({int(np.sum((adam <= 0.1 + 1e-9) | (adam >= 0.9 - 1e-9)))} of {len(adam)} "
              f"at 0.1 or 0.9: four votes one way)")
    return 0


def _ema(z, beta):
    acc = z[0]
    for s in z[1:]:
        acc = beta * acc + (1 - beta) * s
    return acc


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("train")
    t.add_argument("dataset")
    t.add_argument("--layout", required=True)
    t.add_argument("--weak", default="box")
    t.add_argument("--out", required=True)
    t.add_argument("--steps", type=int, default=200)
    t.add_argument("--every", type=int, default=50)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--strong-fraction", type=float, default=0.1)
    t.add_argument("--limit", type=int)
    s = sub.add_parser("score")
    s.add_argument("out")
    a = sub.add_parser("accumulate")
    a.add_argument("out")
    a.add_argument("--variants", default="dot-eq,gn-0.01,strat,-loss")
    args = p.parse_args(argv)
    return {"train": train, "score": score, "accumulate": accumulate}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
