"""Issue 15, finding 3: pixel weights from a dual forward over the 4 weak rows (what the trainer does)
against over the whole 8-row batch (what the costs are taken on), on a trained ``full`` model.

    python benchmarks/pixel_bn_check.py BENCH_OUT [N_BATCHES]

BENCH_OUT is a ``hybridseg bench`` folder that ran the ``full`` arm (its runs/full/model is scored).
Figures: docs/pixel-weights.md, "y~ from the network that learnt the strong masks".
"""

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

from napari_hybridseg.core.bench.arms import arm_config
from napari_hybridseg.core.bench.data import arm_collection, prepare
from napari_hybridseg.core.bench.settings import BenchSettings
from napari_hybridseg.core.data.collection import Role
from napari_hybridseg.core.methods import pixel_weights as pwm
from napari_hybridseg.core.network.models import forward, load_model
from napari_hybridseg.core.supervision.losses import strong_loss
from napari_hybridseg.core.supervision.targets import UNKNOWN
from napari_hybridseg.core.training.batches import collate
from napari_hybridseg.core.training.pixel_term import TruthMass
from napari_hybridseg.core.training.state import build_state


def meta_loss(z, y):
    return strong_loss(z.float(), y).mean()


def main(out: Path, n_batches: int) -> None:
    d = json.loads((out / "settings.json").read_text())
    names = {f.name for f in dataclasses.fields(BenchSettings)}
    settings = BenchSettings(**{k: v for k, v in d.items() if k in names})
    prep = prepare(settings, log=lambda m: None)
    cfg = arm_config(settings.base_config(), "full").replace(precision="fp32", threads=2)
    st = build_state(arm_collection(prep.train, "full"), cfg, None, None)
    trained, _ = load_model(out / "runs" / "full" / "model")
    net = st.nets[0]
    net.load_state_dict(trained.state_dict())
    net.train()
    rng = np.random.default_rng(0)
    truth = {"4-row": TruthMass(), "8-row": TruthMass()}
    corr = []
    strong_ids, weak_ids = st.ids(Role.STRONG), st.ids(Role.WEAK)
    strong = torch.tensor([True] * 4 + [False] * 4)
    weak = ~strong
    for b in range(n_batches):
        ids = list(rng.choice(strong_ids, 4, replace=False)) + list(rng.choice(weak_ids, 4, replace=False))
        batch = collate([st.prepared[i] for i in ids])
        with torch.no_grad():
            logits = forward(net, batch.x)[0]
        y_init, _ = pwm.fill_ignored(batch.init_label, logits)
        y_own = logits.argmax(1)
        fixed = batch.certainty != UNKNOWN
        common = (batch.x[strong], batch.target[strong], meta_loss, 1e-3)
        a = pwm.exact_pixel_weights(net, batch.x[weak], y_init[weak], y_own[weak], None, None, *common,
                                    fixed_init=fixed[weak], return_details=True, keep_graph=False)
        fixed8 = fixed.clone()
        fixed8[strong] = True  # 8 rows in the dual forward; the strong rows take no part in the weights
        c = pwm.exact_pixel_weights(net, batch.x, y_init, y_own, None, None, *common,
                                    fixed_init=fixed8, return_details=True, keep_graph=False)
        free = torch.cat([~fixed[weak], ~fixed[weak]]).flatten()
        wa = torch.cat([a.w_init, a.w_own]).flatten()[free]
        wc = torch.cat([c.w_init[weak], c.w_own[weak]]).flatten()[free]
        corr.append(float(np.corrcoef(wa.numpy(), wc.numpy())[0, 1]))
        ref = batch.reference[weak]
        truth["4-row"].add(ref, y_init[weak], y_own[weak], a.w_init, a.w_own, ~fixed[weak])
        truth["8-row"].add(ref, y_init[weak], y_own[weak], c.w_init[weak], c.w_own[weak], ~fixed[weak])
        print(f"batch {b}: r {corr[-1]:.3f}", flush=True)
    print(f"Pearson r of the weights (free pixels), 4-row vs 8-row BatchNorm: median {np.median(corr):.3f}, "
          f"min {min(corr):.3f}, over {len(corr)} batches")
    for key, t in truth.items():
        r = t.result()
        own = r["own"]["wrong_vs_right"]
        print(f"{key}: wrong/right y~ {r['init']['wrong_vs_right']:.3f}  y^ {own if own is None else round(own, 3)}  "
              f"pooled {r['wrong_vs_right']:.3f}")


if __name__ == "__main__":
    main(Path(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 24)
