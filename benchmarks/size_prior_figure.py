"""What a click and a tag say, and the spill the size prior and the anchor stop: the figure in docs/training.md.

    python benchmarks/size_prior_figure.py docs/images/size-prior.png

Top row: the training targets of one click and of one "present" tag on a small
structure (white: certain foreground, black: certain background, grey: the label
says nothing), and the background the anchor adds to the click's image (taken
from the run's own network after a quarter of the run, as training does it).
Other rows: predictions on click-labelled images after the same seeded naive run
(no DII) with neither kind of negative evidence, the size prior alone, the
anchor alone and both (the default), on synthetic small objects (1-3% of the
image: the shape of tests/test_size_prior.py). Prints the median
predicted/true area of each run.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np


def _collection():
    from napari_hybridseg.core.data.synthetic import (
        Spec,
        point_at_centre,
        small_disk_rgb,
        strong,
        synthetic_collection,
    )

    paint = small_disk_rgb(64, (0.01, 0.03))
    specs = [Spec(f"s{i}", paint, strong) for i in range(3)]
    specs += [Spec(f"w{i}", paint, point_at_centre) for i in range(24)]
    return synthetic_collection(specs, seed=0, tags=[("lesion", "present", 1)])


#: name -> (loss.size_prior, loss.anchor)
ARMS = {"neither": (0.0, 0.0), "size prior": (1.0, 0.0), "anchor": (0.0, 1.0), "both (default)": (1.0, 1.0)}


def _predict(size_prior: float, anchor: float, steps: int = 60) -> tuple[dict, object, dict]:
    """Predictions on the click images after one seeded naive run, the collection, and the anchors it computed."""
    from napari_hybridseg.core.prediction.predict import Predictor
    from napari_hybridseg.core.training import anchor_term
    from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
    from napari_hybridseg.core.training.config_sections import LossConfig
    from napari_hybridseg.core.training.trainer import train

    anchors: dict = {}
    original = anchor_term.AnchorTerm.compute

    def recording(self, step):  # keep a copy of what the anchor labels background, for the picture
        line = original(self, step)
        anchors.update({k: p.anchor.numpy() == 0 for k, p in self.state.prepared.items() if p.anchor is not None})
        return line

    col = _collection()
    cfg = TrainConfig(model=ModelConfig(input_size=64), steps=steps, batch_size=8, dcr=False, dii=False,
                      preview_every=0, seed=0, precision="fp32",
                      loss=LossConfig(size_prior=size_prior, anchor=anchor))
    anchor_term.AnchorTerm.compute = recording
    try:
        with tempfile.TemporaryDirectory() as d:
            for _ in train(col, cfg, d):
                pass
            pred = Predictor.load(d, device="cpu").predict_many({s.id: s for s in col if s.id.startswith("w")})
    finally:
        anchor_term.AnchorTerm.compute = original
    return pred, col, anchors


def main(out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_hybridseg.core.data.collection import Sample
    from napari_hybridseg.core.supervision.targets import make_targets

    runs = {name: _predict(*weights) for name, weights in ARMS.items()}
    col = runs["anchor"][1]
    show = ["w0", "w1", "w2", "w3"]
    fig, axes = plt.subplots(1 + len(ARMS), 4, figsize=(10, 2.6 * (1 + len(ARMS))))

    # row 0: the targets of a click and of a tag, on the same image
    s = col["w0"]
    tagged = Sample("t", image=s.image, tags=["lesion"])
    for ax, (title, sample) in zip(axes[0, :2], (("one click: target", s), ('"present" tag: target', tagged))):
        t = make_targets(sample, col, s.shape).target
        ax.imshow(np.where(t < 0, 0.5, t > 0), cmap="gray", vmin=0, vmax=1)
        ax.set_title(title, fontsize=9)
    axes[0, 2].imshow(s.image)
    axes[0, 2].contour(col["w0"].reference_mask, [0.5], colors="lime", linewidths=1)
    axes[0, 2].plot([p.x - 0.5 for p in s.points], [p.y - 0.5 for p in s.points], "r+", ms=10)
    axes[0, 2].set_title("image, truth (green), click (+)", fontsize=9)
    t = np.asarray(make_targets(s, col, s.shape).target)
    anchored = runs["anchor"][2].get("w0")
    if anchored is not None:
        shown = np.where(t >= 0, (t > 0).astype(float), np.where(anchored, 0.0, 0.5))
        axes[0, 3].imshow(shown, cmap="gray", vmin=0, vmax=1)
        axes[0, 3].set_title("click + the anchor's background", fontsize=9)
    fig.text(0.01, 0.005, "grey: the label says nothing; white: certain foreground; black: certain background. "
             "Neither a click nor a tag says where the object is NOT: the size prior holds each predicted size "
             "inside the strong masks' range (x2 margin); the anchor takes background from the network after a "
             "quarter of the run, outside each click's exclusion radius.", fontsize=7, wrap=True)

    for row, name in enumerate(ARMS, start=1):
        pred = runs[name][0]
        ratio = np.median([(p > 0).sum() / (col[k].reference_mask > 0).sum() for k, p in pred.items()])
        print(f"{name}: median predicted / true area {ratio:.2f}")
        for ax, sid in zip(axes[row], show):
            ax.imshow(col[sid].image)
            ax.imshow(np.ma.masked_equal(pred[sid] > 0, False), cmap="autumn", alpha=0.5)
            ax.contour(col[sid].reference_mask, [0.5], colors="lime", linewidths=1)
            ax.set_title(f"{name} ({sid})", fontsize=9)
        axes[row, 0].set_ylabel(f"median area x{ratio:.1f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Clicks on small objects (1-3% of the image), naive training, 60 steps at 64 px, seed 0", fontsize=10)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "size-prior.png")
