"""What a click and a tag say, and the spill the size prior stops: the figure in docs/training.md.

    python benchmarks/size_prior_figure.py docs/images/size-prior.png

Top row: the training targets of one click and of one "present" tag on a small
structure (white: certain foreground, black: certain background, grey: the label
says nothing). Bottom rows: predictions on click-labelled images after the
same seeded naive run (no DII) without and with the size prior, on synthetic
small objects (1-3% of the image: the shape of tests/test_size_prior.py).
Prints the median predicted/true area of each run.
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


def _predict(size_prior: float, steps: int = 60) -> tuple[dict, object]:
    from napari_hybridseg.core.prediction.predict import Predictor
    from napari_hybridseg.core.training.config import ModelConfig, TrainConfig
    from napari_hybridseg.core.training.config_sections import LossConfig
    from napari_hybridseg.core.training.trainer import train

    col = _collection()
    cfg = TrainConfig(model=ModelConfig(input_size=64), steps=steps, batch_size=8, dcr=False, dii=False,
                      preview_every=0, seed=0, precision="fp32", loss=LossConfig(size_prior=size_prior))
    with tempfile.TemporaryDirectory() as d:
        for _ in train(col, cfg, d):
            pass
        pred = Predictor.load(d, device="cpu").predict_many({s.id: s for s in col if s.id.startswith("w")})
    return pred, col


def main(out: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from napari_hybridseg.core.data.collection import Sample
    from napari_hybridseg.core.supervision.targets import make_targets

    runs = {w: _predict(w) for w in (0.0, 1.0)}
    col = runs[1.0][1]
    show = ["w0", "w1", "w2", "w3"]
    fig, axes = plt.subplots(3, 4, figsize=(10, 7.8))

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
    axes[0, 3].axis("off")
    axes[0, 3].text(0, 0.5, "grey: the label says nothing\nwhite: certain foreground\nblack: certain background\n\n"
                    "Neither says where the\nobject is NOT: the size prior\nholds each predicted size\ninside "
                    "the range of the\nstrong masks (x2 margin).", fontsize=9, va="center")

    for row, weight in ((1, 0.0), (2, 1.0)):
        pred = runs[weight][0]
        ratio = np.median([(p > 0).sum() / (col[k].reference_mask > 0).sum() for k, p in pred.items()])
        print(f"size prior {weight:g}: median predicted / true area {ratio:.2f}")
        for ax, sid in zip(axes[row], show):
            ax.imshow(col[sid].image)
            ax.imshow(np.ma.masked_equal(pred[sid] > 0, False), cmap="autumn", alpha=0.5)
            ax.contour(col[sid].reference_mask, [0.5], colors="lime", linewidths=1)
            ax.set_title(f"{'with' if weight else 'without'} size prior ({sid})", fontsize=9)
        axes[row, 0].set_ylabel(f"median area x{ratio:.1f}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Clicks on small objects (1-3% of the image), naive training, 60 steps at 64 px, seed 0", fontsize=10)
    fig.tight_layout()
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=90)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "size-prior.png")
